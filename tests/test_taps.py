import json

import pytest
import torch
from transformers import Dinov2Config, Dinov2Model

from sigma_fast.config import SigmaConfig
from sigma_fast.model import DinoBackbone, SigmaModel
from sigma_fast.model.backbone import hidden_state_indices
from sigma_fast.tiny import tiny_sigma_config


def tiny_dinov2_12():
    # 12 blocks, as the ViT-Base, so that (2, 5, 11) means the paper's layers in both conventions
    torch.manual_seed(0)
    return Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=12, num_attention_heads=2, mlp_ratio=2,
                                    image_size=28, patch_size=14)).eval()


def test_dinov2_block_taps_are_the_next_hidden_states():
    model = tiny_dinov2_12()
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states
        actual = DinoBackbone(model, (2, 5, 11), convention="dinov2_blocks")(pixels)
    for tokens, index in zip(actual, (3, 6, 12)):
        assert (tokens - hidden[index][:, 1:]).abs().max().item() < 1e-5


def test_hf_hidden_states_is_the_default_convention():
    model = tiny_dinov2_12()
    assert DinoBackbone(model, (2, 5, 11)).taps == (2, 5, 11)
    assert DinoBackbone(model, (2, 5, 11), convention="dinov2_blocks").taps == (3, 6, 12)
    assert hidden_state_indices((0, 11), "dinov2_blocks") == (1, 12)
    with pytest.raises(ValueError, match="tap convention"):
        hidden_state_indices((2,), "timm")


def test_config_validates_the_convention():
    assert SigmaConfig().tap_convention == "hf_hidden_states"
    assert SigmaConfig(taps=(0, 5), tap_convention="dinov2_blocks").taps == (0, 5)
    with pytest.raises(ValueError, match=">= 1"):
        SigmaConfig(taps=(0, 5))
    with pytest.raises(ValueError, match="tap_convention"):
        SigmaConfig(tap_convention="1-based")


def test_convention_round_trips_through_config_json(tmp_path):
    SigmaConfig(taps=(2, 5, 11), tap_convention="dinov2_blocks").save(str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["tap_convention"] == "dinov2_blocks"
    assert SigmaConfig.load(str(tmp_path)) == SigmaConfig(taps=(2, 5, 11), tap_convention="dinov2_blocks")


def test_old_configs_without_the_field_load_as_hidden_states(tmp_path):
    values = SigmaConfig().to_dict()
    del values["tap_convention"]
    (tmp_path / "config.json").write_text(json.dumps(values))
    assert SigmaConfig.load(str(tmp_path)).tap_convention == "hf_hidden_states"


def test_model_taps_follow_the_convention(tiny_encoders):
    # the tiny backbone has 3 blocks: dinov2_blocks (0, 2) are hidden states (1, 3)
    config = tiny_sigma_config(*tiny_encoders, taps=(0, 2), tap_convention="dinov2_blocks")
    assert SigmaModel.from_config(config).backbone.taps == (1, 3)
