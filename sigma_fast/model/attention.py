"""Self-attention backends for the backbone, the fastest chosen by measurement on the card.

Each backend maps the fused qkv projection (B, T, 3, H, d) to the attention output (B, T, H*d).
On CUDA the candidates are SDPA restricted to its flash, cuDNN and memory-efficient kernels, and
xformers' `memory_efficient_attention` when xformers is installed (the `xformers` extra);
`sigma_fast.model.autotune` times them once per (card, shape, dtype) and remembers the winner.
`SIGMA_FAST_ATTENTION=<name>` forces one. On the CPU SDPA picks its own kernel.
"""
import contextlib
import importlib.util
import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from sigma_fast.model import autotune

FORCE_ENV = "SIGMA_FAST_ATTENTION"
SDPA_BACKENDS = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
                 "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION}


def _sdpa(qkv, backend=None):
    # (B, T, 3, H, d) -> (B, T, H*d)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, d) views
    with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
        out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).flatten(2)


def _xformers(qkv):
    # (B, T, 3, H, d) -> (B, T, H*d); xformers takes (B, T, H, d) directly
    from xformers.ops import memory_efficient_attention

    q, k, v = qkv.unbind(2)
    return memory_efficient_attention(q, k, v).flatten(2)


def backends(device):
    """Names of the backends worth trying on `device`, the default first."""
    if torch.device(device).type != "cuda":
        return ["sdpa"]
    found = list(SDPA_BACKENDS)
    if importlib.util.find_spec("xformers") is not None:
        found.append("xformers")
    return found


def choose_backend(qkv):
    """The name of the attention backend for qkv's shape, dtype and device (measured once)."""
    available = backends(qkv.device)
    forced = os.environ.get(FORCE_ENV)
    if forced:
        if forced not in available:
            raise ValueError(f"{FORCE_ENV}={forced!r} is not available here; choose one of {sorted(available)}")
        return forced
    key = f"attention|{tuple(qkv.shape)}|{qkv.dtype}"
    return autotune.choose(key, qkv.device, {name: (lambda name=name: attention(qkv, name)) for name in available})


def attention(qkv, backend):
    """Multi-head self-attention (scale d**-0.5) through the named backend: (B, T, 3, H, d) -> (B, T, H*d)."""
    if backend == "xformers":
        return _xformers(qkv)
    return _sdpa(qkv, SDPA_BACKENDS.get(backend))
