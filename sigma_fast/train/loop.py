"""The training loop: Stage I (supervised on edit masks) and Stage II (the same loop plus the
switched-on VAE round-trip calibration, EMA self-training and disentanglement loss).

The spatial prior of every pair comes from the prior store (`data.priors`, read by the stream;
flat without one, and for the `data.prior_dropout` share of the training pairs): the student, the
EMA teacher and validation all see it.

One step: a labelled batch (and, with EMA, an unlabelled one) -> device -> optional VAE pairs ->
teacher pseudo-labels and augmented student pairs -> `preprocess_pairs` -> one forward of the
DDP-wrapped head -> BCE + Dice (+ EMA BCE + disentanglement) -> finite check on every rank ->
backward, clip, AdamW, schedule, EMA update.
"""
import json
import logging
import math
import os
import time

import numpy as np
import torch
import yaml
from torch import nn

from sigma_fast import ops
from sigma_fast.grounding.parsers import load_parser
from sigma_fast.priors import PriorStore
from sigma_fast.train import losses
from sigma_fast.train.augment import augment_pairs
from sigma_fast.train.checkpoint import (capture_rng, load_checkpoint, prune_checkpoints, resolve_resume,
                                         save_checkpoint, step_folder)
from sigma_fast.train.data import NegativeSettings, open_source
from sigma_fast.train.distributed import Distributed
from sigma_fast.train.ema import EmaTeacher
from sigma_fast.train.logs import RunLog
from sigma_fast.train.stream import (CALIBRATION_STREAM, TRAIN_STREAM, UNLABELLED_STREAM, VAL_STREAM, PairStream,
                                     make_loader)
from sigma_fast.train.vae import VaeRoundTrip, calibrate, make_vae_pairs, measure_noise_stats
from sigma_fast.train.validate import evaluate, merge_metrics, summary

logger = logging.getLogger(__name__)

MAX_LOGGED_FAILURES = 20  # per process; later corrupt samples are only counted
MAX_EMPTY_BATCHES = 100  # consecutive batches without a usable sample: the data is unusable
VAL_COLUMNS = ("f1", "iou", "auc", "pooled_f1", "pooled_iou", "images")


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm was NaN/Inf: the step was not applied and training stopped."""


class TrainModule(nn.Module):
    """What DDP wraps: text encoding and the model's forward in one call (one forward per step),
    also returning the difference branch's tokens for the disentanglement loss."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x_orig, x_edit, instructions, edits, prior):
        # x_orig, x_edit (B, 3, S, S); B instructions and EditTuples; prior (B, g, g)
        # -> logits (B, 1, S, S), tokens (B, g*g, dim)
        captured = []
        handle = self.model.difference.register_forward_hook(lambda module, args, output: captured.append(output))
        try:
            text_tokens, text_mask = self.model.encode_text(instructions, edits)
            logits = self.model(x_orig, x_edit, text_tokens, text_mask, prior)
        finally:
            handle.remove()
        return logits, captured[0]


def warmup_cosine(optim):
    """LR multiplier after `step` updates: linear warm-up to 1, then cosine to min_lr_ratio."""
    def multiplier(step):
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        span = max(1, optim.steps - optim.warmup_steps)
        progress = min(1.0, (step - optim.warmup_steps) / span)
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return multiplier


def build_model(config):
    from sigma_fast.model import SigmaModel

    if config.init:
        return SigmaModel.from_pretrained(config.init)
    return SigmaModel.from_config(config.model_config())


def make_optimizer(model, optim):
    """AdamW; biases, norms and layer scales (1-D parameters) are not weight-decayed."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.dim() > 1 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps)


def to_device(batch, device):
    return {name: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for name, value in batch.items()}


def batch_prior(batch, grid, device):
    """The batch's priors (b, g, g) on `device`: the stored ones, or flat without a prior store."""
    if "prior" in batch:
        return batch["prior"].to(device, non_blocking=True)
    return torch.ones(batch["original"].shape[0], grid, grid, device=device)


def step_generator(seed, position, rank):
    """A CPU generator for this step's random choices: the same on resume, whatever came before."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, position, rank]).generate_state(1)[0]))


def plain(value):
    """Dataclass dict -> YAML-safe (tuples to lists)."""
    return json.loads(json.dumps(value))


class Trainer:
    def __init__(self, config, resume=None, progress=True):
        self.config = config
        self.progress_bar = progress
        self.dist = Distributed.from_env(config.device)
        self.device = self.dist.device
        precision = config.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        self.bf16 = precision == "bf16"
        self.run_dir = config.output_dir
        self.failures_logged = 0
        try:
            self._setup(resume)
        except BaseException:
            self.dist.close()
            raise

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _stream(self, sources, global_batch, stream, labelled, start=0, finite=False, negatives=True):
        data = self.config.data
        settings = NegativeSettings(data.negative_fraction, data.reencode_fraction, tuple(data.reencode_quality))
        dropout = data.prior_dropout if stream in (TRAIN_STREAM, UNLABELLED_STREAM) else 0.0
        return PairStream(sources, self.model.config.image_size, global_batch, self.dist.rank, self.dist.world,
                          self.config.seed, stream, labelled, settings if negatives else None, start, finite,
                          data.shuffle_blocks, self.priors, dropout)

    def _parse(self, batch):
        """With the LLM parser, its edits replace the loader's rule-parsed ones."""
        if hasattr(self.parser, "parse_batch"):
            batch["edit"] = self.parser.parse_batch(batch["instruction"])
        return batch

    def _open_sources(self, configs, need_mask):
        sources = [open_source(source, need_mask) for source in configs]
        for source in sources:
            for failure in getattr(source, "failures", []):
                logger.warning("skipping manifest row %s: %s", failure.key, failure.reason)
        return sources

    def _setup(self, resume):
        config, stage2 = self.config, self.config.stage2
        torch.manual_seed(config.seed)
        self.model = build_model(config).to(self.device).train()
        if self.bf16:
            # The frozen backbone has no master weights to keep: it runs in bf16 outright.
            self.model.backbone.to(torch.bfloat16)
        self.grid = self.model.grid
        # the LLM parser runs here, on this process's device, not in the loader's workers
        self.parser = load_parser(config.data.parser, config.data.parser_model, os.path.join(self.run_dir, "parses"),
                                  self.device)
        self.priors = None
        if config.data.priors is not None:
            self.priors = PriorStore(config.data.priors)
            if self.priors.grid != self.grid:
                raise ValueError(f"data.priors: {config.data.priors!r} holds {self.priors.grid}x{self.priors.grid} "
                                 f"priors, the model's grid is {self.grid}x{self.grid}: make them with "
                                 f"`sigma-fast prior --grid {self.grid}`")
        self.train_sources = self._open_sources(config.data.train, need_mask=True)
        self.val_sources = self._open_sources(config.data.val, need_mask=True)
        self.unlabelled_sources = self._open_sources(config.data.unlabelled, need_mask=False)
        self.vae = VaeRoundTrip.from_config(stage2.vae, self.device) if stage2.vae.enabled else None
        self.optimizer = make_optimizer(self.model, config.optim)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(config.optim))
        self.step, self.batches, self.skipped = 0, 0, 0
        if resume:
            folder = resolve_resume(resume)
            self.teacher = EmaTeacher(self.model, stage2.ema.decay, stage2.ema.warmup) if stage2.ema.enabled else None
            progress = load_checkpoint(folder, self.model, self.optimizer, self.scheduler, self.teacher,
                                       self.dist.rank, self.dist.world)
            self._check_resumable(progress, folder)
            self.step, self.batches, self.skipped = progress["step"], progress["batches"], progress["skipped"]
            if self.dist.is_main:
                logger.info("resumed from %s at step %d", folder, self.step)
        else:
            if self.vae is not None:
                self._calibrate()
            self.teacher = EmaTeacher(self.model, stage2.ema.decay, stage2.ema.warmup) if stage2.ema.enabled else None
        self.module = TrainModule(self.model)
        if self.dist.active:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # without image_logit the last refinement block's text update feeds nothing: unused parameters exist
            self.module = nn.parallel.DistributedDataParallel(self.module, device_ids=device_ids,
                                                              find_unused_parameters=True)
        self.head_parameters = [p for p in self.model.parameters() if p.requires_grad]
        if self.dist.is_main:
            os.makedirs(self.run_dir, exist_ok=True)
            with open(os.path.join(self.run_dir, "train_config.yaml"), "w") as handle:
                yaml.safe_dump(plain(config.to_dict()), handle, sort_keys=False)
        self.log = RunLog(self.run_dir, self._train_columns(), VAL_COLUMNS, self.step, self.dist.is_main)

    def _progress_record(self):
        return {"step": self.step, "batches": self.batches, "skipped": self.skipped, "stage": self.config.stage,
                "seed": self.config.seed, "batch_size": self.config.optim.batch_size,
                "ema_batch_size": self.config.stage2.ema.batch_size if self.teacher else None}

    def _check_resumable(self, saved, folder):
        current = self._progress_record()
        for key in ("stage", "seed", "batch_size", "ema_batch_size"):
            if saved.get(key) != current[key]:
                raise ValueError(f"cannot resume from {folder}: it was trained with {key}={saved.get(key)}, "
                                 f"this config has {current[key]} (the data position would not match)")

    def _train_columns(self):
        columns = ["lr", "loss", "bce", "dice"]
        if self.teacher:
            columns += ["ema_bce", "ema_confident"]
        if self.config.stage2.disentangle.enabled:
            columns += ["disentangle", "separation"]
        return columns + ["grad_norm", "samples", "skipped", "seconds_per_step"]

    def _calibrate(self):
        """Measure the noise-only whitening statistics on the first batches of the training data
        (its own stream: the training position is untouched) and install them."""
        vae_config = self.config.stage2.vae
        stream = self._stream(self.train_sources, self.config.optim.batch_size, CALIBRATION_STREAM, True,
                              negatives=False)
        loader = make_loader(stream, self.config.data.workers, False)
        batches = []
        for batch in loader:
            if batch["original"].shape[0]:
                batches.append(batch["original"])
            if len(batches) == vae_config.calibration_batches:
                break
        mean, std = measure_noise_stats(self.model, self.vae, batches, self.dist.sum, self.autocast)
        calibrate(self.model.difference, mean, std)
        if self.dist.is_main:
            logger.info("calibrated the difference branch on %d batches of VAE noise-only pairs", len(batches))

    def _record_failures(self, failures):
        for failure in failures:
            if self.failures_logged < MAX_LOGGED_FAILURES:
                logger.warning("skipping a corrupt sample: %s", failure)
            self.failures_logged += 1

    def _unlabelled_inputs(self, batch, generator):
        """Teacher pseudo-labels on the clean pairs; the student gets the augmented pairs."""
        size = self.model.config.image_size
        x_orig, x_edit = ops.preprocess_pairs(list(batch["original"]), list(batch["edited"]), size=size)
        prior = batch_prior(batch, self.grid, self.device)
        with self.autocast():
            label, weight = self.teacher.pseudo_label(x_orig, x_edit, batch["instruction"], batch["edit"],
                                                      self.config.stage2.ema.confidence, prior)
        return augment_pairs(batch["original"], batch["edited"], label, weight, prior,
                             self.config.stage2.ema.augment, generator)

    def train_step(self, batch, unlabelled):
        """One optimisation step; returns the logged values (global over ranks) or None when some
        rank's batch had no usable sample (then no rank steps)."""
        config, stage2 = self.config, self.config.stage2
        failures = batch["failures"] + (unlabelled["failures"] if unlabelled is not None else [])
        self._record_failures(failures)
        count = batch["original"].shape[0]
        empty = count == 0 or (unlabelled is not None and unlabelled["original"].shape[0] == 0)
        status = self.dist.sum(torch.tensor([float(empty), float(len(failures)), float(count)]))
        self.skipped += int(status[1].item())
        if status[0].item() > 0:
            return None
        generator = step_generator(config.seed, self.batches, self.dist.rank)
        batch = to_device(batch, self.device)
        if self.vae is not None:
            with self.autocast():
                make_vae_pairs(batch, self.vae, stage2.vae.noise_fraction, stage2.vae.composite_fraction, generator)
        originals, editeds = list(batch["original"]), list(batch["edited"])
        instructions, edits = list(batch["instruction"]), list(batch["edit"])
        priors = [batch_prior(batch, self.grid, self.device)]
        if unlabelled is not None:
            unlabelled = to_device(unlabelled, self.device)
            u_orig, u_edit, label, weight, u_prior = self._unlabelled_inputs(unlabelled, generator)
            originals += list(u_orig)
            editeds += list(u_edit)
            instructions += unlabelled["instruction"]
            edits += unlabelled["edit"]
            priors.append(u_prior)
        x_orig, x_edit = ops.preprocess_pairs(originals, editeds, size=self.model.config.image_size)
        with self.autocast():
            logits, tokens = self.module(x_orig, x_edit, instructions, edits, torch.cat(priors))
        loss, parts = losses.bce_dice(logits[:count], batch["mask"], config.loss.bce_weight, config.loss.dice_weight)
        values = {"bce": parts["bce"], "dice": parts["dice"]}
        if unlabelled is not None:
            ema_loss = losses.masked_bce(logits[count:], label, weight)
            loss = loss + stage2.ema.weight * ema_loss
            values.update(ema_bce=ema_loss.detach(), ema_confident=weight.mean())
        if stage2.disentangle.enabled:
            coverage = losses.token_coverage(batch["mask"], self.grid)
            dis_loss, separation = losses.disentangle_loss(tokens[:count], coverage, stage2.disentangle.margin)
            loss = loss + stage2.disentangle.weight * dis_loss
            values.update(disentangle=dis_loss.detach())
            values["separation"] = separation if separation is not None else torch.full((), float("nan"), device=loss.device)
        names = list(values)
        local = torch.stack([loss.detach().float()] + [values[name].float().reshape(()) for name in names])
        present = torch.isfinite(local)
        reduced = self.dist.sum(torch.cat([torch.where(present, local, torch.zeros_like(local)), present.float()]))
        sums, counts = reduced[:len(local)], reduced[len(local):]
        if counts[0].item() < self.dist.world:
            self._stop(f"the loss is {loss.item()} on rank {self.dist.rank}" if not present[0]
                       else f"the loss is not finite on {self.dist.world - int(counts[0].item())} other rank(s)", values)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.head_parameters, config.optim.grad_clip or float("inf"))
        if not torch.isfinite(grad_norm):
            self._stop(f"the gradient norm is {grad_norm.item()}", values)
        self.optimizer.step()
        self.scheduler.step()
        if unlabelled is not None:
            self.teacher.update(self.model)
        logged = {"loss": sums[0].item() / self.dist.world}
        for index, name in enumerate(names, start=1):
            logged[name] = sums[index].item() / counts[index].item() if counts[index] > 0 else float("nan")
        logged["grad_norm"] = grad_norm.item()
        logged["samples"] = int(status[2].item())
        return logged

    def _stop(self, reason, values):
        latest = resolve_latest(self.run_dir)
        parts = ", ".join(f"{name}={value.item():.4g}" for name, value in values.items())
        raise NonFiniteLossError(
            f"step {self.step + 1}: {reason} ({parts}); the step was not applied and training stopped. "
            + (f"The last good checkpoint is {latest}: resume with --resume {self.run_dir} (consider a lower lr)."
               if latest else "No checkpoint was saved yet."))

    def validate(self):
        data = self.config.data
        stream = self._stream(self.val_sources, self.config.optim.batch_size, VAL_STREAM, True, finite=True,
                              negatives=False)
        loader = make_loader(stream, min(data.workers, 2), data.pin_memory and self.device.type == "cuda")
        model, size = self.model, self.model.config.image_size

        def predict(batch):
            self._parse(batch)
            x_orig, x_edit = ops.preprocess_pairs(list(batch["original"].to(self.device)),
                                                  list(batch["edited"].to(self.device)), size=size)
            with self.autocast():
                text_tokens, text_mask = model.encode_text(batch["instruction"], batch["edit"])
                return model(x_orig, x_edit, text_tokens, text_mask, batch_prior(batch, self.grid, self.device))

        model.eval()
        try:
            metrics = evaluate(predict, loader, model.config.threshold, data.val_batches)
        finally:
            model.train()
        return summary(merge_metrics(self.dist.gather(metrics), model.config.threshold))

    def save(self):
        rng_states = self.dist.gather(capture_rng())
        if self.dist.is_main:
            folder = step_folder(self.run_dir, self.step)
            save_checkpoint(folder, self.model, self.optimizer, self.scheduler, self._progress_record(),
                            self.teacher, rng_states)
            prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
        self.dist.barrier()

    def run(self):
        """Train to `optim.steps`; returns a summary (per-step losses of this run, last validation)."""
        from tqdm import tqdm

        config, data = self.config, self.config.data
        pin = data.pin_memory and self.device.type == "cuda"
        train_stream = self._stream(self.train_sources, config.optim.batch_size, TRAIN_STREAM, True, self.batches)
        batches = iter(make_loader(train_stream, data.workers, pin))
        unlabelled_batches = None
        if self.teacher is not None:
            unlabelled_stream = self._stream(self.unlabelled_sources, config.stage2.ema.batch_size,
                                             UNLABELLED_STREAM, False, self.batches)
            unlabelled_batches = iter(make_loader(unlabelled_stream, data.workers, pin))
        bar = tqdm(total=config.optim.steps, initial=self.step, desc=f"stage {config.stage}",
                   disable=not (self.progress_bar and self.dist.is_main))
        history, interval, last_val, empty_in_a_row = [], [], None, 0
        started = time.perf_counter()
        try:
            while self.step < config.optim.steps:
                batch = self._parse(next(batches))
                unlabelled = self._parse(next(unlabelled_batches)) if unlabelled_batches is not None else None
                if unlabelled is not None and self.step < config.stage2.ema.start_step:
                    unlabelled = None  # drawn all the same: the stream's position stays the step's
                if unlabelled is not None and self.teacher.updates == 0:
                    self.teacher.reset(self.model)  # self-training starts from the student as it is now
                lr = self.scheduler.get_last_lr()[0]
                values = self.train_step(batch, unlabelled)
                self.batches += 1
                if values is None:
                    empty_in_a_row += 1
                    if empty_in_a_row == MAX_EMPTY_BATCHES:
                        raise ValueError(f"{MAX_EMPTY_BATCHES} batches in a row had no usable sample on some rank "
                                         f"({self.skipped} corrupt samples so far): check the training data")
                    continue
                empty_in_a_row = 0
                self.step += 1
                values["lr"] = lr
                history.append(values["loss"])
                interval.append(values)
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}")
                last = self.step == config.optim.steps
                if self.step % config.log_every == 0 or last:
                    elapsed = time.perf_counter() - started
                    self.log.train(self.step, average(interval, elapsed, self.skipped))
                    interval, started = [], time.perf_counter()
                if self.val_sources and (self.step % config.val_every == 0 or last):
                    last_val = self.validate()
                    self.log.val(self.step, last_val)
                if self.step % config.save_every == 0 or last:
                    self.save()
            if self.dist.is_main:
                self.model.save_pretrained(os.path.join(self.run_dir, "final"))
                if self.teacher is not None:
                    self.teacher.model.save_pretrained(os.path.join(self.run_dir, "final_ema"))
            self.dist.barrier()
        finally:
            bar.close()
            self.log.close()
        return {"step": self.step, "losses": history, "val": last_val, "skipped": self.skipped,
                "checkpoint": resolve_latest(self.run_dir)}

    def close(self):
        self.dist.close()


def average(interval, elapsed, skipped):
    """Mean of the logged values over a logging interval; counters as totals."""
    result = {}
    for name in interval[0]:
        numbers = [v[name] for v in interval if not (isinstance(v[name], float) and math.isnan(v[name]))]
        result[name] = sum(numbers) / len(numbers) if numbers else None
    result["samples"] = sum(v["samples"] for v in interval)
    result["lr"] = interval[-1]["lr"]
    result["skipped"] = skipped
    result["seconds_per_step"] = elapsed / len(interval)
    return result


def resolve_latest(run_dir):
    pointer = os.path.join(run_dir, "checkpoints", "LATEST")
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as handle:
        return os.path.join(run_dir, "checkpoints", handle.read().strip())


def train(config, resume=None, progress=True):
    """Run a training job described by a validated TrainConfig (one process of a torchrun job, or
    the only one). `resume`: a step folder or a run folder (its latest checkpoint)."""
    trainer = Trainer(config, resume, progress)
    try:
        return trainer.run()
    finally:
        trainer.close()

