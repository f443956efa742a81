"""Choosing between interchangeable implementations by measuring them on the card, once.

A choice is keyed by the card, the torch version and the call's shapes and dtype; it is made the
first time that key is met on a CUDA device (median of CUDA-event timings after warm-up) and
remembered in memory and in a JSON file, so that later processes on the same machine make the same
choice without measuring, and a re-run gives the same bytes. On the CPU no measurement happens: the
first candidate (the reference) is taken.

`SIGMA_FAST_AUTOTUNE_CACHE` names the JSON file (default `~/.cache/sigma_fast/autotune.json`);
`SIGMA_FAST_AUTOTUNE=0` turns measuring off (the first working candidate is taken).
"""
import json
import logging
import os
import threading

import torch

log = logging.getLogger(__name__)

CACHE_ENV = "SIGMA_FAST_AUTOTUNE_CACHE"
ENABLE_ENV = "SIGMA_FAST_AUTOTUNE"
WARMUP, ITERATIONS = 3, 10

_lock = threading.Lock()
_choices = None  # key -> candidate name, loaded from the cache file on first use


def cache_path():
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "sigma_fast",
                                                     "autotune.json")


def _load():
    global _choices
    if _choices is None:
        try:
            with open(cache_path()) as handle:
                _choices = json.load(handle)
        except (OSError, ValueError):
            _choices = {}
    return _choices


def _save():
    path = cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w") as handle:
            json.dump(_choices, handle, indent=1, sort_keys=True)
        os.replace(temporary, path)
    except OSError as error:  # a read-only home only costs a re-measurement next time
        log.warning("could not save autotune choices to %s: %s", path, error)


def device_key(device):
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return f"{name}|torch {torch.__version__}"


def time_ms(fn, warmup=WARMUP, iterations=ITERATIONS):
    """Median milliseconds of `fn()` on the current CUDA stream, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def choose(key, device, candidates):
    """The name of the fastest of `candidates` (name -> zero-argument callable running one call).

    Candidates that raise are skipped (a backend that does not support the shape); the first
    candidate is the fallback and the CPU's choice.
    """
    full_key = f"{device_key(device)}|{key}"
    with _lock:
        known = _load().get(full_key)
    if known in candidates:
        return known
    if torch.device(device).type != "cuda" or os.environ.get(ENABLE_ENV) == "0":
        return next(iter(candidates))
    if torch.cuda.is_current_stream_capturing():
        raise RuntimeError(f"autotune: {key} was not measured before CUDA-graph capture; run one eager call first")
    timings = {}
    for name, fn in candidates.items():
        try:
            timings[name] = time_ms(fn)
        except (RuntimeError, ValueError, NotImplementedError) as error:
            log.info("autotune %s: %s unavailable (%s)", key, name, (str(error) or repr(error)).splitlines()[0])
    if not timings:
        raise RuntimeError(f"autotune: no candidate of {key} runs on this device: {sorted(candidates)}")
    best = min(timings, key=timings.get)
    ranking = sorted(timings.items(), key=lambda item: item[1])
    log.info("autotune %s: %s", key, ", ".join(f"{name} {ms:.3f} ms" for name, ms in ranking))
    with _lock:
        _load()[full_key] = best
        _save()
    return best


def recorded_choices():
    """Every remembered choice (key -> name): what the benchmarks report beside their figures."""
    with _lock:
        return dict(_load())
