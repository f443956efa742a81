"""Frozen DINOv2 backbone that stops after its deepest tap."""
import torch
from torch import nn

SUPPORTED_BACKBONES = ("dinov2", "dinov2_with_registers")


class DinoBackbone(nn.Module):
    """Runs a DINOv2 (or DINOv2-with-registers) model only up to the deepest tap and returns the
    patch tokens (CLS and register tokens dropped) after each tapped layer.

    `taps` are 1-based layer indices: tap i equals Hugging Face's `hidden_states[i][:, prefix:]`.
    """

    def __init__(self, model, taps):
        super().__init__()
        config = model.config
        if config.model_type not in SUPPORTED_BACKBONES:
            raise ValueError(f"backbone must be one of {SUPPORTED_BACKBONES}, got {config.model_type!r}")
        if max(taps) > config.num_hidden_layers:
            raise ValueError(f"tap {max(taps)} is deeper than the backbone's {config.num_hidden_layers} layers")
        self.taps = tuple(taps)
        self.embeddings = model.embeddings
        self.layers = nn.ModuleList(model.encoder.layer[: max(taps)])
        self.num_prefix_tokens = 1 + getattr(config, "num_register_tokens", 0)
        self.patch_size = config.patch_size
        self.hidden_size = config.hidden_size
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_pretrained(cls, name_or_path, taps, dtype=None):
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(name_or_path)
        if config.model_type not in SUPPORTED_BACKBONES:
            raise ValueError(f"{name_or_path!r} is a {config.model_type!r} model, not one of {SUPPORTED_BACKBONES}")
        model = AutoModel.from_pretrained(name_or_path, attn_implementation="sdpa", dtype=dtype or torch.float32)
        return cls(model, taps)

    def train(self, mode=True):
        # Frozen: dropout and drop-path stay off even while the head trains.
        return super().train(False)

    def forward(self, pixel_values):
        # (B, 3, S, S) -> L x (B, (S/p)^2, C)
        hidden = self.embeddings(pixel_values)
        taps, outputs = set(self.taps), []
        for index, layer in enumerate(self.layers, start=1):
            hidden = layer(hidden)
            if isinstance(hidden, tuple):  # older transformers return (hidden, attentions)
                hidden = hidden[0]
            if index in taps:
                outputs.append(hidden[:, self.num_prefix_tokens:])
        return outputs
