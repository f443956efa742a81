"""Where the SIGMA core's time goes on the GPU, for bench/bench_core.py's model (32 pairs, bf16):
milliseconds per forward of each part (backbone, difference branch, refinement, decoder; CUDA
events around each module), then the CUDA kernels of a few forwards grouped by name, the most
expensive first.

    python bench/profile_core.py [--rows 25]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_core import build_dinov2_base, build_sigma_core, core_inputs, random_images  # noqa: E402

WARMUP, PROFILED = 3, 3


def time_parts(model, inputs, repeats=5):
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=25, help="kernels listed")
    args = parser.parse_args()
    model = build_sigma_core(build_dinov2_base())
    inputs = core_inputs(model, random_images())
    with torch.inference_mode():
        for _ in range(WARMUP):
            model(*inputs)
        torch.cuda.synchronize()
        for name, ms in time_parts(model, inputs).items():
            print(f"{name:15s} {ms:8.2f} ms")
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as profile:
            for _ in range(PROFILED):
                with torch.profiler.record_function("core_forward"):
                    model(*inputs)
            torch.cuda.synchronize()
    print(f"{PROFILED} forwards of {inputs[0].shape[0]} pairs")
    print(profile.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
