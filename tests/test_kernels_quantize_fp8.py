"""sigma_fast.kernels.quantize_fp8_rows: the Triton kernel against the PyTorch reference, the
custom op's registration (opcheck, full-graph trace) and the errors on inputs outside the contract.

The kernel runs on CPU tensors under TRITON_INTERPRET=1 (CI) and on CUDA tensors on a GPU. The
interpreter's own fp32 -> e4m3 cast rounds wrongly, so there the kernel rounds in fp32 first
(`quantize_fp8._round_to_e4m3`); `test_e4m3_rounding_edges` checks that rounding against torch's
cast, and the GPU runs the hardware cast through the same tests.
"""
import pytest
import torch

from sigma_fast import kernels
from sigma_fast.kernels import _dispatch, reference

KERNEL_DEVICE = "cpu" if _dispatch.interpreting() else "cuda"
needs_kernels = pytest.mark.skipif(
    not _dispatch.HAS_TRITON or not (_dispatch.interpreting() or torch.cuda.is_available()),
    reason="the Triton kernels need TRITON_INTERPRET=1 (CPU) or a CUDA GPU")
E4M3_STEP = 2.0 ** -3  # spacing of e4m3 values relative to their power of two
E4M3_MIN_STEP = 2.0 ** -9  # spacing of the subnormals


def assert_fp8_close(q, scale, q_ref, scale_ref, *, rtol, exact_fraction):
    """Scales within rtol; dequantised rows within one e4m3 step (plus rtol of the row's absmax)
    of the reference's; at least exact_fraction of the e4m3 values equal to the reference's."""
    assert q.dtype == q_ref.dtype == torch.float8_e4m3fn and q.shape == q_ref.shape
    assert scale.dtype == torch.float32 and scale.shape == scale_ref.shape
    q, q_ref = q.cpu().reshape(-1, q.shape[-1]), q_ref.cpu().reshape(-1, q.shape[-1])
    scale, scale_ref = scale.cpu(), scale_ref.cpu()
    torch.testing.assert_close(scale, scale_ref, rtol=rtol, atol=0.0)
    values, expected = q.float() * scale, q_ref.float() * scale_ref
    assert torch.isfinite(values).all()
    bound = E4M3_STEP * expected.abs() + scale_ref * (E4M3_MIN_STEP + 448.0 * rtol)
    assert ((values - expected).abs() <= bound).all()
    # Compared as values: the sign of a zero is not part of the contract.
    same = (q.float() == q_ref.float()).float().mean().item()
    assert same >= exact_fraction


def make_rows(shape, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=generator) * 3.0 + 0.5
    return x.to(device=KERNEL_DEVICE, dtype=dtype)


CASES = [
    # shape, dtype, apply_gelu
    pytest.param((5, 3072), torch.bfloat16, True, id="fc1-width-bf16-gelu"),
    pytest.param((37, 48), torch.float32, False, id="odd-width-fp32"),
    pytest.param((2, 3, 100), torch.float32, True, id="leading-dims-fp32-gelu"),
    pytest.param((70, 32), torch.bfloat16, False, id="many-rows-bf16"),
]


@needs_kernels
@pytest.mark.parametrize("shape, dtype, apply_gelu", CASES)
def test_matches_reference(shape, dtype, apply_gelu):
    x = make_rows(shape, dtype, seed=len(shape) + shape[-1])
    q, scale = kernels.quantize_fp8_rows(x, apply_gelu=apply_gelu)
    q_ref, scale_ref = reference.quantize_fp8_rows(x.cpu(), apply_gelu)
    assert q.shape == x.shape and scale.shape == (x.numel() // shape[-1], 1)
    # The same fp32 values reach the cast but for the last bit of erf.
    assert_fp8_close(q, scale, q_ref, scale_ref, rtol=1e-6, exact_fraction=0.999)


@needs_kernels
def test_e4m3_rounding_edges():
    """Ties to even, a carry into the next power of two, subnormals, saturation: one row whose
    absmax is 448, so its scale is exactly 1 and the kernel's cast sees these values as they are."""
    edges = [448.0, 0.53125, -0.53125, 0.5625 + 1 / 32, 126.0, -125.0, 3e-3, 2.0 ** -10, 3 * 2.0 ** -10,
             1e-9, 0.0, 15.5, 17.0, 240.0, -447.0]
    x = torch.tensor([edges], device=KERNEL_DEVICE)
    q, scale = kernels.quantize_fp8_rows(x)
    assert scale.item() == 1.0
    expected = torch.tensor([edges]).to(torch.float8_e4m3fn)
    assert q.cpu().view(torch.uint8).tolist() == expected.view(torch.uint8).tolist()


@needs_kernels
def test_zero_row_keeps_a_finite_scale():
    x = torch.zeros(3, 40, device=KERNEL_DEVICE)
    x[1] = torch.linspace(-2.0, 2.0, 40)
    q, scale = kernels.quantize_fp8_rows(x)
    assert scale[0].item() == scale[2].item() == pytest.approx(1e-12 / 448.0)
    assert (q[0].float() == 0).all() and (q[2].float() == 0).all()
    assert q[1].float().abs().max().item() == 448.0


def test_reference_round_trip():
    """The reference's contract: x ~= x_fp8 * scale within e4m3's precision, GELU applied first."""
    x = torch.randn(6, 50, generator=torch.Generator().manual_seed(3)) * 5.0
    for apply_gelu, values in ((False, x), (True, torch.nn.functional.gelu(x))):
        q, scale = reference.quantize_fp8_rows(x, apply_gelu)
        torch.testing.assert_close(scale, values.abs().amax(-1, keepdim=True) / 448.0)
        error = (q.float() * scale - values).abs()
        assert (error <= E4M3_STEP / 2 * values.abs() + scale * E4M3_MIN_STEP).all()


@pytest.mark.parametrize("x, error", [
    (torch.ones(4, 8, dtype=torch.int32), TypeError),
    (torch.tensor(1.0), ValueError),
    (torch.ones(4, 0), ValueError),
])
def test_bad_input(x, error):
    with pytest.raises(error) as info:
        kernels.quantize_fp8_rows(x)
    assert "quantize_fp8_rows" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(not _dispatch.HAS_TRITON, reason="the custom op is registered with the Triton kernels")
@pytest.mark.parametrize("apply_gelu", [False, True])
def test_opcheck(apply_gelu):
    device = KERNEL_DEVICE if torch.cuda.is_available() or _dispatch.interpreting() else "cpu"
    x = torch.randn(9, 24, device=device, dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.sigma_fast.quantize_fp8_rows.default, (x, apply_gelu))


def test_full_graph_trace():
    """torch.compile traces the op without a graph break (its fake implementation gives the shapes)."""
    def fc1_fp8(x):
        return kernels.quantize_fp8_rows(x * 2.0, apply_gelu=True)

    x = torch.randn(2, 5, 24)
    q, scale = torch.compile(fc1_fp8, backend="aot_eager", fullgraph=True)(x)
    q_ref, scale_ref = reference.quantize_fp8_rows(x * 2.0, True)
    assert_fp8_close(q, scale, q_ref, scale_ref, rtol=1e-6, exact_fraction=0.99)


@pytest.mark.gpu
def test_gpu_production_width_bf16():
    x = make_rows((1000, 3072), torch.bfloat16, seed=5).cuda()
    q, scale = kernels.quantize_fp8_rows(x, apply_gelu=True)
    q_ref, scale_ref = reference.quantize_fp8_rows(x, True)
    assert_fp8_close(q, scale, q_ref, scale_ref, rtol=1e-6, exact_fraction=0.999)
