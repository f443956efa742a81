"""`SigmaConfig`: every setting of the SIGMA head, serialised to `config.json` beside the weights."""
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Optional, Tuple

CONFIG_NAME = "config.json"
# What the numbers in `taps` mean (see SigmaConfig).
HF_HIDDEN_STATES, DINOV2_BLOCKS = "hf_hidden_states", "dinov2_blocks"
TAP_CONVENTIONS = (HF_HIDDEN_STATES, DINOV2_BLOCKS)
# Fields added after checkpoints were published: the value a config.json without them means.
LEGACY_VALUES = {"image_logit": False, "action_embedding": False, "noise_floor_cue": False}


@dataclass
class SigmaConfig:
    """Settings of a SIGMA model. The frozen backbone and text encoder are referenced by hub id or
    local folder (`backbone`, `text_encoder`), never copied into a checkpoint.

    A relative `backbone`/`text_encoder` path in a saved config resolves against the checkpoint
    folder, so a checkpoint that ships its small encoders beside it stays relocatable.

    `taps` are read in `tap_convention`. The paper's "layers 2, 5 and 11 of the ViT-Base" can mean
    either; "hf_hidden_states" (the default, and what configs without the field mean): Hugging
    Face's `hidden_states[i]`, 1-based block outputs, so (2, 5, 11) taps the outputs of blocks 2, 5
    and 11 of 12. "dinov2_blocks": DINOv2's `get_intermediate_layers` 0-based block indices, so
    (2, 5, 11) taps the outputs of blocks 3, 6 and 12 (HF `hidden_states[3, 6, 12]`).

    `image_logit`: one logit per image, read from the refined text tokens (masked mean, linear,
    zero-initialised), added to every pixel's logit. The decoder's GroupNorm normalises each image
    over its pixels, so a change that covers the whole image (a global edit) cannot pass through it
    unaided; the instruction, read through the refinement, can say "the whole image". A saved config
    without the field means False (checkpoints made before it).

    `action_embedding`: a learned vector per parsed action (the five and "unknown"), zero-initialised,
    added to every text token, so the parser's structured reading reaches the model however the
    instruction is phrased. A saved config without the field means False.

    `noise_floor_cue`: a fifth per-pixel decoder input, the change above the image's own noise
    floor (`sigma_fast.model.decoder.floor_excess`), so that a faint edit on an untouched image is
    not read as an editor's whole-image noise. A saved config without the field means False.
    """

    backbone: str = "facebook/dinov2-base"
    taps: Tuple[int, ...] = (2, 5, 11)  # layer indices in `tap_convention`
    tap_convention: str = HF_HIDDEN_STATES
    image_size: int = 518
    text_encoder: str = "openai/clip-vit-base-patch32"
    max_text_tokens: int = 32  # per text segment (instruction, source, target)
    dim: int = 256
    refine_layers: int = 2
    refine_heads: int = 8
    prior_gate_alpha: float = 1.0
    layer_scale_init: float = 1e-4
    decoder_channels: Tuple[int, ...] = (128, 64, 32)
    cue_channels: int = 16
    image_logit: bool = True
    action_embedding: bool = True
    noise_floor_cue: bool = True
    threshold: float = 0.5
    extra: dict = field(default_factory=dict)  # free-form provenance (training run, data)

    def __post_init__(self):
        self.taps = tuple(int(t) for t in self.taps)
        self.decoder_channels = tuple(int(c) for c in self.decoder_channels)
        if self.tap_convention not in TAP_CONVENTIONS:
            raise ValueError(f"tap_convention must be one of {TAP_CONVENTIONS}, got {self.tap_convention!r}")
        first = 1 if self.tap_convention == HF_HIDDEN_STATES else 0
        if not self.taps or min(self.taps) < first or list(self.taps) != sorted(set(self.taps)):
            raise ValueError(f"taps must be increasing layer indices >= {first} ({self.tap_convention}), got {self.taps}")
        if self.dim % self.refine_heads:
            raise ValueError(f"dim {self.dim} is not divisible by refine_heads {self.refine_heads}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown SigmaConfig fields: {unknown}")
        return cls(**values)

    def save(self, folder):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, CONFIG_NAME), "w") as handle:
            json.dump(self.to_dict(), handle, indent=2)

    @classmethod
    def load(cls, folder):
        path = os.path.join(folder, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {CONFIG_NAME} in {folder!r}: not a sigma_fast checkpoint")
        with open(path) as handle:
            return cls.from_dict({**LEGACY_VALUES, **json.load(handle)})

    def resolve_paths(self, folder) -> "SigmaConfig":
        """A copy whose relative encoder paths point inside `folder` when they exist there."""
        def resolve(reference: Optional[str]):
            candidate = os.path.join(folder, reference)
            return candidate if not os.path.isabs(reference) and os.path.isdir(candidate) else reference
        return dataclasses.replace(self, backbone=resolve(self.backbone), text_encoder=resolve(self.text_encoder))
