"""SigmaModel: frozen backbone and text tower plus the trainable SIGMA head."""
import contextlib
import os

import torch
from torch import nn

from sigma_fast.config import SigmaConfig
from sigma_fast.grounding.edit import ALL_ACTIONS
from sigma_fast.model.backbone import DinoBackbone
from sigma_fast.model.decoder import MaskDecoder
from sigma_fast.model.difference import DifferenceBranch
from sigma_fast.model.refinement import BiAttentionBlock
from sigma_fast.model.text import TextEncoder

WEIGHTS_NAME = "model.safetensors"
FROZEN_PREFIXES = ("backbone.", "text_encoder.model.")


def looks_like_hub_id(reference):
    """"name" or "namespace/name" that is not written as a path (./x, /x, ~/x, a/b/c, x\\y)."""
    return (not reference.startswith((".", "/", "~")) and "\\" not in reference and reference.count("/") <= 1
            and bool(reference.strip("/")))


def missing_reference(what, reference):
    """FileNotFoundError for a `what` (checkpoint, backbone, ...) that is no folder here and cannot
    be fetched: says whether it was read as a path or as an unreachable hub id."""
    if not looks_like_hub_id(reference):
        return FileNotFoundError(f"{what} folder {reference!r} does not exist")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    reason = "HF_HUB_OFFLINE is set and it is not in the hub cache" if offline else \
        "it was not found on the Hugging Face hub, or the hub is unreachable"
    return FileNotFoundError(f"{what} {reference!r} is not a local folder and {reason}; "
                             f"pass the path of a local folder (download it once with "
                             f"`huggingface-cli download {reference} --local-dir DIR`)")


def resolve_checkpoint(path_or_id):
    """A local checkpoint folder as is; anything else is a hub repo id, downloaded (or taken from
    the local hub cache) with `huggingface_hub.snapshot_download`. FileNotFoundError when neither."""
    if os.path.isdir(path_or_id):
        return path_or_id
    if os.path.exists(path_or_id):
        raise NotADirectoryError(f"checkpoint {path_or_id!r} is a file; a checkpoint is a folder with config.json "
                                 f"and {WEIGHTS_NAME}")
    if not looks_like_hub_id(path_or_id):
        raise missing_reference("checkpoint", path_or_id)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return snapshot_download(repo_id=path_or_id, allow_patterns=["config.json", WEIGHTS_NAME, "*/*"])
    except (OSError, HFValidationError, ValueError):  # offline, unknown repo, refused id
        raise missing_reference("checkpoint", path_or_id) from None


@contextlib.contextmanager
def quiet_loading():
    """No transformers / hub progress bars or load reports while the frozen encoders load: a
    user can do nothing about them. Real warnings (transformers' WARNING level) stay."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    bars, hub_bars, verbosity = hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled(), \
        hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        if not hub_bars:
            enable_progress_bars()


def load_encoder(what, reference, load):
    """`load(reference)`, turning "no such folder / hub id" into one FileNotFoundError line."""
    if not os.path.isdir(reference) and not looks_like_hub_id(reference):
        raise missing_reference(what, reference)
    try:
        with quiet_loading():
            return load(reference)
    except OSError:  # transformers' "not a local folder and not a valid model identifier" / offline
        if os.path.isdir(reference):
            raise
        raise missing_reference(what, reference) from None


class SigmaModel(nn.Module):
    """(original, edited, instruction tokens, prior) -> mask logits at the input size.

    Only the head (difference branch, text projection, refinement, decoder, calibration buffers)
    is trainable and saved; the backbone and text tower are referenced by the config.
    """

    def __init__(self, config: SigmaConfig, backbone: DinoBackbone, text_encoder: TextEncoder):
        super().__init__()
        if config.image_size % backbone.patch_size:
            raise ValueError(f"image_size {config.image_size} is not a multiple of the backbone's "
                             f"patch size {backbone.patch_size}")
        self.config = config
        self.grid = config.image_size // backbone.patch_size
        self.backbone = backbone
        self.text_encoder = text_encoder
        self.difference = DifferenceBranch(backbone.hidden_size, len(config.taps), config.dim)
        self.refinement = nn.ModuleList(
            BiAttentionBlock(config.dim, config.refine_heads, config.prior_gate_alpha, config.layer_scale_init)
            for _ in range(config.refine_layers))
        self.decoder = MaskDecoder(2 * config.dim, config.decoder_channels, config.cue_channels,
                                   config.noise_floor_cue)
        if config.action_embedding:
            self.action_embedding = nn.Embedding(len(ALL_ACTIONS), config.dim)
            nn.init.zeros_(self.action_embedding.weight)
        if config.image_logit:
            self.image_logit = nn.Linear(config.dim, 1)
            nn.init.zeros_(self.image_logit.weight)
            nn.init.zeros_(self.image_logit.bias)

    @classmethod
    def from_config(cls, config: SigmaConfig, dtype=None):
        """A new model with the configured frozen encoders and a freshly initialised head."""
        backbone = load_encoder("backbone", config.backbone, lambda ref: DinoBackbone.from_pretrained(
            ref, config.taps, dtype=dtype, convention=config.tap_convention))
        text_encoder = load_encoder("text encoder", config.text_encoder, lambda ref: TextEncoder.from_pretrained(
            ref, config.dim, config.max_text_tokens, dtype=dtype))
        return cls(config, backbone, text_encoder)

    @classmethod
    def from_pretrained(cls, path_or_id, device=None, dtype=None):
        """Load a checkpoint folder (or hub id): config.json + model.safetensors (head only)."""
        from safetensors.torch import load_file

        folder = resolve_checkpoint(path_or_id)
        config = SigmaConfig.load(folder).resolve_paths(folder)
        model = cls.from_config(config)
        weights = os.path.join(folder, WEIGHTS_NAME)
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"no {WEIGHTS_NAME} in {folder!r}")
        model.load_head_state_dict(load_file(weights))
        return model.to(device=device, dtype=dtype).eval()

    def head_state_dict(self):
        return {name: tensor for name, tensor in self.state_dict().items() if not name.startswith(FROZEN_PREFIXES)}

    def load_head_state_dict(self, state):
        expected = set(self.head_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.load_state_dict(state, strict=False)

    def save_pretrained(self, folder, config: SigmaConfig = None):
        """Write config.json and model.safetensors (the head only) into `folder`. `config` lets a
        caller store encoder references other than the absolute paths this model was built from."""
        from safetensors.torch import save_file

        (config or self.config).save(folder)
        state = {name: tensor.detach().float().contiguous() if tensor.is_floating_point() else tensor.contiguous()
                 for name, tensor in self.head_state_dict().items()}
        save_file(state, os.path.join(folder, WEIGHTS_NAME), metadata={"format": "pt"})

    def encode_text(self, instructions, edits):
        """Instructions and their parsed EditTuples -> text tokens (B, T, dim), mask (B, T)."""
        tokens, mask = self.text_encoder(instructions, [edit.source for edit in edits], [edit.target for edit in edits])
        if self.config.action_embedding:
            actions = torch.tensor([ALL_ACTIONS.index(edit.action) for edit in edits], device=tokens.device)
            tokens = tokens + self.action_embedding(actions)[:, None, :].to(tokens.dtype)
        return tokens, mask

    def flat_prior(self, batch, device):
        return torch.ones(batch, self.grid, self.grid, device=device)

    def forward(self, x_orig, x_edit, text_tokens, text_mask, prior=None):
        # x_orig, x_edit (B, 3, S, S); text_tokens (B, T, dim); text_mask (B, T); prior (B, g, g)
        batch = x_orig.shape[0]
        taps = self.backbone(torch.cat([x_orig, x_edit]))  # L x (2B, g*g, C): one pass for both
        f_orig = [tap[:batch] for tap in taps]
        f_edit = [tap[batch:] for tap in taps]
        difference = self.difference(f_orig, f_edit)  # (B, g*g, dim)
        if prior is None:
            prior = self.flat_prior(batch, x_orig.device)
        prior_tokens = prior.flatten(1).to(difference.dtype)  # (B, g*g)
        visual, text = difference, text_tokens.to(difference.dtype)
        for block in self.refinement:
            visual, text = block(visual, text, prior_tokens, text_mask)
        logits = self.decoder(torch.cat([visual, difference], dim=-1), self.grid, x_orig, x_edit)  # (B, 1, S, S)
        if self.config.image_logit:
            weight = text_mask.to(text.dtype)[..., None]
            pooled = (text * weight).sum(1) / weight.sum(1).clamp_min(1.0)  # (B, dim)
            logits = logits + self.image_logit(pooled)[:, :, None, None]
        return logits
