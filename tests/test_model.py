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


def calibrated_branch(seed=0):
    torch.manual_seed(seed)
    branch = DifferenceBranch(channels=8, num_taps=2, dim=4)
    f_orig = [torch.randn(2, 5, 8) for _ in range(2)]
    f_edit = [0.5 * o + torch.randn(2, 5, 8) for o in f_orig]
    mean, std = reference.feature_diff_stats(f_orig, f_edit)
    with torch.no_grad():
        branch.set_noise_stats(mean + 0.1, std + 0.2)
        branch.bias.normal_()
    return branch, f_orig, f_edit


def test_calibrated_is_a_python_flag_saved_as_the_same_tensor_key():
    branch, _, _ = calibrated_branch()
    assert branch.calibrated is True and "calibrated" not in dict(branch.named_buffers())
    state = branch.state_dict()
    assert list(state) == ["weight", "bias", "noise_mean", "noise_std", "calibrated"]
    assert state["calibrated"].dtype == torch.bool and bool(state["calibrated"])
    fresh = DifferenceBranch(channels=8, num_taps=2, dim=4)
    assert fresh.calibrated is False
    fresh.load_state_dict(state)
    assert fresh.calibrated is True
    fresh.load_state_dict({**state, "calibrated": torch.tensor(False)})
    assert fresh.calibrated is False
    missing = {name: value for name, value in state.items() if name != "calibrated"}
    with pytest.raises(RuntimeError, match="calibrated"):
        fresh.load_state_dict(missing)


def spy_on_feature_diff(monkeypatch):
    """Records the parameters each call of the difference branch hands to the fused op."""
    import sigma_fast.model.difference as difference_module

    calls = []

    def spy(f_orig, f_edit, weight, bias=None, noise_mean=None, noise_std=None):
        calls.append((weight, bias, noise_mean, noise_std))
        return reference.feature_diff(f_orig, f_edit, weight, bias, noise_mean, noise_std)

    monkeypatch.setattr(difference_module.kernels, "feature_diff", spy)
    return calls


def test_inference_folds_the_whitening_into_the_projection(monkeypatch):
    branch, f_orig, f_edit = calibrated_branch()
    calls = spy_on_feature_diff(monkeypatch)
    unfolded = branch(f_orig, f_edit)  # training mode: the whitened parameters
    assert calls[-1][2] is branch.noise_mean and calls[-1][3] is branch.noise_std
    branch.eval()
    with torch.no_grad():
        folded = branch(f_orig, f_edit)
    weight, bias, noise_mean, noise_std = calls[-1]
    assert noise_mean is None and noise_std is None and weight is not branch.weight
    torch.testing.assert_close(folded, unfolded.detach(), rtol=1e-5, atol=1e-5)
    # Eval mode with grad enabled (training through an eval-mode head) keeps the parameters.
    branch(f_orig, f_edit)
    assert calls[-1][0] is branch.weight


def test_a_stale_fold_is_never_used(monkeypatch):
    branch, f_orig, f_edit = calibrated_branch()
    branch.eval()
    calls = spy_on_feature_diff(monkeypatch)
    with torch.no_grad():
        branch.weight.mul_(2.0)  # an in-place update after the fold (an optimiser or EMA step)
        doubled = branch(f_orig, f_edit)
        assert calls[-1][0] is branch.weight
        branch.fold()
        torch.testing.assert_close(branch(f_orig, f_edit), doubled, rtol=1e-5, atol=1e-5)
        assert calls[-1][2] is None
        # New statistics and loaded weights fold again, in eval mode.
        branch.set_noise_stats(branch.noise_mean + 1.0, branch.noise_std)
        assert branch._use_fold()
        branch.load_state_dict(calibrated_branch(seed=3)[0].state_dict())
        assert branch._use_fold()
        expected = reference.feature_diff(f_orig, f_edit, branch.weight, branch.bias, branch.noise_mean,
                                          branch.noise_std)
        torch.testing.assert_close(branch(f_orig, f_edit), expected, rtol=1e-5, atol=1e-5)
        assert calls[-1][2] is None
    branch.train()
    expected = reference.feature_diff(f_orig, f_edit, branch.weight, branch.bias, branch.noise_mean,
                                      branch.noise_std)
    torch.testing.assert_close(branch(f_orig, f_edit), expected)
    assert branch.folded is None and calls[-1][0] is branch.weight


def test_training_learns_the_unfolded_parameters():
    branch, f_orig, f_edit = calibrated_branch()
    branch.eval()
    branch.train()
    optimizer = torch.optim.SGD(branch.parameters(), lr=0.1)
    branch(f_orig, f_edit).square().mean().backward()
    assert branch.weight.grad is not None and branch.bias.grad is not None
    optimizer.step()
    branch.eval()
    with torch.no_grad():
        folded = branch(f_orig, f_edit)
        expected = reference.feature_diff(f_orig, f_edit, branch.weight, branch.bias, branch.noise_mean,
                                          branch.noise_std)
    torch.testing.assert_close(folded, expected, rtol=1e-5, atol=1e-5)


def test_fold_follows_the_module_to_another_dtype():
    branch, f_orig, f_edit = calibrated_branch()
    branch.eval()
    branch.to(torch.float64)
    assert branch.folded[0].dtype == torch.float64 and branch._use_fold() is False  # grad enabled
    with torch.no_grad():
        assert branch._use_fold()


def test_demo_checkpoint_loads_folded_with_the_same_keys_and_masks():
    from sigma_fast.annotate import EMBEDDED_CHECKPOINT

    model = SigmaModel.from_pretrained(EMBEDDED_CHECKPOINT)
    saved = load_file(os.path.join(EMBEDDED_CHECKPOINT, "model.safetensors"))
    assert set(model.head_state_dict()) == set(saved)
    assert model.difference.calibrated is bool(saved["difference.calibrated"])
    # Calibrated (as Stage II leaves a model), the folded inference path gives the same masks.
    generator = torch.Generator().manual_seed(4)
    noise_mean = model.difference.noise_mean
    model.difference.set_noise_stats(torch.rand(noise_mean.shape, generator=generator),
                                     torch.rand(noise_mean.shape, generator=generator) + 0.5)
    assert model.difference.folded is not None
    batch = inputs(model)
    with torch.no_grad():
        folded = model(*batch)
    with torch.enable_grad():  # eval mode with grad: the unfolded parameters
        unfolded = model(*batch).detach()
    torch.testing.assert_close(folded, unfolded, rtol=1e-4, atol=1e-4)
    assert torch.equal(folded > 0, unfolded > 0)


def test_bi_attention_block_fuses_projections_without_changing_its_keys():
    torch.manual_seed(0)
    block = BiAttentionBlock(dim=16, heads=2, layer_scale_init=1.0)
    names = {name for name, _ in block.named_parameters()}
    assert {"query_visual.weight", "value_visual.bias", "key_text.weight", "value_text.bias"} <= names
    visual, text = torch.randn(2, 9, 16), torch.randn(2, 4, 16)
    mask = torch.tensor([[True, True, False, True], [True, False, False, False]])
    prior = torch.rand(2, 9)

    def split(x):
        return x.unflatten(-1, (2, -1)).transpose(1, 2)

    # The block's forward spelled out with the four separate projections.
    v, t = block.norm_visual(visual), block.norm_text(text)
    out_visual, out_text = reference.bi_attention(
        split(block.query_visual(v)), split(block.key_text(t)), split(block.value_visual(v)),
        split(block.value_text(t)), torch.log(prior.clamp_min(1e-4)), mask)
    v = v + block.gamma_visual * (1 + prior[..., None]) * block.out_visual(out_visual.transpose(1, 2).flatten(2))
    t = t + block.gamma_text * block.out_text(out_text.transpose(1, 2).flatten(2))
    v = v + block.gamma_mlp * block.mlp(block.norm_mlp(v))
    got_visual, got_text = block(visual, text, prior, mask)
    torch.testing.assert_close(got_visual, v)
    torch.testing.assert_close(got_text, t)


def test_the_image_logit_shifts_every_pixel_by_one_value_read_from_the_text(tiny_encoders):
    # the decoder's GroupNorm normalises each image: the image logit is the path for "the whole image"
    torch.manual_seed(0)
    model = SigmaModel.from_config(tiny_sigma_config(*tiny_encoders)).eval()
    assert model.config.image_logit and model.config.action_embedding
    batch = inputs(model)
    with torch.no_grad():
        before = model(*batch)  # zero-initialised: no effect until trained
        model.image_logit.weight.normal_()
        after = model(*batch)
    shift = (after - before).flatten(1)
    assert not torch.allclose(shift[0], shift[1])  # one value per image, from its own text
    torch.testing.assert_close(shift, shift[:, :1].expand_as(shift))


def test_the_action_embedding_carries_the_parsed_action(tiny_encoders):
    torch.manual_seed(0)
    model = SigmaModel.from_config(tiny_sigma_config(*tiny_encoders)).eval()
    texts = ["make it winter", "make it winter"]
    edits = [EditTuple("global"), EditTuple("unknown")]
    same, _ = model.encode_text(texts, edits)
    torch.testing.assert_close(same[0], same[1])  # zero-initialised
    with torch.no_grad():
        model.action_embedding.weight.normal_()
    tokens, mask = model.encode_text(texts, edits)
    difference = tokens[0] - tokens[1]
    torch.testing.assert_close(difference, difference[:1].expand_as(difference))  # one vector on every token
    assert difference.abs().sum() > 0


def test_a_config_saved_before_the_later_head_fields_keeps_its_head(tiny_encoders, tmp_path):
    config = tiny_sigma_config(*tiny_encoders)
    values = config.to_dict()
    del values["image_logit"], values["action_embedding"], values["noise_floor_cue"]
    with open(tmp_path / "config.json", "w") as handle:
        json.dump(values, handle)
    loaded = SigmaConfig.load(str(tmp_path))
    assert (loaded.image_logit, loaded.action_embedding, loaded.noise_floor_cue) == (False, False, False)
    old_head = SigmaModel.from_config(loaded).head_state_dict()
    new_head = SigmaModel.from_config(config).head_state_dict()
    assert set(new_head) - set(old_head) == {"image_logit.weight", "image_logit.bias", "action_embedding.weight"}
    assert (old_head["decoder.cue.0.weight"].shape[1], new_head["decoder.cue.0.weight"].shape[1]) == (4, 5)
