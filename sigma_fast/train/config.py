"""Training configuration: a YAML file -> validated dataclasses.

Unknown keys, wrong types and out-of-range values raise `ValueError` naming the offending key
(`optim.lr: must be > 0, got -1.0`). Paths are taken as written: relative ones resolve against the
working directory; `embedded:backbone` and `embedded:text_encoder` name the tiny random encoders
shipped in the package. `overrides` ({"optim.lr": 3e-4}) are applied to the YAML before validation.
"""
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import yaml

from sigma_fast.config import SigmaConfig
from sigma_fast.grounding.parsers import PARSERS

SOURCE_FORMATS = ("parquet", "manifest")
# MagicBrush's parquet columns; other corpora map their own names with `columns`
PARQUET_COLUMNS = {"original": "source_img", "edited": "target_img", "mask": "mask_img", "instruction": "instruction"}
PRECISIONS = ("auto", "bf16", "fp32")
EMBEDDED = "embedded:"  # model.backbone / model.text_encoder: the tiny encoders shipped in the package


@dataclass
class SourceConfig:
    format: str  # "parquet" (image columns are {bytes, path} structs) or "manifest" (JSONL/CSV)
    path: str  # a file, a folder of them, or a glob
    columns: dict = field(default_factory=lambda: dict(PARQUET_COLUMNS))  # parquet only
    limit: Optional[int] = None  # use only the first N rows

    def validate(self, where):
        check(self.format in SOURCE_FORMATS, where, "format", f"must be one of {SOURCE_FORMATS}, got {self.format!r}")
        unknown = sorted(set(self.columns) - set(PARQUET_COLUMNS))
        check(not unknown, where, "columns", f"unknown roles {unknown}; roles are {sorted(PARQUET_COLUMNS)}")
        self.columns = {**PARQUET_COLUMNS, **self.columns}
        check(self.limit is None or self.limit > 0, where, "limit", f"must be > 0, got {self.limit}")


@dataclass
class DataConfig:
    train: List[SourceConfig]
    val: List[SourceConfig] = field(default_factory=list)  # held-out split for pixel F1/IoU
    unlabelled: List[SourceConfig] = field(default_factory=list)  # Stage II EMA self-training pairs
    negative_fraction: float = 0.2  # real/real pairs (target all zero) among the training samples
    reencode_fraction: float = 0.5  # of those, the share compared with a JPEG re-encode instead of itself
    reencode_quality: Tuple[int, int] = (85, 95)
    shuffle_blocks: int = 4  # parquet row groups shuffled together (streaming shuffle window)
    workers: int = 4  # DataLoader processes per training process
    pin_memory: bool = True
    val_batches: Optional[int] = None  # cap on validation batches (None: the whole split)
    # instruction parser: "rules", or "llm" (parser_model: a hub id or folder; None: the default
    # Qwen2.5-1.5B-Instruct), run in the training process, parses cached in OUTPUT_DIR/parses
    parser: str = "rules"
    parser_model: Optional[str] = None
    # prior store (`sigma-fast prior`) read by key for every split; None: the flat prior everywhere
    priors: Optional[str] = None
    prior_dropout: float = 0.0  # share of training pairs given the flat prior instead (drawn per sample)

    def validate(self, where):
        check(len(self.train) > 0, where, "train", "needs at least one source")
        for name in ("train", "val", "unlabelled"):
            for index, source in enumerate(getattr(self, name)):
                source.validate(f"{where}.{name}[{index}]")
        check_fraction(self, where, "negative_fraction")
        check_fraction(self, where, "reencode_fraction")
        low, high = self.reencode_quality
        check(1 <= low <= high <= 100, where, "reencode_quality", f"must be [low, high] in 1..100, got {[low, high]}")
        check(self.shuffle_blocks >= 1, where, "shuffle_blocks", f"must be >= 1, got {self.shuffle_blocks}")
        check(self.workers >= 0, where, "workers", f"must be >= 0, got {self.workers}")
        check(self.val_batches is None or self.val_batches > 0, where, "val_batches", f"must be > 0, got {self.val_batches}")
        check(self.parser in PARSERS, where, "parser", f"must be one of {PARSERS}, got {self.parser!r}")
        check(self.priors is None or bool(self.priors), where, "priors", "must be a prior store folder or null")
        check_fraction(self, where, "prior_dropout")


@dataclass
class OptimConfig:
    steps: int = 10000
    batch_size: int = 32  # global: split evenly over the DDP processes
    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 500  # linear warm-up, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.01
    grad_clip: Optional[float] = 1.0  # max global grad norm; None disables clipping

    def validate(self, where):
        for name in ("steps", "batch_size"):
            check(getattr(self, name) > 0, where, name, f"must be > 0, got {getattr(self, name)}")
        check(self.lr > 0, where, "lr", f"must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, where, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(all(0 <= b < 1 for b in self.betas), where, "betas", f"must be in [0, 1), got {list(self.betas)}")
        check(self.eps > 0, where, "eps", f"must be > 0, got {self.eps}")
        check(self.warmup_steps >= 0, where, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check_fraction(self, where, "min_lr_ratio")
        check(self.grad_clip is None or self.grad_clip > 0, where, "grad_clip", f"must be > 0 or null, got {self.grad_clip}")


@dataclass
class LossConfig:
    bce_weight: float = 1.0
    dice_weight: float = 1.0

    def validate(self, where):
        check(self.bce_weight >= 0 and self.dice_weight >= 0 and self.bce_weight + self.dice_weight > 0, where,
              "bce_weight", f"bce_weight and dice_weight must be >= 0 and not both 0, got {self.bce_weight}, {self.dice_weight}")


@dataclass
class VaeConfig:
    """VAE round-trip noise calibration: noise-only pairs, composites, whitening statistics."""
    enabled: bool = False
    model: str = "stabilityai/sd-vae-ft-mse"  # hub id or folder of a diffusers AutoencoderKL
    subfolder: Optional[str] = None  # e.g. "vae" inside a full pipeline repo (FLUX.1)
    scale: Optional[float] = None  # latent scaling factor; None: the VAE config's (0.18215 SD, 0.3611 FLUX)
    shift: Optional[float] = None  # latent shift; None: the VAE config's (0 SD, 0.1159 FLUX)
    latent_noise: float = 0.0  # std of Gaussian noise added to the scaled latent (re-synthesis residue)
    noise_fraction: float = 0.25  # labelled samples per batch turned into noise-only pairs
    composite_fraction: float = 0.25  # positives per batch turned into edit-on-round-trip composites
    calibration_batches: int = 16  # batches of noise-only pairs measured for the whitening statistics

    def validate(self, where):
        check_fraction(self, where, "noise_fraction")
        check_fraction(self, where, "composite_fraction")
        check(self.noise_fraction + self.composite_fraction <= 1, where, "composite_fraction",
              f"noise_fraction + composite_fraction must be <= 1, got {self.noise_fraction + self.composite_fraction}")
        check(self.latent_noise >= 0, where, "latent_noise", f"must be >= 0, got {self.latent_noise}")
        check(self.scale is None or self.scale > 0, where, "scale", f"must be > 0, got {self.scale}")
        check(self.calibration_batches > 0, where, "calibration_batches", f"must be > 0, got {self.calibration_batches}")


@dataclass
class AugmentConfig:
    """Strong augmentation of the student's unlabelled pairs: every parameter is drawn once per
    pair and applied identically to both images (and, for the geometry, to the pseudo-label)."""
    brightness: float = 0.3  # additive, in [0, 1] image units
    contrast: float = 0.3  # multiplicative around the original's mean
    saturation: float = 0.3
    noise_std: float = 0.02  # one Gaussian field added to both images
    hflip: float = 0.5
    rotate_degrees: float = 15.0
    scale: Tuple[float, float] = (0.8, 1.25)
    translate: float = 0.1  # fraction of the image size
    resave: float = 0.0  # share of pairs whose edited image alone is resampled and JPEG-encoded again
    resave_scale: Tuple[float, float] = (0.5, 1.0)  # resampling factor (down, then back up)
    resave_quality: Tuple[int, int] = (50, 95)

    def validate(self, where):
        for name in ("brightness", "contrast", "saturation", "noise_std", "rotate_degrees", "translate"):
            check(getattr(self, name) >= 0, where, name, f"must be >= 0, got {getattr(self, name)}")
        check_fraction(self, where, "hflip")
        check_fraction(self, where, "resave")
        low, high = self.resave_scale
        check(0 < low <= high <= 1, where, "resave_scale", f"must be [low, high] in (0, 1], got {[low, high]}")
        low, high = self.resave_quality
        check(1 <= low <= high <= 100, where, "resave_quality", f"must be [low, high] in 1..100, got {[low, high]}")
        check(0 < self.scale[0] <= self.scale[1], where, "scale", f"must be [low, high] with 0 < low <= high, got {list(self.scale)}")


@dataclass
class EmaConfig:
    """EMA self-training: an EMA teacher pseudo-labels unlabelled pairs for the student."""
    enabled: bool = False
    decay: float = 0.999
    warmup: bool = True  # decay_t = min(decay, (1 + t) / (10 + t))
    # a pseudo-label's weight is the share of its image's pixels with max(p, 1 - p) >= confidence:
    # whole images are weighted, no pixel is left out
    confidence: float = 0.9
    weight: float = 1.0
    batch_size: int = 16  # global unlabelled pairs per step
    # Stage II steps before self-training starts; the teacher is then reset to the student, so that
    # its pseudo-labels come from a model the other mechanisms have already adapted to the editor's
    # domain (a Stage I teacher labels the editor's perturbation as edits, and self-training
    # reinforces that).
    start_step: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self, where):
        check(0 < self.decay < 1, where, "decay", f"must be in (0, 1), got {self.decay}")
        check(0.5 < self.confidence < 1, where, "confidence", f"must be in (0.5, 1), got {self.confidence}")
        check(self.weight > 0, where, "weight", f"must be > 0, got {self.weight}")
        check(self.batch_size > 0, where, "batch_size", f"must be > 0, got {self.batch_size}")
        check(self.start_step >= 0, where, "start_step", f"must be >= 0, got {self.start_step}")
        self.augment.validate(f"{where}.augment")


@dataclass
class DisentangleConfig:
    """Edit-noise disentanglement loss on the difference branch's tokens (see losses.py)."""
    enabled: bool = False
    weight: float = 0.1
    margin: float = 1.0  # required cosine distance of every noise-only token from the edit prototype, (0, 2]

    def validate(self, where):
        check(self.weight > 0, where, "weight", f"must be > 0, got {self.weight}")
        check(0 < self.margin <= 2, where, "margin", f"must be in (0, 2], got {self.margin}")


@dataclass
class Stage2Config:
    vae: VaeConfig = field(default_factory=VaeConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    disentangle: DisentangleConfig = field(default_factory=DisentangleConfig)

    def validate(self, where):
        self.vae.validate(f"{where}.vae")
        self.ema.validate(f"{where}.ema")
        self.disentangle.validate(f"{where}.disentangle")

    def any_enabled(self):
        return self.vae.enabled or self.ema.enabled or self.disentangle.enabled


@dataclass
class TrainConfig:
    stage: int
    output_dir: str
    data: DataConfig
    model: Optional[dict] = None  # SigmaConfig fields of a new head (Stage I); excludes `init`
    init: Optional[str] = None  # checkpoint folder to start from (required for Stage II)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    seed: int = 0
    precision: str = "auto"  # bf16 autocast on the GPU, fp32 on the CPU
    device: str = "auto"  # auto: cuda:LOCAL_RANK when available, else cpu
    log_every: int = 10
    val_every: int = 1000
    save_every: int = 1000
    keep_checkpoints: int = 3

    def validate(self):
        check(self.stage in (1, 2), "", "stage", f"must be 1 or 2, got {self.stage}")
        check(bool(self.output_dir), "", "output_dir", "must be a folder path")
        check(self.precision in PRECISIONS, "", "precision", f"must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("log_every", "val_every", "save_every", "keep_checkpoints"):
            check(getattr(self, name) > 0, "", name, f"must be > 0, got {getattr(self, name)}")
        self.data.validate("data")
        self.optim.validate("optim")
        self.loss.validate("loss")
        self.stage2.validate("stage2")
        check(not (self.model and self.init), "", "model", "give either `model` (a new head) or `init` (a checkpoint), not both")
        if self.model is not None:
            try:
                self.model_config()
            except (TypeError, ValueError) as error:
                raise ValueError(f"model: {error}") from None
        if self.stage == 1:
            check(self.model is not None or self.init, "", "model", "Stage I needs `model` (SigmaConfig fields) or `init`")
            check(not self.stage2.any_enabled(), "", "stage2", "Stage II mechanisms are enabled but the stage is 1")
        else:
            check(bool(self.init), "", "init", "Stage II starts from a Stage I checkpoint: set `init` or pass --init")
        if self.stage2.ema.enabled:
            check(len(self.data.unlabelled) > 0, "data", "unlabelled", "EMA self-training needs unlabelled sources")

    def model_config(self) -> SigmaConfig:
        values = dict(self.model)
        for name in ("backbone", "text_encoder"):
            if name in values:
                values[name] = resolve_embedded(values[name], name)
        return SigmaConfig.from_dict(values)

    def to_dict(self):
        return dataclasses.asdict(self)


def resolve_embedded(reference, where):
    """"embedded:backbone" / "embedded:text_encoder" -> the folder of that tiny random encoder
    inside the installed package (the demo model's); any other reference as it is."""
    if not isinstance(reference, str) or not reference.startswith(EMBEDDED):
        return reference
    from sigma_fast.annotate import EMBEDDED_CHECKPOINT

    name = reference[len(EMBEDDED):]
    check(name in ("backbone", "text_encoder"), "", where,
          f"unknown embedded encoder {reference!r}; use {EMBEDDED}backbone or {EMBEDDED}text_encoder")
    return os.path.join(EMBEDDED_CHECKPOINT, name)


def check(condition, where, name, message):
    if not condition:
        raise ValueError(f"{where + '.' if where else ''}{name}: {message}")


def check_fraction(config, where, name):
    value = getattr(config, name)
    check(0 <= value <= 1, where, name, f"must be in [0, 1], got {value}")


def _convert(value, kind, where):
    """A YAML value -> `kind` (a dataclass, list, tuple, Optional or scalar type), or ValueError."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _convert(value, next(a for a in args if a is not type(None)), where)
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if origin is tuple:
            if len(value) != len(args):
                raise ValueError(f"{where}: expected {len(args)} values, got {list(value)}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if kind is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind is float:
        # YAML 1.1 reads 1e-4 (no dot) as a string: accept any number spelling
        try:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{where}: unsupported config type {kind}")


def from_dict(cls, values, where=""):
    """Build dataclass `cls` from a mapping, checking keys and types recursively."""
    if not isinstance(values, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where + ': ' if where else ''}unknown key(s) {unknown}; known keys: {sorted(fields)}")
    missing = [name for name, f in fields.items() if name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{where + ': ' if where else ''}missing required key(s) {missing}")
    prefix = f"{where}." if where else ""
    return cls(**{name: _convert(value, hints[name], prefix + name) for name, value in values.items()})


def apply_overrides(values, overrides):
    """{"optim.lr": 1e-3} -> values["optim"]["lr"] = 1e-3 (creating sections as needed)."""
    for dotted, value in (overrides or {}).items():
        node = values
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {dotted!r}: {part!r} is not a section")
        node[leaf] = value
    return values


def load_train_config(path, stage=None, overrides=None, init=None) -> TrainConfig:
    """Read, override and validate a training YAML. `stage` and `init` come from the command line:
    a `stage` in the file must agree with it; `init` replaces the file's."""
    try:
        with open(path) as handle:
            values = yaml.safe_load(handle) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"training config {path!r} not found") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: invalid YAML ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: the top level must be a mapping")
    if stage is not None:
        if values.get("stage") not in (None, stage):
            raise ValueError(f"{path}: the file says stage {values['stage']} but --stage {stage} was given")
        values["stage"] = stage
    if init is not None:
        values["init"] = init
    apply_overrides(values, overrides)
    try:
        config = from_dict(TrainConfig, values)
        config.validate()
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return config
