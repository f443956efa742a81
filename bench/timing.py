"""CUDA-event timing shared by the benchmark files (imported as `timing`: pytest puts bench/ on the path)."""
import statistics

import torch


def event_seconds(fn):
    """Seconds of device time between CUDA events around `fn()`; synchronises once, at the end."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def median_seconds(benchmark, fn, rounds, warmup_rounds):
    """Runs `fn()` in pytest-benchmark's rounds under inference mode, each timed with CUDA events;
    returns the median device seconds of the rounds after the warm-up ones."""
    times = []
    with torch.inference_mode():
        benchmark.pedantic(lambda: times.append(event_seconds(fn)), rounds=rounds, iterations=1,
                           warmup_rounds=warmup_rounds)
    return statistics.median(times[warmup_rounds:])
