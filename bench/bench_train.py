"""Stage I training steps on the GPU against the SIGMA core's inference throughput (issue 11).

One step as `sigma_fast.train.loop.Trainer.train_step` runs it for Stage I: uint8 pairs already on
the GPU -> `preprocess_pairs` -> under bf16 autocast, text encoding and the model's forward
(`TrainModule`, fp32 parameters, frozen backbone, fused kernels) -> BCE + Dice -> backward ->
gradient clipping -> AdamW -> LR schedule. Left out: data loading and the loop's logging and
finite-loss checks (host syncs for the log, not work). 32 pairs per step, 512x512 inputs, the
default config around a random DINOv2-Base (11 layers).

Rows, in file order:
- `train_stage1_hf_layers_bf16`: the backbone as before issue 11 (Hugging Face's DINOv2 layers
  called one by one up to the deepest tap);
- `train_stage1_core_bf16`: the package's backbone (`DinoBackbone`), i.e. after.
`extra_info`: `pairs_per_s`, `ratio_to_core` (over `core_bf16_eager` at 32 pairs, measured by
bench_core.py earlier in the same run, or here when this file runs alone), `ratio_to_core_graph`
when bench_core.py measured `core_bf16_graph`, and on the second row `ratio_to_train_hf_layers`
(after over before). Run: `pytest bench/bench_train.py --benchmark-only`; skips without CUDA.
"""
import pytest
import torch
from torch import nn

from bench_core import MEDIANS, ROUNDS, WARMUP_ROUNDS, build_sigma_core, core_inputs, measure
from timing import event_seconds

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="benchmarks need a CUDA GPU")

PAIRS, INPUT_SIZE = 32, 512


class HFLayersBackbone(nn.Module):
    """The backbone before issue 11: HF DINOv2's embeddings and layers called one by one up to
    the deepest tap, patch tokens of the tapped layers returned (DinoBackbone's interface)."""

    def __init__(self, dinov2, taps):
        super().__init__()
        self.taps = tuple(taps)
        self.embeddings = dinov2.embeddings
        self.layers = nn.ModuleList(dinov2.encoder.layer[: max(taps)])
        self.patch_size = dinov2.config.patch_size
        self.hidden_size = dinov2.config.hidden_size
        self.requires_grad_(False)

    def train(self, mode=True):
        return super().train(False)  # frozen, as DinoBackbone

    def forward(self, pixel_values):
        # (B, 3, S, S) -> L x (B, (S/p)^2, C)
        hidden, outputs = self.embeddings(pixel_values), []
        for index, layer in enumerate(self.layers, start=1):
            hidden = layer(hidden)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            if index in self.taps:
                outputs.append(hidden[:, 1:])
        return outputs


def stage1_batch(image_size, device):
    """PAIRS uint8 (H, W, 3) pairs on `device`, instructions, parsed edits, masks (B, S, S) with
    one rectangle each."""
    from sigma_fast.grounding import parse_instruction

    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (2, PAIRS, INPUT_SIZE, INPUT_SIZE, 3), dtype=torch.uint8, device=device,
                           generator=generator)
    instructions = ["replace the red car with a blue bus", "remove the dog", "make the sky cloudy",
                    "add a lamp on the table"] * (PAIRS // 4)
    masks = torch.zeros(PAIRS, image_size, image_size, device=device)
    for index in range(PAIRS):
        top, left = (index * 37) % (image_size // 2), (index * 53) % (image_size // 2)
        masks[index, top:top + image_size // 3, left:left + image_size // 4] = 1
    return list(images[0]), list(images[1]), instructions, [parse_instruction(t) for t in instructions], masks


def make_step(model):
    """-> a callable running one Stage I step on a fixed batch (see the module docstring)."""
    from sigma_fast import ops
    from sigma_fast.train import losses
    from sigma_fast.train.config import OptimConfig
    from sigma_fast.train.loop import TrainModule, make_optimizer, warmup_cosine

    optim = OptimConfig()
    module = TrainModule(model)
    optimizer = make_optimizer(model, optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(optim))
    head_parameters = [p for p in model.parameters() if p.requires_grad]
    size, device = model.config.image_size, next(model.parameters()).device
    originals, editeds, instructions, edits, masks = stage1_batch(size, device)

    def step():
        x_orig, x_edit = ops.preprocess_pairs(originals, editeds, size=size)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits, _tokens = module(x_orig, x_edit, instructions, edits)
        loss, _parts = losses.bce_dice(logits, masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head_parameters, optim.grad_clip)
        optimizer.step()
        scheduler.step()

    return step


def core_seconds():
    """core_bf16_eager's median at PAIRS pairs: bench_core.py's, or measured now."""
    if ("core_bf16_eager", PAIRS) not in MEDIANS:
        model = build_sigma_core()
        inputs = core_inputs(model, PAIRS)
        with torch.inference_mode():
            times = [event_seconds(lambda: model(*inputs)) for _ in range(WARMUP_ROUNDS + ROUNDS)]
        MEDIANS[("core_bf16_eager", PAIRS)] = sorted(times[WARMUP_ROUNDS:])[ROUNDS // 2]
    return MEDIANS[("core_bf16_eager", PAIRS)]


def run_training(benchmark, row, backbone_class=None):
    model = build_sigma_core(torch.float32, backbone_class).train()
    median = measure(benchmark, row, PAIRS, make_step(model), grad=True)
    info = benchmark.extra_info
    info["ratio_to_core"] = core_seconds() / median
    if ("core_bf16_graph", PAIRS) in MEDIANS:
        info["ratio_to_core_graph"] = MEDIANS[("core_bf16_graph", PAIRS)] / median
    return info, median


def test_train_stage1_hf_layers_bf16(benchmark):
    run_training(benchmark, "train_stage1_hf_layers_bf16", HFLayersBackbone)


def test_train_stage1_core_bf16(benchmark):
    info, median = run_training(benchmark, "train_stage1_core_bf16")
    if ("train_stage1_hf_layers_bf16", PAIRS) in MEDIANS:
        info["ratio_to_train_hf_layers"] = MEDIANS[("train_stage1_hf_layers_bf16", PAIRS)] / median
