"""CUDA-event timing shared by the benchmark files (imported as `timing`: pytest puts bench/ on the path)."""
import torch


def event_seconds(fn):
    """Seconds of device time between CUDA events around `fn()`; synchronises once, at the end."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3
