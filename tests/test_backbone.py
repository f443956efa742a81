import pytest
import torch
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from sigma_fast.model import DinoBackbone
from sigma_fast.model.vit import DinoViT


def max_relative_error(actual, expected):
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


def hf_taps(model, pixels, taps, prefix):
    with torch.no_grad():
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states
    return [hidden[tap][:, prefix:] for tap in taps]


def check_matches_hf(model, taps, image_size, prefix, batch=2, width=None, tolerance=1e-5):
    model.eval()
    pixels = torch.randn(batch, 3, image_size, width or image_size)
    expected = hf_taps(model, pixels, taps, prefix)
    actual = DinoBackbone(model, taps)(pixels)
    assert len(actual) == len(taps)
    for tokens, reference in zip(actual, expected):
        assert tokens.shape == reference.shape
        assert max_relative_error(tokens, reference) < tolerance


def tiny_dinov2(**overrides):
    torch.manual_seed(0)
    values = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, image_size=56,
                  patch_size=14)
    values.update(overrides)
    return values


def randomise_layer_scale(model):
    # HF initialises LayerScale to 1.0, which would hide a missing or misplaced gamma.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lambda1" in name or name.endswith("norm1.weight") or name.endswith("norm2.weight"):
                param.uniform_(0.5, 1.5)
    return model


def test_tiny_backbone_equals_hf_hidden_states():
    model = randomise_layer_scale(Dinov2Model(Dinov2Config(**tiny_dinov2())))
    check_matches_hf(model, (1, 2, 4), 56, prefix=1)


def test_registers_backbone_drops_register_tokens():
    model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**tiny_dinov2(num_register_tokens=4)))
    check_matches_hf(randomise_layer_scale(model), (2, 3), 56, prefix=5)


@pytest.mark.parametrize("height, width", [(70, 70), (84, 56)])
@pytest.mark.parametrize("registers", [0, 2])
def test_interpolated_positions_equal_hf(height, width, registers):
    # Inputs of another size than the pretrained grid: HF interpolates the positions bicubically
    # (with antialiasing for the register models); ours computes that once per size.
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**tiny_dinov2(num_register_tokens=registers)))
    else:
        model = Dinov2Model(Dinov2Config(**tiny_dinov2()))
    check_matches_hf(model, (1, 4), height, prefix=1 + registers, width=width)


def test_position_embedding_is_cached_per_size_and_dropped_on_move():
    backbone = DinoBackbone(Dinov2Model(Dinov2Config(**tiny_dinov2())), (1,))
    backbone(torch.randn(1, 3, 70, 70))
    first = backbone.vit.position_embedding(5, 5)
    assert backbone.vit.position_embedding(5, 5) is first
    backbone.to(torch.float64)
    assert backbone.vit.position_embedding(5, 5).dtype == torch.float64


def test_swiglu_backbone_equals_hf():
    model = Dinov2Model(Dinov2Config(**tiny_dinov2(use_swiglu_ffn=True)))
    check_matches_hf(randomise_layer_scale(model), (1, 3), 56, prefix=1)


def test_transformers_4_weight_names_load():
    # Checkpoints saved by transformers 4.x name q/k/v `attention.attention.query` etc.
    model = randomise_layer_scale(Dinov2Model(Dinov2Config(**tiny_dinov2())))
    renamed = {}
    for name, tensor in model.state_dict().items():
        for new, old in (("attention.q_proj.", "attention.attention.query."),
                         ("attention.k_proj.", "attention.attention.key."),
                         ("attention.v_proj.", "attention.attention.value."),
                         ("attention.o_proj.", "attention.output.dense.")):
            name = name.replace(new, old)
        renamed[name] = tensor
    legacy = DinoViT.from_hf(model, 4)
    legacy.load_hf_state_dict(renamed)
    pixels = torch.randn(2, 3, 56, 56)
    expected = hf_taps(model, pixels, (2, 4), 0)
    for tokens, reference in zip(legacy(pixels, (2, 4)), expected):
        assert max_relative_error(tokens, reference) < 1e-5


def test_missing_weight_is_named():
    model = Dinov2Model(Dinov2Config(**tiny_dinov2()))
    vit = DinoViT.from_hf(model, 2)
    state = model.state_dict()
    del state["encoder.layer.1.mlp.fc2.weight"]
    with pytest.raises(KeyError, match="encoder.layer.1.mlp.fc2.weight"):
        vit.load_hf_state_dict(state)


def test_backbone_stops_after_deepest_tap_and_is_frozen():
    backbone = DinoBackbone(Dinov2Model(Dinov2Config(**tiny_dinov2(num_hidden_layers=6))), (1, 3))
    assert len(backbone.vit.blocks) == 3
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.training


def test_backbone_runs_without_autograd_inside_a_grad_context():
    backbone = DinoBackbone(Dinov2Model(Dinov2Config(**tiny_dinov2())), (2,))
    pixels = torch.randn(1, 3, 56, 56, requires_grad=True)
    with torch.enable_grad():
        (tokens,) = backbone(pixels)
    assert not tokens.requires_grad


def test_tap_deeper_than_model_is_rejected():
    with pytest.raises(ValueError, match="deeper"):
        DinoBackbone(Dinov2Model(Dinov2Config(**tiny_dinov2())), (2, 9))


def test_fp8_backbone_tracks_bf16():
    # FP8 GEMMs (torch._scaled_mm, emulated on the CPU) with per-channel weight and per-token
    # activation scales: the taps stay close to the bf16 backbone's.
    model = Dinov2Model(Dinov2Config(**tiny_dinov2(hidden_size=64, num_attention_heads=4)))
    backbone = DinoBackbone(model, (2, 4)).to(torch.bfloat16)
    pixels = torch.randn(2, 3, 56, 56, dtype=torch.bfloat16)
    expected = backbone(pixels)
    backbone.quantize_fp8()
    assert backbone.precision == "fp8"
    for tokens, reference in zip(backbone(pixels), expected):
        assert tokens.dtype == torch.bfloat16
        assert max_relative_error(tokens, reference) < 0.03


def test_fp8_needs_bf16_weights():
    backbone = DinoBackbone(Dinov2Model(Dinov2Config(**tiny_dinov2())), (2,))
    with pytest.raises(ValueError, match="bfloat16"):
        backbone.quantize_fp8()


def test_forward_traces_as_one_graph():
    backbone = DinoBackbone(Dinov2Model(Dinov2Config(**tiny_dinov2())), (2, 4))
    pixels = torch.randn(2, 3, 56, 56)
    expected = backbone(pixels)
    compiled = torch.compile(backbone, fullgraph=True, backend="aot_eager")
    for tokens, reference in zip(compiled(pixels), expected):
        assert max_relative_error(tokens, reference) < 1e-6


@pytest.mark.slow
def test_full_vit_b14_at_518_equals_hf_hidden_states():
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                     image_size=518, patch_size=14))
    check_matches_hf(randomise_layer_scale(model), (2, 5, 11), 518, prefix=1, batch=1)


@pytest.mark.gpu
def test_bf16_backbone_on_gpu_tracks_hf():
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                     image_size=518, patch_size=14))
    model = randomise_layer_scale(model).to(device="cuda", dtype=torch.bfloat16)
    model.set_attn_implementation("sdpa")
    pixels = torch.randn(4, 3, 518, 518, device="cuda", dtype=torch.bfloat16)
    expected = hf_taps(model, pixels, (2, 5, 11), 1)
    with torch.inference_mode():
        actual = DinoBackbone(model, (2, 5, 11))(pixels)
    for tokens, reference in zip(actual, expected):
        assert max_relative_error(tokens, reference) < 2e-2


@pytest.mark.gpu
def test_fp8_backbone_on_gpu_tracks_bf16():
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                     image_size=518, patch_size=14))
    backbone = DinoBackbone(model, (2, 5, 11)).to(device="cuda", dtype=torch.bfloat16)
    pixels = torch.randn(4, 3, 518, 518, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        expected = backbone(pixels)
        backbone.quantize_fp8()
        actual = backbone(pixels)
    for tokens, reference in zip(actual, expected):
        assert max_relative_error(tokens, reference) < 0.1


def test_backbone_ignores_autocast():
    # Training runs the head under autocast; the frozen backbone keeps its weights' dtype.
    backbone = DinoBackbone(Dinov2Model(Dinov2Config(**tiny_dinov2())), (2,))
    pixels = torch.randn(1, 3, 56, 56)
    expected = backbone(pixels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (tokens,) = backbone(pixels)
    assert tokens.dtype == torch.float32
    assert torch.equal(tokens, expected[0])
