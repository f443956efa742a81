import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from sigma_fast.config import SigmaConfig
from sigma_fast.grounding.edit import EditTuple
from sigma_fast.kernels import reference
from sigma_fast.model import BiAttentionBlock, DifferenceBranch, SigmaModel
from sigma_fast.tiny import TinyEncoderSpec, tiny_sigma_config

EDITS = [EditTuple("add", None, "red ball"), EditTuple("remove", "the cat", None)]
TEXTS = ["add a red ball", "remove the cat"]


def inputs(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    size = model.config.image_size
    x_orig = torch.randn(2, 3, size, size, generator=generator)
    x_edit = x_orig + 0.3 * torch.randn(2, 3, size, size, generator=generator)
    tokens, mask = model.encode_text(TEXTS, EDITS)
    return x_orig, x_edit, tokens, mask


def test_forward_shapes(tiny_checkpoint):
    model = SigmaModel.from_pretrained(tiny_checkpoint)
    x_orig, x_edit, tokens, mask = inputs(model)
    assert tokens.shape == (2, 3 * model.config.max_text_tokens, model.config.dim)
    with torch.no_grad():
        logits = model(x_orig, x_edit, tokens, mask)
    assert logits.shape == (2, 1, model.config.image_size, model.config.image_size)
    assert torch.isfinite(logits).all()


def test_checkpoint_round_trip_holds_only_the_head(tiny_encoders, tmp_path):
    torch.manual_seed(1)
    model = SigmaModel.from_config(tiny_sigma_config(*tiny_encoders)).eval()
    with torch.no_grad():
        model.difference.set_noise_stats(torch.rand_like(model.difference.noise_mean),
                                         torch.rand_like(model.difference.noise_std) + 0.5)
    model.save_pretrained(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert not any(name.startswith(("backbone.", "text_encoder.model.")) for name in saved)
    assert "difference.noise_std" in saved and "text_encoder.proj.weight" in saved
    assert json.loads((tmp_path / "config.json").read_text())["backbone"] == tiny_encoders[0]

    reloaded = SigmaModel.from_pretrained(str(tmp_path))
    assert bool(reloaded.difference.calibrated)
    batch = inputs(model)
    with torch.no_grad():
        assert torch.equal(model(*batch), reloaded(*batch))


def test_relative_encoder_paths_resolve_inside_the_checkpoint(tiny_checkpoint, tiny_encoders, tmp_path):
    folder = tmp_path / "portable"
    shutil.copytree(tiny_checkpoint, folder)
    shutil.copytree(tiny_encoders[0], folder / "backbone")
    shutil.copytree(tiny_encoders[1], folder / "text_encoder")
    config = json.loads((folder / "config.json").read_text())
    config.update(backbone="backbone", text_encoder="text_encoder")
    (folder / "config.json").write_text(json.dumps(config))
    model = SigmaModel.from_pretrained(str(folder))
    assert model.config.backbone == str(folder / "backbone")


def test_mismatched_checkpoint_is_rejected(tiny_encoders, tmp_path):
    SigmaModel.from_config(tiny_sigma_config(*tiny_encoders)).save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    config["refine_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match"):
        SigmaModel.from_pretrained(str(tmp_path))


def test_config_validation_and_serialisation(tmp_path):
    config = SigmaConfig(taps=[2, 5, 11])
    config.save(str(tmp_path))
    assert SigmaConfig.load(str(tmp_path)) == config
    with pytest.raises(ValueError, match="unknown"):
        SigmaConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="taps"):
        SigmaConfig(taps=(5, 2))
    with pytest.raises(FileNotFoundError, match="not a sigma_fast checkpoint"):
        SigmaConfig.load(str(tmp_path / "missing"))


def test_difference_branch_is_the_feature_diff_contract():
    torch.manual_seed(0)
    branch = DifferenceBranch(channels=8, num_taps=2, dim=4)
    f_orig = [torch.randn(2, 5, 8) for _ in range(2)]
    f_edit = [torch.randn(2, 5, 8) for _ in range(2)]
    expected = reference.feature_diff(f_orig, f_edit, branch.weight, branch.bias)
    torch.testing.assert_close(branch(f_orig, f_edit), expected)
    mean, std = reference.feature_diff_stats(f_orig, f_edit)
    branch.set_noise_stats(mean, std)
    calibrated = reference.feature_diff(f_orig, f_edit, branch.weight, branch.bias, mean, std.clamp_min(1e-3))
    torch.testing.assert_close(branch(f_orig, f_edit), calibrated)
    assert not torch.allclose(calibrated, expected)


def test_feature_diff_reference_by_hand():
    o = torch.tensor([[[1.0, -1.0]]])
    e = torch.tensor([[[-1.0, 1.0]]])
    # LN keeps (1, -1) up to eps; |o-e| = (2, 2), o*e = (-1, -1), 1 - cos = 2
    weight = torch.eye(5)[None]
    out = reference.feature_diff([o], [e], weight)
    torch.testing.assert_close(out, torch.tensor([[[2.0, 2.0, -1.0, -1.0, 2.0]]]), atol=1e-5, rtol=1e-5)


def test_bi_attention_block_uses_prior_and_mask():
    torch.manual_seed(0)
    block = BiAttentionBlock(dim=16, heads=2, layer_scale_init=1.0)
    visual, text = torch.randn(1, 9, 16), torch.randn(1, 4, 16)
    mask = torch.tensor([[True, True, False, False]])
    flat = torch.ones(1, 9)
    focused = torch.zeros(1, 9)
    focused[0, 3] = 1.0
    v_flat, t_flat = block(visual, text, flat, mask)
    v_focus, t_focus = block(visual, text, focused, mask)
    assert not torch.allclose(v_flat, v_focus) and not torch.allclose(t_flat, t_focus)
    # padded text tokens never influence the visual stream
    text_changed = text.clone()
    text_changed[0, 2:] += 5.0
    torch.testing.assert_close(block(visual, text_changed, flat, mask)[0], v_flat)


def test_only_the_head_trains(tiny_checkpoint):
    model = SigmaModel.from_pretrained(tiny_checkpoint).train()
    batch = inputs(model)
    model(*batch).mean().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is None for p in model.text_encoder.model.parameters())
    assert model.difference.weight.grad is not None and model.decoder.head.weight.grad is not None
    assert model.refinement[0].gamma_visual.grad is not None


def test_image_size_must_fit_patches(tiny_encoders):
    config = tiny_sigma_config(*tiny_encoders, image_size=50)
    with pytest.raises(ValueError, match="patch size"):
        SigmaModel.from_config(config)


def test_tiny_spec_controls_grid(tmp_path):
    from sigma_fast.tiny import build_tiny_encoders

    spec = TinyEncoderSpec(image_size=28, patch_size=7, backbone_layers=2)
    model = SigmaModel.from_config(tiny_sigma_config(*build_tiny_encoders(str(tmp_path), spec), spec))
    assert model.grid == 4
