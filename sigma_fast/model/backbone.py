"""Frozen DINOv2 backbone that stops after its deepest tap."""
import torch
from torch import nn

from sigma_fast.config import DINOV2_BLOCKS, HF_HIDDEN_STATES, TAP_CONVENTIONS
from sigma_fast.model.vit import SUPPORTED_BACKBONES, DinoViT


def hidden_state_indices(taps, convention=HF_HIDDEN_STATES):
    """Taps in `convention` -> Hugging Face `hidden_states` indices (1-based block outputs)."""
    if convention not in TAP_CONVENTIONS:
        raise ValueError(f"tap convention must be one of {TAP_CONVENTIONS}, got {convention!r}")
    # get_intermediate_layers counts blocks from 0; hidden_states[0] is the embedding, so block b's output is b + 1
    return tuple(int(t) + 1 for t in taps) if convention == DINOV2_BLOCKS else tuple(int(t) for t in taps)


class DinoBackbone(nn.Module):
    """Runs a DINOv2 (or DINOv2-with-registers) model only up to the deepest tap, through our own
    forward (`sigma_fast.model.vit.DinoViT`), and returns the patch tokens (CLS and register tokens
    dropped) after each tapped layer.

    `taps` are read in `convention` (see `SigmaConfig`) and kept as `self.taps` in Hugging Face's:
    tap i equals `hidden_states[i][:, prefix:]`.
    """

    def __init__(self, model, taps, convention=HF_HIDDEN_STATES):
        # model: a Hugging Face Dinov2Model / Dinov2WithRegistersModel whose weights are taken.
        super().__init__()
        self.taps = hidden_state_indices(taps, convention)
        self.vit = DinoViT.from_hf(model, max(self.taps))
        self.num_prefix_tokens = 1 + self.vit.config.num_register_tokens
        self.patch_size = self.vit.config.patch_size
        self.hidden_size = self.vit.config.hidden_size
        self.eval()

    @classmethod
    def from_pretrained(cls, name_or_path, taps, dtype=None, convention=HF_HIDDEN_STATES):
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(name_or_path)
        if config.model_type not in SUPPORTED_BACKBONES:
            raise ValueError(f"{name_or_path!r} is a {config.model_type!r} model, not one of {SUPPORTED_BACKBONES}")
        model = AutoModel.from_pretrained(name_or_path, dtype=dtype or torch.float32)
        return cls(model, taps, convention)

    @property
    def precision(self):
        return self.vit.precision

    def quantize_fp8(self):
        """Run the backbone's GEMMs in FP8 from now on (see `DinoViT.quantize_fp8`)."""
        self.vit.quantize_fp8()

    def train(self, mode=True):
        # Frozen: dropout and drop-path stay off even while the head trains.
        return super().train(False)

    def forward(self, pixel_values):
        # (B, 3, S, S) -> L x (B, (S/p)^2, C)
        return [hidden[:, self.num_prefix_tokens:] for hidden in self.vit(pixel_values, self.taps)]
