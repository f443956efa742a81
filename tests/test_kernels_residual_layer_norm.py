"""sigma_fast.kernels.residual_layer_norm / residual_layer_norm_fp8: the fused block boundary
(x + gamma * y, then LayerNorm) against the PyTorch reference, the custom ops' registration
(opcheck, full-graph trace, inference mode) and the errors on inputs outside the contract.

The kernels run on CPU tensors under TRITON_INTERPRET=1 (CI) and on CUDA tensors on a GPU.
Tolerances: fp32 1e-5 of the largest magnitude; bf16 1e-2 (the interpreter's fp32 -> bf16 cast
truncates where the GPU's and torch's round to nearest, so stored values may differ by one bf16 step).
"""
import pytest
import torch
import torch.nn.functional as F
from test_kernels_quantize_fp8 import assert_fp8_close

from kernel_checks import assert_close
from sigma_fast import kernels
from sigma_fast.kernels import _dispatch, reference

KERNEL_DEVICE = "cpu" if _dispatch.interpreting() else "cuda"
needs_kernels = pytest.mark.skipif(
    not _dispatch.HAS_TRITON or not (_dispatch.interpreting() or torch.cuda.is_available()),
    reason="the Triton kernels need TRITON_INTERPRET=1 (CPU) or a CUDA GPU")
OP_DEVICE = KERNEL_DEVICE if _dispatch.interpreting() or torch.cuda.is_available() else "cpu"
EPS = 1e-6
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def make_inputs(shape, dtype, *, with_y=True, with_gamma=True, seed=0, device=KERNEL_DEVICE):
    """x, y with a large common offset (as ViT residual streams have), gamma, weight, bias."""
    generator = torch.Generator().manual_seed(seed)
    channels = shape[-1]

    def randn(*size):
        return torch.randn(*size, generator=generator)

    x = (randn(*shape) * 2.0 + 3.0).to(device=device, dtype=dtype)
    y = randn(*shape).to(device=device, dtype=dtype) if with_y else None
    gamma = (randn(channels) * 0.5).to(device) if with_gamma else None
    weight = (1.0 + 0.3 * randn(channels)).to(device)
    bias = (0.2 * randn(channels)).to(device)
    return x, y, gamma, weight, bias


CASES = [
    # shape, dtype, with_y, with_gamma
    pytest.param((2, 37, 48), torch.float32, True, True, id="odd-C-fp32"),
    pytest.param((5, 768), torch.bfloat16, True, True, id="vit-width-bf16"),
    pytest.param((70, 64), torch.float32, True, False, id="ragged-rows-no-gamma"),
    pytest.param((3, 9, 32), torch.bfloat16, False, False, id="plain-layer-norm-bf16"),
]


@needs_kernels
@pytest.mark.parametrize("shape, dtype, with_y, with_gamma", CASES)
def test_matches_reference(shape, dtype, with_y, with_gamma):
    inputs = make_inputs(shape, dtype, with_y=with_y, with_gamma=with_gamma, seed=shape[-1])
    x_out, h = kernels.residual_layer_norm(*inputs, EPS)
    x_ref, h_ref = reference.residual_layer_norm(*(t.cpu() if t is not None else None for t in inputs), EPS)
    assert_close(x_out, x_ref, TOLERANCE[dtype])
    assert_close(h, h_ref, TOLERANCE[dtype])
    if not with_y:
        assert x_out is inputs[0]


@needs_kernels
@pytest.mark.parametrize("shape, dtype, with_y, with_gamma", CASES)
def test_fp8_matches_reference(shape, dtype, with_y, with_gamma):
    inputs = make_inputs(shape, dtype, with_y=with_y, with_gamma=with_gamma, seed=shape[-1] + 1)
    x_out, h_fp8, h_scale = kernels.residual_layer_norm_fp8(*inputs, EPS)
    x_ref, h_fp8_ref, h_scale_ref = reference.residual_layer_norm_fp8(
        *(t.cpu() if t is not None else None for t in inputs), EPS)
    assert_close(x_out, x_ref, TOLERANCE[dtype])
    assert h_scale.shape == (x_out.numel() // shape[-1], 1)
    # fp32: the same h up to rounding, so nearly every e4m3 value is the reference's; bf16: x_out
    # may differ by a step (the interpreter truncates), and h with it.
    assert_fp8_close(h_fp8, h_scale, h_fp8_ref, h_scale_ref, rtol=TOLERANCE[dtype],
                     exact_fraction=0.999 if dtype == torch.float32 else 0.5)
    if not with_y:
        assert x_out is inputs[0]


@pytest.mark.skipif(not _dispatch.HAS_TRITON, reason="the custom ops are registered with the Triton kernels")
@pytest.mark.parametrize("op", ["residual_layer_norm", "residual_layer_norm_fp8"])
def test_strided_inputs(op):
    """x a slice of wider rows, y a transposed view: contiguous outputs, as the fake ops promise."""
    x, y, gamma, weight, bias = make_inputs((6, 48), torch.float32, seed=19, device=OP_DEVICE)
    wide_x = torch.cat([x, torch.full_like(x[:, :5], 1e4)], dim=1)[:, :48]
    y_t = y.t().contiguous().t()
    args = (wide_x, y_t, gamma, weight, bias, EPS)
    torch.library.opcheck(getattr(torch.ops.sigma_fast, op).default, args)
    actual = getattr(kernels, op)(*args)
    expected = getattr(reference, op)(x.cpu(), y.cpu(), gamma.cpu(), weight.cpu(), bias.cpu(), EPS)
    assert all(t.is_contiguous() for t in actual)
    assert_close(actual[0], expected[0], 1e-5)
    if op == "residual_layer_norm":
        assert_close(actual[1], expected[1], 1e-5)
    else:
        assert_fp8_close(*actual[1:], *expected[1:], rtol=1e-5, exact_fraction=0.99)


def test_reference_is_the_unfused_block_boundary():
    """The reference's contract, written the way the unfused model computes it."""
    x, y, gamma, weight, bias = make_inputs((4, 6, 40), torch.bfloat16, device="cpu")
    x_out, h = reference.residual_layer_norm(x, y, gamma, weight, bias, EPS)
    expected = (x.float() + gamma * y.float()).to(torch.bfloat16)
    assert torch.equal(x_out, expected)
    assert torch.equal(h, F.layer_norm(expected.float(), (40,), weight, bias, EPS).to(torch.bfloat16))
    x_out, h_fp8, h_scale = reference.residual_layer_norm_fp8(x, y, gamma, weight, bias, EPS)
    h32 = F.layer_norm(expected.float(), (40,), weight, bias, EPS).reshape(-1, 40)
    torch.testing.assert_close(h_scale, h32.abs().amax(-1, keepdim=True) / 448.0)
    torch.testing.assert_close(h_fp8.float().reshape(-1, 40) * h_scale, h32, rtol=2.0 ** -4, atol=1e-3)


@needs_kernels
def test_inference_mode_and_no_grad():
    x, y, gamma, weight, bias = make_inputs((3, 48), torch.float32, seed=7)
    expected = reference.residual_layer_norm(x.cpu(), y.cpu(), gamma.cpu(), weight.cpu(), bias.cpu(), EPS)
    for context in (torch.inference_mode, torch.no_grad):
        with context():
            x_out, h = kernels.residual_layer_norm(x, y, gamma, weight, bias, EPS)
            _, h_fp8, _ = kernels.residual_layer_norm_fp8(x, None, gamma, weight, bias, EPS)
        assert_close(x_out, expected[0], 1e-5)
        assert_close(h, expected[1], 1e-5)
        assert h_fp8.dtype == torch.float8_e4m3fn


BAD_INPUTS = [
    # argument overrides of a good (4, 8) fp32 call, expected error, words in the message
    ({"y": torch.ones(4, 9)}, ValueError, "y must match"),
    ({"y": torch.ones(4, 8, dtype=torch.bfloat16)}, ValueError, "y must match"),
    ({"weight": torch.ones(9)}, ValueError, "weight must be (8,)"),
    ({"gamma": torch.ones(4, 8)}, ValueError, "gamma must be (8,)"),
    ({"bias": torch.ones(8, dtype=torch.int64)}, TypeError, "bias must be a float tensor"),
    ({"x": torch.ones(4, 8, dtype=torch.int32), "y": None}, TypeError, "x must be float32"),
    ({"y": torch.ones(4, 8, device="meta")}, ValueError, "one device"),
]


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16-path", "fp8-path"])
@pytest.mark.parametrize("overrides, error, words", BAD_INPUTS)
def test_bad_input(overrides, error, words, fp8):
    args = {"x": torch.ones(4, 8), "y": torch.ones(4, 8), "gamma": torch.ones(8), "weight": torch.ones(8),
            "bias": torch.zeros(8), "eps": EPS}
    op = kernels.residual_layer_norm_fp8 if fp8 else kernels.residual_layer_norm
    with pytest.raises(error) as info:
        op(**{**args, **overrides})
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(not _dispatch.HAS_TRITON, reason="the custom ops are registered with the Triton kernels")
@pytest.mark.parametrize("op, with_y", [
    ("residual_layer_norm", True), ("layer_norm", False),
    ("residual_layer_norm_fp8", True), ("layer_norm_fp8", False),
])
def test_opcheck(op, with_y):
    x, y, gamma, weight, bias = make_inputs((5, 24), torch.bfloat16, seed=11, device=OP_DEVICE)
    args = (x, y, gamma, weight, bias, EPS) if with_y else (x, weight, bias, EPS)
    torch.library.opcheck(getattr(torch.ops.sigma_fast, op).default, args)


def test_full_graph_trace():
    """torch.compile traces a block boundary chain of the ops without a graph break."""
    def boundaries(x, y, gamma, weight, bias):
        _, h = kernels.residual_layer_norm(x, None, None, weight, bias, EPS)
        x, h = kernels.residual_layer_norm(x, h * 0.5 + y, gamma, weight, bias, EPS)
        x, h_fp8, h_scale = kernels.residual_layer_norm_fp8(x, h, gamma, weight, bias, EPS)
        _, l_fp8, l_scale = kernels.residual_layer_norm_fp8(x, None, None, weight, bias, EPS)
        return x, h_fp8, h_scale, l_fp8, l_scale

    inputs = make_inputs((2, 5, 32), torch.float32, seed=13, device="cpu")
    compiled = torch.compile(boundaries, backend="aot_eager", fullgraph=True)(*inputs)
    x, y, gamma, weight, bias = inputs
    _, h = reference.residual_layer_norm(x, None, None, weight, bias, EPS)
    x, h = reference.residual_layer_norm(x, h * 0.5 + y, gamma, weight, bias, EPS)
    x, h_fp8, h_scale = reference.residual_layer_norm_fp8(x, h, gamma, weight, bias, EPS)
    _, l_fp8, l_scale = reference.residual_layer_norm_fp8(x, None, None, weight, bias, EPS)
    assert_close(compiled[0], x, 1e-5)
    assert_fp8_close(compiled[1], compiled[2], h_fp8, h_scale, rtol=1e-5, exact_fraction=0.99)
    assert_fp8_close(compiled[3], compiled[4], l_fp8, l_scale, rtol=1e-5, exact_fraction=0.99)


@pytest.mark.gpu
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_gpu_vit_shape_bf16(fp8):
    """A 1370-token image at ViT-B width, bf16, on the GPU's own casts."""
    inputs = make_inputs((1370, 768), torch.bfloat16, seed=17, device="cuda")
    expected = (reference.residual_layer_norm_fp8 if fp8 else reference.residual_layer_norm)(*inputs, EPS)
    actual = (kernels.residual_layer_norm_fp8 if fp8 else kernels.residual_layer_norm)(*inputs, EPS)
    assert_close(actual[0], expected[0], 1e-2)
    if fp8:
        assert_fp8_close(*actual[1:], *expected[1:], rtol=1e-2, exact_fraction=0.95)
    else:
        assert_close(actual[1], expected[1], 1e-2)
