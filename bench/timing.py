"""CUDA-event timing shared by the benchmark files (imported as `timing`: pytest puts bench/ on the path)."""
import statistics

import torch

CALLS_PER_REPLAY = 20  # back-to-back calls per timed graph replay: launch gaps amortised, no host work inside


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


def _capture(fn, calls):
    """A CUDA graph of `calls` back-to-back `fn()` calls, after warm-up calls on a side stream
    (which compile kernels and settle the caching allocator, as capture requires)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph


def per_call_seconds(benchmark, fn, rounds=10, warmup_rounds=2, calls=CALLS_PER_REPLAY):
    """-> (median device seconds per call, how it was timed).

    Each round replays one CUDA graph holding `calls` back-to-back calls of `fn()`, between two
    CUDA events: no Python, checks or synchronisation inside the timed region. Where `fn` cannot
    be captured, each round times `calls` back-to-back launches instead (host work then overlaps
    the device queue, but no synchronisation sits between calls). `fn` sets its own grad mode.
    """
    try:
        graph = _capture(fn, calls)
        replay, method = graph.replay, "graph"
    except RuntimeError:  # not capturable (a host sync or an uncapturable library call inside)
        torch.cuda.synchronize()

        def replay():
            for _ in range(calls):
                fn()

        method = "launches"
    times = []
    benchmark.pedantic(lambda: times.append(event_seconds(replay) / calls), rounds=rounds, iterations=1,
                       warmup_rounds=warmup_rounds)
    return statistics.median(times[warmup_rounds:]), method
