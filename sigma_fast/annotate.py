"""The annotation API: `Annotator` and the module-level `annotate_batch`."""
import contextlib
import functools
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from sigma_fast import ops
from sigma_fast.grounding import EditTuple, parse_instruction
from sigma_fast.grounding.parsers import parse_all
from sigma_fast.io.images import ImageLoadError, load_image
from sigma_fast.kernels._dispatch import interpreting
from sigma_fast.model.graphs import GraphCache

CHECKPOINT_ENV = "SIGMA_FAST_CHECKPOINT"
EMBEDDED_CHECKPOINT = os.path.join(os.path.dirname(__file__), "assets", "demo_model")
PRIOR_MODES = ("none", "grounded", "auto")
GROUNDING_LOAD_ERRORS = (OSError, ValueError, ImportError)  # missing folder, not cached offline, bad id, no extra

logger = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
FP8 = "fp8"  # the model in bf16, the backbone's GEMMs in FP8
PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
PROB_DTYPES = {None: None, "fp32": torch.float32, "fp16": torch.float16}  # what `prob` comes back as


@dataclass
class Annotation:
    """One pair's result: `mask` uint8 (H, W) in {0, 255} and `prob` (H, W) float32 (float16, or
    None, when asked so: see `Annotator.submit_images`), both at the edited image's size; `score` in
    [0, 1] (see `sigma_fast.ops.reference.mask_score`); `edit` the parsed instruction. With a
    grounded prior, `prior` is the (g, g) prior the model used, `prior_flat` says whether grounding
    fell back to a flat prior, and `boxes` lists the detections. `prior_mode` is how the prior was
    made: "grounded", or "none" (flat, also when `auto` found no grounding models)."""

    mask: np.ndarray
    prob: Optional[np.ndarray]
    score: float
    edit: EditTuple
    prior: Optional[np.ndarray] = None
    prior_flat: bool = True
    boxes: list = field(default_factory=list)
    prior_mode: str = "none"


def default_checkpoint():
    """The checkpoint named by SIGMA_FAST_CHECKPOINT, else the small model shipped in the package."""
    named = os.environ.get(CHECKPOINT_ENV)
    if named:
        return named
    if os.path.isfile(os.path.join(EMBEDDED_CHECKPOINT, "config.json")):
        return EMBEDDED_CHECKPOINT
    raise FileNotFoundError(f"no default checkpoint: set {CHECKPOINT_ENV} to a checkpoint folder or hub id, "
                            "or pass one explicitly")


def resolve_device(device):
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("a CUDA device was asked for, but torch sees no GPU")
    return device


def resolve_dtype(dtype, device):
    """The torch dtype the model runs in; "fp8" runs it in bf16 (see `resolve_precision`)."""
    return resolve_precision(dtype, device)[0]


def resolve_precision(dtype, device):
    """-> (torch dtype of the model, precision name for reports: "fp32", "bf16", "fp16" or "fp8")."""
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        if dtype == FP8:
            return torch.bfloat16, FP8
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted([*DTYPES, FP8])}")
        dtype = DTYPES[dtype]
    elif dtype not in PRECISION_NAMES:
        raise ValueError(f"unsupported dtype {dtype}; use float32, bfloat16, float16 or \"fp8\"")
    return dtype, PRECISION_NAMES[dtype]


class Annotator:
    """Annotates (original, edited, instruction) triples with masks of what the edit changed.

    Pairs are processed in chunks of exactly `batch_size` (a short chunk is padded by repeating
    its last pair, and the padding is dropped), so a pair's result never depends on which pairs
    share its batch, under `torch.inference_mode`. On CUDA with `cuda_graphs` (the default) the
    model's forward is replayed from a CUDA graph captured per input shape; text encoding,
    grounding, pre- and post-processing run outside it. `dtype="fp8"` runs the model in bf16 with
    the backbone's GEMMs in FP8 (`self.dtype` is then bf16, `self.precision` "fp8").
    `prior="none"` gives the model a flat prior; `prior="grounded"` grounds the parsed concepts
    with a `Grounder` (Grounding DINO + SAM 2; `grounder=None` loads the default one on first use);
    `prior="auto"` grounds when `grounder` is given or the grounding models load from local folders or
    the hub cache (`grounding_options`: Grounder.from_pretrained keywords such as detector, segmenter,
    cache_dir), and gives the flat prior otherwise, with one warning. `self.grounding` says which.

    Safe to call from several threads at once: the parser and text encoder (HF tokenizers are not
    re-entrant), the grounder and Triton's CPU interpreter are entered by one thread at a time,
    and each call replays a graph of its own.
    """

    def __init__(self, model, device=None, dtype=None, batch_size=16, threshold=None, parser=parse_instruction,
                 prior="none", grounder=None, cuda_graphs=True, grounding_options=None):
        if prior not in PRIOR_MODES:
            raise ValueError(f"prior must be one of {PRIOR_MODES}, got {prior!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.device = resolve_device(device)
        self.dtype, self.precision = resolve_precision(dtype, self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        if self.precision == FP8:
            self.model.backbone.quantize_fp8()
        self.batch_size = batch_size
        self.threshold = model.config.threshold if threshold is None else threshold
        self.parser = parser
        self.prior_mode = prior
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self._forward = GraphCache(self.model, self.device, self.dtype) if self.cuda_graphs else self.model
        self._grounder = grounder
        self.grounding_options = dict(grounding_options or {})
        if prior == "auto" and grounder is None:
            self._grounder = self._load_local_grounder()
        self._text_lock = threading.Lock()
        self._grounding_lock = threading.RLock()
        self._interpreter_lock = threading.Lock()

    @property
    def grounder(self):
        with self._grounding_lock:  # loaded once even when several threads ask at once
            if self._grounder is None:
                from sigma_fast.grounding import Grounder

                self._grounder = Grounder.from_pretrained(device=self.device, **self.grounding_options)
            return self._grounder

    @property
    def grounding(self):
        """Whether pairs get a grounded prior: mode "grounded", or "auto" with grounding models found."""
        return self.prior_mode == "grounded" or (self.prior_mode == "auto" and self._grounder is not None)

    def _load_local_grounder(self):
        """The grounding models from local folders or the hub cache (never a download), or None."""
        from sigma_fast.grounding import Grounder
        from sigma_fast.model.sigma import quiet_loading

        try:
            with quiet_loading():
                return Grounder.from_pretrained(device=self.device, local_files_only=True, **self.grounding_options)
        except GROUNDING_LOAD_ERRORS as error:
            logger.warning("prior auto: the grounding models are not available offline (%s); annotating with the "
                           "flat prior", " ".join(str(error).split())[:300])
            return None

    @classmethod
    def from_pretrained(cls, path_or_id=None, device=None, dtype=None, **kwargs):
        """Load a checkpoint (folder or hub id; None = `default_checkpoint()`)."""
        from sigma_fast.model import SigmaModel

        model = SigmaModel.from_pretrained(path_or_id or default_checkpoint())
        return cls(model, device=device, dtype=dtype, **kwargs)

    @property
    def image_size(self):
        return self.model.config.image_size

    def annotate_batch(self, originals, editeds, instructions, threshold=None):
        """Paths, bytes, PIL images, arrays or tensors -> one `Annotation` per pair.
        Raises `ImageLoadError` naming the first input that cannot be read."""
        check_batch(originals, editeds, instructions)
        return self.annotate_images([load_image(x) for x in originals], [load_image(x) for x in editeds],
                                    instructions, threshold)

    def annotate_images(self, originals, editeds, instructions, threshold=None, probs="fp32"):
        """Decoded uint8 (H, W, 3) tensors -> one `Annotation` per pair (`probs` as in `submit_images`)."""
        return self.submit_images(originals, editeds, instructions, threshold, probs).result()

    def submit_images(self, originals, editeds, instructions, threshold=None, probs=None):
        """Run the model and the postprocessing on the device now; -> `PendingAnnotations`, whose
        `result()` waits for the results' copies to the host. Only the uint8 masks, the scores and,
        with `probs` ("fp16" or "fp32"; None: `prob` is None), the probabilities leave the device,
        copied asynchronously into pinned host memory, so the caller's thread can launch the next
        batch while another thread waits for this one."""
        check_batch(originals, editeds, instructions)
        if probs not in PROB_DTYPES:
            raise ValueError(f"probs must be one of {sorted(PROB_DTYPES, key=str)}, got {probs!r}")
        chunks = [self._annotate_chunk(originals[start:start + self.batch_size],
                                       editeds[start:start + self.batch_size],
                                       instructions[start:start + self.batch_size], threshold, PROB_DTYPES[probs])
                  for start in range(0, len(originals), self.batch_size)]
        return PendingAnnotations(chunks)

    @torch.inference_mode()
    def _annotate_chunk(self, originals, editeds, instructions, threshold, prob_dtype):
        threshold = self.threshold if threshold is None else threshold
        count, padding = len(originals), self.batch_size - len(originals)
        with self._text_lock:
            edits = parse_all(self.parser, instructions)
            tokens, text_mask = self.model.encode_text(pad(instructions, padding), pad(edits, padding))
        x_orig, x_edit = ops.preprocess_pairs([x.to(self.device) for x in pad(originals, padding)],
                                              [x.to(self.device) for x in pad(editeds, padding)],
                                              size=self.image_size, dtype=self.dtype)
        prior, flat, boxes = None, [True] * count, [[] for _ in edits]
        if self.grounding:
            with self._grounding_lock:
                grounding = self.grounder.priors(originals, editeds, edits, self.model.grid)
            prior, flat, boxes = grounding.prior, grounding.flat.tolist(), grounding.boxes
            prior = torch.cat([prior, prior[-1:].expand(padding, *prior.shape[1:])]).to(self.device)
        with self._interpreter_lock if self._interpreted() else contextlib.nullcontext():
            logits = self._forward(x_orig, x_edit, tokens, text_mask, prior)[:count]
        sizes = [tuple(x.shape[:2]) for x in editeds]
        masks, scores, *probs = ops.postprocess_masks(logits, sizes, threshold=threshold,
                                                      return_probs=prob_dtype is not None)
        # one flat tensor per kind, so each crosses to the host in a single asynchronous copy
        host = HostChunk(
            masks=to_host(torch.cat([mask.reshape(-1) for mask in masks])), sizes=sizes, scores=to_host(scores.float()),
            probs=None if prob_dtype is None else to_host(torch.cat([p.to(prob_dtype).reshape(-1) for p in probs[0]])),
            priors=None if prior is None else to_host(prior[:count].float()), edits=edits, flat=flat, boxes=boxes,
            mode="grounded" if self.grounding else "none")
        if self.device.type == "cuda":
            host.event = torch.cuda.Event()
            host.event.record()
        return host

    def _interpreted(self):
        # Triton's CPU interpreter keeps global state (patched `tl`, the grid index): not re-entrant.
        return self.device.type == "cpu" and interpreting()


def to_host(tensor):
    """`tensor` in host memory: on the GPU, a pinned buffer filled by a non-blocking copy (complete once
    an event recorded after it has passed); on the CPU, `tensor` itself."""
    if tensor.device.type == "cpu":
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host


@dataclass
class HostChunk:
    """One model call's results on their way to the host: flat pinned buffers, the per-pair sizes
    that cut them, and the CUDA event after the copies (None on the CPU)."""

    masks: torch.Tensor  # uint8 (sum of H*W,)
    sizes: list  # [(H, W)]
    scores: torch.Tensor  # float32 (B,)
    probs: Optional[torch.Tensor]  # fp16/fp32 (sum of H*W,)
    priors: Optional[torch.Tensor]  # float32 (B, g, g)
    edits: list
    flat: list
    boxes: list
    mode: str = "none"
    event: Optional[object] = None

    def annotations(self):
        if self.event is not None:
            self.event.synchronize()
        results, offset = [], 0
        for index, (height, width) in enumerate(self.sizes):
            span = slice(offset, offset + height * width)
            offset += height * width
            results.append(Annotation(
                self.masks[span].view(height, width).numpy(),
                None if self.probs is None else self.probs[span].view(height, width).numpy(),
                float(self.scores[index]), self.edits[index],
                None if self.priors is None else self.priors[index].numpy(), self.flat[index], self.boxes[index],
                self.mode))
        return results


class PendingAnnotations:
    """Annotations still being copied to the host; `result()` waits for them (from any thread)."""

    def __init__(self, chunks):
        self.chunks = chunks

    def result(self):
        return [annotation for chunk in self.chunks for annotation in chunk.annotations()]


def pad(items, count):
    """`items` with its last element repeated `count` more times."""
    return list(items) + [items[-1]] * count


def check_batch(originals, editeds, instructions):
    if isinstance(instructions, str):
        raise TypeError("instructions must be a list of strings, one per pair, not a single string")
    if not (len(originals) == len(editeds) == len(instructions)):
        raise ValueError(f"got {len(originals)} originals, {len(editeds)} edited images and "
                         f"{len(instructions)} instructions; they must pair up")
    for index, text in enumerate(instructions):
        if not isinstance(text, str):
            raise TypeError(f"instructions[{index}] must be a string, got {type(text).__name__}")


@functools.lru_cache(maxsize=2)
def _cached_annotator(checkpoint):
    return Annotator.from_pretrained(checkpoint)


def annotate_batch(originals, editeds, instructions, *, annotator=None, threshold=0.5):
    """Module-level form of `Annotator.annotate_batch`; `annotator=None` uses the default
    checkpoint (SIGMA_FAST_CHECKPOINT, else the embedded demo model), loaded once and cached."""
    annotator = annotator or _cached_annotator(default_checkpoint())
    return annotator.annotate_batch(originals, editeds, instructions, threshold=threshold)


__all__ = ["Annotation", "Annotator", "ImageLoadError", "PendingAnnotations", "annotate_batch", "default_checkpoint"]
