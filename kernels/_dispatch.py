"""When the fused ops run Triton and when they fall back to the PyTorch references.

CUDA tensors go to Triton. CPU tensors go to the references, unless `TRITON_INTERPRET=1` is set:
then they go to Triton's interpreter, which is how CI tests the kernels. Without Triton (it is an
optional dependency) everything uses the references.
"""
import os

import torch

try:
    import triton.language as tl
except ImportError:
    HAS_TRITON = False
else:
    HAS_TRITON = True
    TRITON_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def interpreting():
    """True when Triton runs kernels in its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def common_device(op_name, *tensors):
    """The one device of all given tensors (None entries ignored); a clear error if they differ."""
    devices = {t.device for t in tensors if t is not None}
    if len(devices) != 1:
        raise ValueError(f"{op_name}: all tensors must be on one device, got {sorted(map(str, devices))}")
    return devices.pop()


def use_triton(device):
    """True when the fused Triton kernels should run on tensors of this device."""
    if not HAS_TRITON:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and interpreting()


def dot_config(dtype):
    """`tl.dot` operand dtype and input precision for activations of `dtype`.

    Half-precision activations use their own dtype on the tensor cores (fp32 accumulation);
    fp32 stays exact unless torch allows TF32. The interpreter computes every dot in fp32
    because its bf16 `tl.dot` is wrong.
    """
    if interpreting():
        return tl.float32, "ieee"
    if dtype == torch.float32:
        return tl.float32, "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return TRITON_DTYPES[dtype], "tf32"
