"""sigma_fast.kernels.feature_diff / feature_diff_stats: the fused Triton kernels against the
PyTorch references (forward, gradients of the projection and the calibration inputs, stats), the
dispatch by device, and the errors on inputs outside the contract.

The kernels run on CPU tensors under TRITON_INTERPRET=1 (CI) and on CUDA tensors on a GPU. fp32
tolerances: outputs to 1e-5 relative; gradients to 2e-5 (sums over all tokens, in another order).
"""
import importlib

import pytest
import torch

from kernel_checks import assert_close
from sigma_fast import kernels
from sigma_fast.kernels import _dispatch, reference

KERNEL_DEVICE = "cpu" if _dispatch.interpreting() else "cuda"
needs_kernels = pytest.mark.skipif(
    not _dispatch.HAS_TRITON or not (_dispatch.interpreting() or torch.cuda.is_available()),
    reason="the Triton kernels need TRITON_INTERPRET=1 (CPU) or a CUDA GPU")
# Where the custom ops run their Triton kernels if they can, else CPU (their references).
OP_DEVICE = KERNEL_DEVICE if _dispatch.interpreting() or torch.cuda.is_available() else "cpu"


def make_inputs(batch, tokens, channels, dim, taps, *, seed, dtype=torch.float32, device=KERNEL_DEVICE,
                offset=0.0, whiten=(True, True, True)):
    """Random taps of both images (the edited ones partly correlated with the originals), and a
    random projection; `whiten` says which of bias, noise_mean, noise_std to give."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    f_orig = [randn(batch, tokens, channels) * 2.0 + offset for _ in range(taps)]
    f_edit = [0.6 * o + randn(batch, tokens, channels) + offset * 0.5 for o in f_orig]
    features = 2 * channels + 1
    params = {
        "weight": randn(taps, features, dim) * features ** -0.5,
        "bias": randn(dim) if whiten[0] else None,
        "noise_mean": randn(taps, features) * 0.3 if whiten[1] else None,
        "noise_std": torch.rand(taps, features, generator=generator) + 0.5 if whiten[2] else None,
    }
    move = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    params = {name: None if p is None else p.to(device) for name, p in params.items()}
    return [move(t) for t in f_orig], [move(t) for t in f_edit], params


CASES = [
    # batch, tokens, channels, dim, taps, (bias, noise_mean, noise_std)
    pytest.param(2, 37, 33, 40, 3, (True, True, True), id="ragged-odd-C-whitened"),
    pytest.param(1, 70, 16, 16, 1, (False, False, False), id="two-token-blocks-plain"),
    pytest.param(3, 5, 24, 24, 2, (False, True, False), id="mean-only"),
    pytest.param(2, 9, 7, 300, 2, (True, False, True), id="std-only-wide-D"),
    pytest.param(1, 20, 150, 24, 1, (True, True, True), id="two-channel-chunks"),
]


def check_forward(batch, tokens, channels, dim, taps, whiten, device=KERNEL_DEVICE):
    f_orig, f_edit, params = make_inputs(batch, tokens, channels, dim, taps, seed=tokens + dim, whiten=whiten,
                                         device=device)
    out = kernels.feature_diff(f_orig, f_edit, **params)
    assert out.device.type == device
    assert_close(out, reference.feature_diff(f_orig, f_edit, **params), rtol=1e-5)


def check_gradients(batch, tokens, channels, dim, taps, whiten, device=KERNEL_DEVICE):
    f_orig, f_edit, params = make_inputs(batch, tokens, channels, dim, taps, seed=7, whiten=whiten, device=device)
    names = [name for name, p in params.items() if p is not None]
    grad_out = torch.randn(batch, tokens, dim, generator=torch.Generator().manual_seed(8)).to(device)

    def grads(fn):
        leaves = {name: p.clone().requires_grad_() if p is not None else None for name, p in params.items()}
        out = fn(f_orig, f_edit, **leaves)
        return torch.autograd.grad(out, [leaves[name] for name in names], grad_out)

    for name, fused, expected in zip(names, grads(kernels.feature_diff), grads(reference.feature_diff)):
        assert fused.dtype == params[name].dtype, name
        assert_close(fused, expected, rtol=2e-5)


def check_stats(batch, tokens, channels, taps, device=KERNEL_DEVICE):
    f_orig, f_edit, _ = make_inputs(batch, tokens, channels, 16, taps, seed=channels, offset=5.0, device=device)
    mean, std = kernels.feature_diff_stats(f_orig, f_edit)
    ref_mean, ref_std = reference.feature_diff_stats(f_orig, f_edit)
    assert mean.shape == std.shape == (taps, 2 * channels + 1)
    assert_close(mean, ref_mean, rtol=1e-5)
    assert_close(std, ref_std, rtol=1e-5)


@needs_kernels
@pytest.mark.parametrize("batch,tokens,channels,dim,taps,whiten", CASES)
def test_forward_matches_reference(batch, tokens, channels, dim, taps, whiten):
    check_forward(batch, tokens, channels, dim, taps, whiten)


@needs_kernels
def test_forward_strided_taps_and_large_channel_means():
    # Taps as a backbone hands them over: patch tokens sliced off a (B, 1 + N, C) tensor with the
    # class token first. Channel means of 100 against a spread of 2 would cancel a one-pass
    # variance by ~3e-4; LayerNorm ignores the offset, and subtracting it back is exact in fp32,
    # so the reference on the centred taps is the oracle (tolerance: the offset taps' own rounding).
    offset = 100.0
    f_orig, f_edit, params = make_inputs(2, 41, 20, 24, 2, seed=3)
    with_class_token = lambda t: torch.cat([t[:, :1] * 0, t + offset], dim=1)[:, 1:]  # noqa: E731
    shifted_orig, shifted_edit = [with_class_token(t) for t in f_orig], [with_class_token(t) for t in f_edit]
    assert not shifted_orig[0].is_contiguous()
    out = kernels.feature_diff(shifted_orig, shifted_edit, **params)
    expected = reference.feature_diff([t - offset for t in shifted_orig], [t - offset for t in shifted_edit], **params)
    assert_close(out, expected, rtol=2e-5)


GRAD_CASES = [
    pytest.param(2, 37, 33, 40, 3, (True, True, True), id="ragged-whitened"),
    pytest.param(1, 70, 16, 24, 2, (True, False, False), id="two-token-blocks-unwhitened"),
    pytest.param(1, 20, 150, 300, 1, (True, True, True), id="two-channel-chunks-wide-D"),
]


@needs_kernels
@pytest.mark.parametrize("batch,tokens,channels,dim,taps,whiten", GRAD_CASES)
def test_gradients_match_reference(batch, tokens, channels, dim, taps, whiten):
    check_gradients(batch, tokens, channels, dim, taps, whiten)


@needs_kernels
def test_gradient_of_weight_alone_and_no_grad_forward():
    f_orig, f_edit, params = make_inputs(2, 37, 33, 40, 2, seed=11)
    weight = params.pop("weight").requires_grad_()
    out = kernels.feature_diff(f_orig, f_edit, weight, **params)
    (fused_grad,) = torch.autograd.grad(out, weight, torch.ones_like(out))
    ref_weight = weight.detach().clone().requires_grad_()
    ref_out = reference.feature_diff(f_orig, f_edit, ref_weight, **params)
    (ref_grad,) = torch.autograd.grad(ref_out, ref_weight, torch.ones_like(ref_out))
    assert_close(fused_grad, ref_grad, rtol=2e-5)
    with torch.no_grad():
        assert not kernels.feature_diff(f_orig, f_edit, weight, **params).requires_grad


@needs_kernels
def test_persistent_forward_walks_several_tiles_per_program():
    # More (token tile, output tile) pairs than programs: each program loops over tiles, ragged in
    # tokens (the last tile spans an image boundary and ends early) and in D, with the token stats
    # written once per token tile.
    fused = importlib.import_module("sigma_fast.kernels.feature_diff")
    batch, tokens, channels, dim = 3, 150, 16, 200
    block_d = fused._block_d(dim, _dispatch.dot_config(torch.float32)[0], max_block_d=fused.FORWARD_BLOCK_D)
    tiles = -(-batch * tokens // fused.FORWARD_BLOCK_M) * -(-dim // block_d)
    assert tiles > fused._num_sms(torch.device(KERNEL_DEVICE)) and dim % block_d
    f_orig, f_edit, params = make_inputs(batch, tokens, channels, dim, 2, seed=17, offset=2.0)
    out, stats = fused.feature_diff_op(f_orig, f_edit, *params.values(), True)
    assert_close(out, reference.feature_diff(f_orig, f_edit, **params), rtol=1e-5)
    assert_close(stats, fused.reference_token_stats(f_orig, f_edit), rtol=1e-5)


@needs_kernels
@pytest.mark.parametrize("batch,tokens,channels,taps", [(2, 37, 33, 3), (3, 100, 12, 1), (1, 30, 150, 1)],
                         ids=["one-block", "three-blocks-ragged", "two-channel-chunks"])
def test_stats_match_reference(batch, tokens, channels, taps):
    check_stats(batch, tokens, channels, taps)


def _poison_fused(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the fused kernel was called")

    monkeypatch.setattr(kernels, "fused_feature_diff", refuse, raising=False)
    monkeypatch.setattr(kernels, "fused_feature_diff_stats", refuse, raising=False)


def _poison_launchers(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a Triton kernel was launched")

    fused = importlib.import_module("sigma_fast.kernels.feature_diff")
    for name in ("_forward", "_weight_grad", "_stats"):
        monkeypatch.setattr(fused, name, refuse)


@pytest.mark.skipif(not _dispatch.HAS_TRITON, reason="triton is not installed")
def test_cpu_tensors_run_the_ops_on_the_reference_without_the_interpreter(monkeypatch):
    # The custom ops run on CPU tensors too (so graphs trace the same everywhere), with the
    # reference forward, stats and weight gradient inside.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _poison_launchers(monkeypatch)
    f_orig, f_edit, params = make_inputs(1, 5, 6, 8, 2, seed=1, device="cpu")
    torch.testing.assert_close(kernels.feature_diff(f_orig, f_edit, **params),
                               reference.feature_diff(f_orig, f_edit, **params), rtol=0, atol=0)
    for stat, expected in zip(kernels.feature_diff_stats(f_orig, f_edit), reference.feature_diff_stats(f_orig, f_edit)):
        torch.testing.assert_close(stat, expected, rtol=0, atol=0)
    check_gradients(2, 37, 33, 40, 3, (True, True, True), device="cpu")


def test_without_triton_everything_uses_the_reference(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_dispatch, "HAS_TRITON", False)
    monkeypatch.setattr(kernels, "HAS_TRITON", False)
    _poison_fused(monkeypatch)
    f_orig, f_edit, params = make_inputs(1, 5, 6, 8, 1, seed=2, device="cpu")
    kernels.feature_diff(f_orig, f_edit, **params)
    kernels.feature_diff_stats(f_orig, f_edit)


@pytest.mark.skipif(not _dispatch.HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("whiten", [(True, True, True), (False, False, False)], ids=["whitened", "plain"])
def test_custom_ops_pass_opcheck(whiten):
    # The Triton kernels under TRITON_INTERPRET=1 (or on a GPU), the references otherwise.
    fused = importlib.import_module("sigma_fast.kernels.feature_diff")
    f_orig, f_edit, params = make_inputs(2, 9, 8, 16, 2, seed=14, whiten=whiten, device=OP_DEVICE)
    params = {name: p.requires_grad_() if p is not None else None for name, p in params.items()}
    torch.library.opcheck(fused.feature_diff_op, (f_orig, f_edit, *params.values(), True))
    torch.library.opcheck(fused.feature_diff_op, (f_orig, f_edit, *params.values(), False),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.skipif(not _dispatch.HAS_TRITON, reason="triton is not installed")
def test_backward_and_stats_ops_pass_opcheck():
    fused = importlib.import_module("sigma_fast.kernels.feature_diff")
    f_orig, f_edit, params = make_inputs(2, 9, 8, 16, 2, seed=16, device=OP_DEVICE)
    out, stats = fused.feature_diff_op(f_orig, f_edit, *params.values(), True)
    torch.library.opcheck(fused.feature_diff_weight_grad_op, (f_orig, f_edit, stats, params["noise_mean"],
                                                             params["noise_std"], torch.randn_like(out)))
    torch.library.opcheck(fused.feature_diff_stats_op, (f_orig, f_edit))


@needs_kernels
def test_kernel_token_stats_match_the_reference():
    # The (L, 5, B*N) stats the forward saves for the backward: LayerNorm moments and 1 - cos.
    fused = importlib.import_module("sigma_fast.kernels.feature_diff")
    f_orig, f_edit, params = make_inputs(2, 37, 33, 16, 2, seed=15, offset=3.0)
    _, stats = fused.feature_diff_op(f_orig, f_edit, *params.values(), True)
    assert_close(stats, fused.reference_token_stats(f_orig, f_edit), rtol=1e-5)


@pytest.mark.skipif(not _dispatch.HAS_TRITON, reason="triton is not installed")
def test_interpreter_sends_cpu_tensors_to_the_kernels(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls = []
    monkeypatch.setattr(kernels, "fused_feature_diff", lambda *args: calls.append("fused"))
    f_orig, f_edit, params = make_inputs(1, 5, 6, 8, 1, seed=3, device="cpu")
    kernels.feature_diff(f_orig, f_edit, **params)
    assert calls == ["fused"]


@needs_kernels
def test_taps_that_require_grad_take_the_reference_path():
    f_orig, f_edit, params = make_inputs(1, 6, 8, 8, 1, seed=4)
    tap = f_orig[0].clone().requires_grad_()
    out = kernels.feature_diff([tap], f_edit, **params)
    (grad,) = torch.autograd.grad(out.sum(), tap)
    assert grad.abs().sum() > 0


@needs_kernels
def test_errors_on_inputs_outside_the_contract():
    f_orig, f_edit, params = make_inputs(1, 6, 8, 8, 2, seed=5)
    fused = importlib.import_module("sigma_fast.kernels.feature_diff")
    with pytest.raises(ValueError, match="weight must be"):
        kernels.feature_diff(f_orig, f_edit, params["weight"][:1])
    with pytest.raises(ValueError, match="same non-zero number of taps"):
        kernels.feature_diff(f_orig, f_edit[:1], params["weight"])
    with pytest.raises(ValueError, match="one shape and dtype"):
        kernels.feature_diff([f_orig[0], f_orig[1][:, :3]], f_edit, params["weight"])
    with pytest.raises(ValueError, match="noise_std must be"):
        kernels.feature_diff(f_orig, f_edit, params["weight"], noise_std=params["noise_std"][:, 1:])
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        fused.fused_feature_diff([t.double() for t in f_orig], [t.double() for t in f_edit], params["weight"])
    with pytest.raises(ValueError, match="one device"):
        kernels.feature_diff(f_orig, f_edit, params["weight"].to("meta"))


def relative_error(actual, expected):
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_taps(dtype):
    # Half-precision loads, casts and stores; in the interpreter the dots run in fp32 (its bf16
    # dot is broken), on a GPU on the tensor cores. The output is rounded to `dtype`.
    f_orig, f_edit, params = make_inputs(2, 37, 33, 40, 2, seed=12, dtype=dtype)
    params["weight"].requires_grad_()
    out = kernels.feature_diff(f_orig, f_edit, **params)
    expected = reference.feature_diff(f_orig, f_edit, **params)
    assert out.dtype == dtype and relative_error(out, expected) < 1e-2
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(13)).to(out)
    (grad,) = torch.autograd.grad(out, params["weight"], grad_out)
    (ref_grad,) = torch.autograd.grad(expected, params["weight"], grad_out)
    assert grad.dtype == torch.float32 and relative_error(grad, ref_grad) < 1e-2


@pytest.mark.gpu
def test_fp32_compiled_kernels_on_gpu():
    # The compiled kernels take other blocks than the interpreter (32 channels per chunk, 256 or
    # 128 outputs per program, token splits): ragged in all of them, exact fp32 dots.
    check_forward(2, 37, 33, 40, 3, (True, True, True), device="cuda")
    check_forward(3, 301, 100, 300, 2, (True, True, True), device="cuda")
    check_gradients(3, 301, 100, 300, 2, (True, True, True), device="cuda")
    check_gradients(2, 37, 33, 40, 1, (False, True, False), device="cuda")
    check_stats(3, 301, 100, 2, device="cuda")


@pytest.mark.gpu
def test_folded_bf16_inference_on_gpu_matches_reference():
    # What DifferenceBranch runs in eval mode: bf16 taps sliced off the backbone's (B, 1 + N, C)
    # hidden states, the folded bf16 projection and bias, no whitening vectors; enough pairs for
    # more tiles than SMs, so every program of the persistent grid loops.
    f_orig, f_edit, params = make_inputs(8, 1370, 768, 256, 3, seed=22, dtype=torch.bfloat16, device="cuda",
                                         whiten=(True, False, False))
    f_orig, f_edit = [t[:, 1:] for t in f_orig], [t[:, 1:] for t in f_edit]
    weight, bias = params["weight"].bfloat16(), params["bias"].bfloat16()
    with torch.no_grad():
        out = kernels.feature_diff(f_orig, f_edit, weight, bias)
    expected = reference.feature_diff(f_orig, f_edit, weight, bias)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all() and relative_error(out, expected) < 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_on_gpu_matches_reference(dtype):
    # Production widths (C=768, D=256, 3 taps) at a small batch; the reference computes in fp32 from
    # the same half-precision taps, the kernel rounds d to `dtype` for the tensor cores.
    f_orig, f_edit, params = make_inputs(2, 1369, 768, 256, 3, seed=21, dtype=dtype, device="cuda")
    params = {name: p.requires_grad_() for name, p in params.items()}
    grad_out = torch.randn(2, 1369, 256, device="cuda", dtype=dtype)
    out = kernels.feature_diff(f_orig, f_edit, **params)
    expected = reference.feature_diff(f_orig, f_edit, **params)
    assert out.dtype == dtype
    rel = relative_error
    assert rel(out, expected) < 1e-2
    fused_grads = torch.autograd.grad(out, list(params.values()), grad_out)
    ref_grads = torch.autograd.grad(expected, list(params.values()), grad_out)
    for name, fused, ref in zip(params, fused_grads, ref_grads):
        assert rel(fused, ref) < 1e-2, name
    mean, std = kernels.feature_diff_stats(f_orig, f_edit)
    ref_mean, ref_std = reference.feature_diff_stats(f_orig, f_edit)
    assert rel(mean, ref_mean) < 1e-4 and rel(std, ref_std) < 1e-4
