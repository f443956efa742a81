"""sigma_fast.kernels.linear_gelu / linear_residual: the fused-epilogue GEMM against the PyTorch
references (fp32 and bf16, ragged shapes, optional bias and LayerScale, leading dims), the custom
ops' registration (opcheck, a full-graph torch.compile trace) and the errors on bad input.

The Triton kernel runs on CPU tensors under TRITON_INTERPRET=1 (CI) and on CUDA tensors on a GPU;
without either, the ops run the references and only the op plumbing is tested here.
"""
import pytest
import torch

from kernel_checks import assert_close
from sigma_fast import kernels
from sigma_fast.kernels import _dispatch, reference

KERNEL_DEVICE = "cpu" if _dispatch.interpreting() else "cuda"
needs_kernels = pytest.mark.skipif(
    not _dispatch.HAS_TRITON or not (_dispatch.interpreting() or torch.cuda.is_available()),
    reason="the Triton kernel needs TRITON_INTERPRET=1 (CPU) or a CUDA GPU")
needs_ops = pytest.mark.skipif(not _dispatch.HAS_TRITON, reason="the custom ops are registered with Triton")


def make_inputs(leading, in_features, out_features, *, seed, dtype=torch.float32, device="cpu",
                bias=True, gamma=True):
    """a (*leading, K), weight (N, K), bias and gamma (N,) (or None) and residual (*leading, N)."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    tensors = {
        "a": randn(*leading, in_features),
        "weight": randn(out_features, in_features) * in_features ** -0.5,
        "bias": randn(out_features) if bias else None,
        "gamma": randn(out_features) if gamma else None,
        "residual": randn(*leading, out_features),
    }
    return {name: t.to(device=device, dtype=dtype) if t is not None else None for name, t in tensors.items()}


def gelu_args(t):
    return t["a"], t["weight"], t["bias"]


def residual_args(t):
    return t["a"], t["weight"], t["bias"], t["gamma"], t["residual"]


SHAPES = [
    # leading dims, K, N: M ragged against the 32-row blocks, K and N against 32 and 64
    pytest.param((37,), 48, 96, id="ragged-M-K-N"),
    pytest.param((2, 35), 32, 64, id="leading-dims-even-K"),
    pytest.param((5,), 96, 48, id="few-rows"),
    pytest.param((70,), 64, 32, id="unsplit-epilogue"),
    pytest.param((3, 4, 11), 80, 130, id="three-column-blocks"),
]
OPTIONAL = [pytest.param(True, True, id="bias-gamma"), pytest.param(False, True, id="no-bias"),
            pytest.param(True, False, id="no-gamma"), pytest.param(False, False, id="plain")]


@needs_kernels
@pytest.mark.parametrize("leading,in_features,out_features", SHAPES)
def test_linear_gelu_matches_reference_fp32(leading, in_features, out_features):
    t = make_inputs(leading, in_features, out_features, seed=in_features + out_features, device=KERNEL_DEVICE)
    out = kernels.linear_gelu(*gelu_args(t))
    assert out.device.type == KERNEL_DEVICE
    assert_close(out, reference.linear_gelu(*gelu_args(t)), rtol=1e-5)


@needs_kernels
@pytest.mark.parametrize("leading,in_features,out_features", SHAPES)
def test_linear_residual_matches_reference_fp32(leading, in_features, out_features):
    t = make_inputs(leading, in_features, out_features, seed=in_features * out_features, device=KERNEL_DEVICE)
    out = kernels.linear_residual(*residual_args(t))
    assert out.device.type == KERNEL_DEVICE
    assert_close(out, reference.linear_residual(*residual_args(t)), rtol=1e-5)


@needs_kernels
@pytest.mark.parametrize("has_bias,has_gamma", OPTIONAL)
def test_optional_bias_and_gamma(has_bias, has_gamma):
    t = make_inputs((33,), 40, 72, seed=3, device=KERNEL_DEVICE, bias=has_bias, gamma=has_gamma)
    assert_close(kernels.linear_residual(*residual_args(t)), reference.linear_residual(*residual_args(t)), 1e-5)
    assert_close(kernels.linear_gelu(*gelu_args(t)), reference.linear_gelu(*gelu_args(t)), 1e-5)


@needs_kernels
@pytest.mark.parametrize("leading,in_features,out_features", SHAPES[:3])
def test_bf16_matches_reference(leading, in_features, out_features):
    """bf16 operands and output, fp32 accumulation: one bf16 rounding of the output apart."""
    t = make_inputs(leading, in_features, out_features, seed=11, dtype=torch.bfloat16, device=KERNEL_DEVICE)
    assert_close(kernels.linear_gelu(*gelu_args(t)), reference.linear_gelu(*gelu_args(t)), 1e-2)
    assert_close(kernels.linear_residual(*residual_args(t)), reference.linear_residual(*residual_args(t)), 1e-2)


@needs_kernels
def test_residual_dtype_sets_output_dtype_and_strided_inputs():
    """An fp32 residual stream with bf16 GEMM operands; a and residual as non-contiguous views."""
    t = make_inputs((40,), 48, 64, seed=5, dtype=torch.bfloat16, device=KERNEL_DEVICE)
    a = torch.cat([t["a"], t["a"]], dim=1)[:, ::2]
    residual = t["residual"].float().t().contiguous().t()
    out = kernels.linear_residual(a, t["weight"], t["bias"], t["gamma"], residual)
    assert out.dtype == torch.float32
    assert_close(out, reference.linear_residual(a, t["weight"], t["bias"], t["gamma"], residual), rtol=1e-2)


@needs_kernels
def test_inference_mode_and_empty_rows():
    t = make_inputs((0,), 32, 64, seed=6, device=KERNEL_DEVICE)
    assert kernels.linear_gelu(*gelu_args(t)).shape == (0, 64)
    t = make_inputs((2, 9), 32, 64, seed=6, device=KERNEL_DEVICE)
    with torch.inference_mode():
        out = kernels.linear_residual(*residual_args(t))
    assert_close(out, reference.linear_residual(*residual_args(t)), rtol=1e-5)


@needs_ops
def test_opcheck():
    """Schema, fake implementation and dispatch of both ops agree (runs the kernel where it can)."""
    device = KERNEL_DEVICE if _dispatch.interpreting() or torch.cuda.is_available() else "cpu"
    t = make_inputs((2, 19), 32, 48, seed=9, device=device)
    torch.library.opcheck(torch.ops.sigma_fast.linear_gelu.default, gelu_args(t))
    torch.library.opcheck(torch.ops.sigma_fast.linear_residual.default, residual_args(t))
    t = make_inputs((7,), 32, 48, seed=9, device=device, bias=False, gamma=False)
    torch.library.opcheck(torch.ops.sigma_fast.linear_residual.default, residual_args(t))


@needs_ops
def test_full_graph_compile():
    """torch.compile traces both ops through their fake implementations with no graph break."""
    t = make_inputs((2, 6), 32, 48, seed=10)
    down = make_inputs((2, 6), 48, 32, seed=12)

    def mlp(x, t, down):
        hidden = kernels.linear_gelu(x, t["weight"], t["bias"])
        return kernels.linear_residual(hidden, down["weight"], down["bias"], down["gamma"], x)

    compiled = torch.compile(mlp, backend="aot_eager", fullgraph=True)
    expected = reference.linear_residual(reference.linear_gelu(t["a"], t["weight"], t["bias"]),
                                         down["weight"], down["bias"], down["gamma"], t["a"])
    assert_close(compiled(t["a"], t, down), expected, rtol=1e-5)


BAD_INPUTS = [
    pytest.param(lambda t: {**t, "weight": t["weight"][:, 1:]}, ValueError, "weight", id="K-mismatch"),
    pytest.param(lambda t: {**t, "weight": t["weight"][0]}, ValueError, "weight", id="weight-1d"),
    pytest.param(lambda t: {**t, "bias": t["bias"][1:]}, ValueError, "bias", id="bias-shape"),
    pytest.param(lambda t: {**t, "gamma": t["gamma"][None]}, ValueError, "gamma", id="gamma-shape"),
    pytest.param(lambda t: {**t, "residual": t["residual"][:, 1:]}, ValueError, "residual", id="residual-shape"),
    pytest.param(lambda t: {**t, "weight": t["weight"].double()}, TypeError, "weight", id="weight-dtype"),
    pytest.param(lambda t: {**t, "a": t["a"].long(), "weight": t["weight"].long()}, TypeError, "float",
                 id="integer-operands"),
    pytest.param(lambda t: {**t, "residual": t["residual"].int()}, TypeError, "residual", id="residual-dtype"),
    pytest.param(lambda t: {**t, "bias": t["bias"].to("meta")}, ValueError, "device", id="device-mismatch"),
]


@needs_ops
@pytest.mark.parametrize("corrupt,error,words", BAD_INPUTS)
def test_bad_input_raises_one_line_error(corrupt, error, words):
    t = corrupt(make_inputs((4,), 32, 48, seed=1))
    with pytest.raises(error, match=words) as info:
        kernels.linear_residual(*residual_args(t))
    assert "\n" not in str(info.value)
