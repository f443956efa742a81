"""Where the SIGMA core's time goes on the GPU, for bench/bench_core.py's model (bf16, eager):
1. milliseconds per forward of each part (backbone, difference branch, refinement, decoder; CUDA
   events recorded by forward hooks on the model's own modules) and the decoder's share of the core
   (issue 11: at most 10%);
2. the decoder alone on the inputs it gets in the core, in NCHW, in channels-last (the default on
   CUDA) and channels-last under `torch.compile` (GroupNorm + GELU fused), each as a share of the
   core's forward: which layout and whether compiling pays;
3. the CUDA kernels of a few forwards grouped by name, the most expensive first.

    python bench/profile_core.py [--pairs 32] [--rows 25] [--no-compile]
"""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_core import build_sigma_core, core_inputs  # noqa: E402
from timing import event_seconds  # noqa: E402

WARMUP, REPEATS, PROFILED = 3, 10, 3


def time_parts(model, inputs, repeats=REPEATS):
    """-> {part: mean ms per forward}, from CUDA events recorded by forward hooks: a part starts
    before its first module's forward and ends after its last one's."""
    parts = {"backbone": (model.backbone, model.backbone), "difference": (model.difference, model.difference),
             "refinement": (model.refinement[0], model.refinement[-1]), "decoder": (model.decoder, model.decoder)}
    events = {name: [] for name in parts}
    handles = []
    for name, (first, last) in parts.items():
        def before(_module, _args, name=name):
            pair = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            pair[0].record()
            events[name].append(pair)

        def after(_module, _args, _output, name=name):
            events[name][-1][1].record()

        handles += [first.register_forward_pre_hook(before), last.register_forward_hook(after)]
    whole = []
    for _ in range(repeats):
        pair = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        pair[0].record()
        model(*inputs)
        pair[1].record()
        whole.append(pair)
    torch.cuda.synchronize()
    for handle in handles:
        handle.remove()
    events["whole forward"] = whole
    return {name: sum(start.elapsed_time(end) for start, end in pairs) / len(pairs) for name, pairs in events.items()}


def decoder_inputs(model, inputs):
    """The decoder's arguments (tokens, grid, x_orig, x_edit) in one core forward."""
    captured = []
    handle = model.decoder.register_forward_pre_hook(lambda _module, args: captured.append(args))
    try:
        model(*inputs)
    finally:
        handle.remove()
    return captured[0]


def time_decoder_variants(decoder, args, compile_too):
    """-> {variant: median ms} of the decoder alone on `args`."""
    variants = {"NCHW eager": (False, decoder), "channels-last eager": (True, decoder)}
    if compile_too:
        variants["channels-last compiled"] = (True, torch.compile(decoder, dynamic=False))
    default, results = decoder.channels_last, {}
    try:
        for name, (channels_last, forward) in variants.items():
            decoder.channels_last = channels_last
            times = [event_seconds(lambda: forward(*args)) for _ in range(WARMUP + REPEATS)]
            results[name] = statistics.median(times[WARMUP:]) * 1e3
    finally:
        decoder.channels_last = default
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=32, help="pairs per forward")
    parser.add_argument("--rows", type=int, default=25, help="kernels listed")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled decoder variant")
    args = parser.parse_args()
    model = build_sigma_core()
    inputs = core_inputs(model, args.pairs)
    print(f"{torch.cuda.get_device_name()}, {args.pairs} pairs per forward, bf16, eager")
    with torch.inference_mode():
        for _ in range(WARMUP):
            model(*inputs)
        torch.cuda.synchronize()
        parts = time_parts(model, inputs)
        for name, ms in parts.items():
            print(f"{name:15s} {ms:8.2f} ms")
        core_ms = parts["whole forward"]
        print(f"decoder share of the core: {parts['decoder'] / core_ms:.1%} (issue 11: <= 10%)")
        variants = time_decoder_variants(model.decoder, decoder_inputs(model, inputs), not args.no_compile)
        for name, ms in variants.items():
            print(f"decoder, {name:24s} {ms:8.2f} ms  {ms / core_ms:6.1%} of the core")
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as profile:
            for _ in range(PROFILED):
                with torch.profiler.record_function("core_forward"):
                    model(*inputs)
            torch.cuda.synchronize()
    print(f"{PROFILED} forwards of {args.pairs} pairs")
    print(profile.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
