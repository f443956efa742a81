import pytest
import torch
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from sigma_fast.model import DinoBackbone


def max_relative_error(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def check_matches_hf(model, taps, image_size, prefix, batch=2):
    model.eval()
    pixels = torch.randn(batch, 3, image_size, image_size)
    with torch.no_grad():
        expected = model(pixel_values=pixels, output_hidden_states=True).hidden_states
        actual = DinoBackbone(model, taps)(pixels)
    assert len(actual) == len(taps)
    for tap, tokens in zip(taps, actual):
        assert tokens.shape == expected[tap][:, prefix:].shape
        assert max_relative_error(tokens, expected[tap][:, prefix:]) < 1e-5


def tiny_dinov2(**overrides):
    torch.manual_seed(0)
    values = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, image_size=56,
                  patch_size=14)
    values.update(overrides)
    return values


def test_tiny_backbone_equals_hf_hidden_states():
    check_matches_hf(Dinov2Model(Dinov2Config(**tiny_dinov2())), (1, 2, 4), 56, prefix=1)


def test_registers_backbone_drops_register_tokens():
    model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**tiny_dinov2(num_register_tokens=4)))
    check_matches_hf(model, (2, 3), 56, prefix=5)


def test_backbone_stops_after_deepest_tap_and_is_frozen():
    backbone = DinoBackbone(Dinov2Model(Dinov2Config(**tiny_dinov2(num_hidden_layers=6))), (1, 3))
    assert len(backbone.layers) == 3
    assert not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.training


def test_tap_deeper_than_model_is_rejected():
    with pytest.raises(ValueError, match="deeper"):
        DinoBackbone(Dinov2Model(Dinov2Config(**tiny_dinov2())), (2, 9))


@pytest.mark.slow
def test_full_vit_b14_at_518_equals_hf_hidden_states():
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                     image_size=518, patch_size=14))
    check_matches_hf(model, (2, 5, 11), 518, prefix=1, batch=1)
