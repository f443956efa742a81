"""sigma_fast.kernels.bi_attention: the fused Triton kernel against the PyTorch reference (both
outputs and the gradients of q_v, k_t, v_v, v_t and prior_bias), the dispatch by device, and the
errors on inputs outside the contract.

The kernel runs on CPU tensors under TRITON_INTERPRET=1 (CI) and on CUDA tensors on a GPU. It walks
N in blocks of 64 (16 to 64 on a GPU) split over 1 to 4 programs per (batch, head), so cases with
N > 64 merge partials from several splits. fp32 tolerances: outputs to 1e-5 relative; gradients to
2e-5 (k_t, v_t and the prior's sum over heads add up blocks in another order).
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


def make_inputs(batch, heads, tokens, text_len, head_dim, *, seed, prior=True, mask=True,
                dtype=torch.float32, device=KERNEL_DEVICE, heads_last=False):
    """Random q_v, k_t, v_v, v_t, a log-prior bias and a text mask with padding at random places
    (every sequence keeps its first token). `heads_last` builds q_v and v_v as the model does:
    (B, N, H*d) projections viewed as (B, H, N, d), so they are not contiguous."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    def visual():
        if heads_last:
            return randn(batch, tokens, heads * head_dim).unflatten(-1, (heads, head_dim)).transpose(1, 2)
        return randn(batch, heads, tokens, head_dim)

    inputs = {
        "q_v": visual() * 2.0,
        "k_t": randn(batch, heads, text_len, head_dim),
        "v_v": visual(),
        "v_t": randn(batch, heads, text_len, head_dim),
        "prior_bias": torch.log(torch.rand(batch, tokens, generator=generator).clamp_min(1e-4)).to(device)
        if prior else None,
        "text_mask": None,
    }
    if mask:
        text_mask = torch.rand(batch, text_len, generator=generator) > 0.3
        text_mask[:, 0] = True
        inputs["text_mask"] = text_mask.to(device)
    return inputs


def check_against_reference(inputs, scale=None, device=KERNEL_DEVICE):
    """Both outputs and all gradients of the fused op against the reference, on random output grads."""
    names = [name for name in ("q_v", "k_t", "v_v", "v_t", "prior_bias") if inputs[name] is not None]
    generator = torch.Generator().manual_seed(99)
    grads_out = None
    results = []
    for fn in (kernels.bi_attention, reference.bi_attention):
        leaves = dict(inputs)
        for name in names:
            leaves[name] = inputs[name].detach().clone().requires_grad_()
        o_v, o_t = fn(**leaves, scale=scale)
        if grads_out is None:
            grads_out = [torch.randn(o.shape, generator=generator).to(o) for o in (o_v, o_t)]
        grads = torch.autograd.grad((o_v, o_t), [leaves[name] for name in names], grads_out)
        results.append((o_v, o_t, grads))
    (o_v, o_t, grads), (ref_o_v, ref_o_t, ref_grads) = results
    assert o_v.device.type == device
    assert_close(o_v, ref_o_v, rtol=1e-5)
    assert_close(o_t, ref_o_t, rtol=1e-5)
    for name, grad, ref_grad in zip(names, grads, ref_grads):
        assert grad.dtype == inputs[name].dtype, name
        assert_close(grad, ref_grad, rtol=2e-5)


CASES = [
    # batch, heads, tokens, text_len, head_dim, prior, mask
    pytest.param(2, 2, 37, 5, 32, True, True, id="ragged-N-prior-mask"),
    pytest.param(1, 3, 300, 1, 32, False, False, id="one-text-token-two-N-blocks"),
    pytest.param(2, 1, 70, 20, 64, True, False, id="prior-only-d64"),
    pytest.param(1, 2, 33, 7, 128, False, True, id="mask-only-d128"),
    pytest.param(1, 1, 20, 128, 32, True, True, id="128-text-tokens"),
    pytest.param(1, 2, 200, 96, 32, True, True, id="96-text-tokens-four-splits"),
]


@needs_kernels
@pytest.mark.parametrize("batch,heads,tokens,text_len,head_dim,prior,mask", CASES)
def test_outputs_and_gradients_match_reference(batch, heads, tokens, text_len, head_dim, prior, mask):
    inputs = make_inputs(batch, heads, tokens, text_len, head_dim, seed=tokens + text_len, prior=prior, mask=mask)
    check_against_reference(inputs)


@needs_kernels
def test_strided_heads_and_explicit_scale():
    inputs = make_inputs(2, 4, 45, 9, 32, seed=5, heads_last=True)
    assert not inputs["q_v"].is_contiguous()
    check_against_reference(inputs, scale=0.3)


@needs_kernels
def test_padded_text_rows_are_zero_and_a_zero_prior_is_finite():
    inputs = make_inputs(2, 2, 300, 6, 32, seed=6)
    inputs["text_mask"][0, 3:] = False
    # A prior of exactly zero over whole splits of N (three splits of two, two and one blocks of 64
    # tokens in the interpreter): -inf logits the online softmax and the merge must skip.
    inputs["prior_bias"][:, :260] = float("-inf")
    o_v, o_t = kernels.bi_attention(**inputs)
    assert torch.isfinite(o_v).all() and torch.isfinite(o_t).all()
    assert (o_t[0, :, 3:] == 0).all()
    ref_o_v, ref_o_t = reference.bi_attention(**inputs)
    assert_close(o_v, ref_o_v, rtol=1e-5)
    assert_close(o_t, ref_o_t, rtol=1e-5)


@needs_kernels
@pytest.mark.parametrize("splits", [1, 2, 3])
def test_every_split_count_merges_to_the_reference(splits):
    # N = 300 is five blocks of 64: two or three splits leave a shorter last one.
    fused = importlib.import_module("sigma_fast.kernels.bi_attention")
    inputs = make_inputs(2, 2, 300, 40, 32, seed=11, heads_last=True)
    args = (inputs["q_v"], inputs["k_t"], inputs["v_v"], inputs["v_t"], inputs["prior_bias"], inputs["text_mask"])
    kernel_args = (*args[:5], fused._kernel_mask(inputs["text_mask"]))  # the op hands the kernels an int8 mask
    o_v, o_t, lse = fused._forward(*kernel_args, 0.2, splits=splits)
    for out, ref in zip((o_v, o_t, lse), fused.reference_forward(*args, 0.2)):
        assert_close(out, ref, rtol=1e-5)
    generator = torch.Generator().manual_seed(12)
    grad_o_v, grad_o_t = (torch.randn(t.shape, generator=generator) for t in (o_v, o_t))  # (B, N, H, d), (B, H, T, d)
    grads = fused._backward(*kernel_args, o_t, lse, grad_o_v.transpose(1, 2), grad_o_t, 0.2, True, splits=splits)
    ref_dq, ref_dk, ref_dvv, ref_dvt, ref_dprior = fused.reference_backward(
        *args, grad_o_v.transpose(1, 2), grad_o_t, 0.2)
    for grad, ref in zip(grads, (ref_dq.transpose(1, 2), ref_dk, ref_dvv.transpose(1, 2), ref_dvt, ref_dprior)):
        assert_close(grad, ref, rtol=2e-5)


@pytest.mark.skipif(not _dispatch.HAS_TRITON, reason="triton is not installed")
def test_split_plan_fills_the_gpu_with_two_to_four_splits():
    fused = importlib.import_module("sigma_fast.kernels.bi_attention")
    # Production: 32 or 64 pairs x 8 heads, N = 1369 in 22 blocks of 64, 132 SMs, one program per SM.
    for pairs in (32, 64):
        assert fused._split_plan(pairs * 8, 1369, 64, torch.device("cpu"), None) == (2, 11)
    for programs in (1, 7, 100, 300, 1000):
        for n_blocks in range(1, 12):
            splits = fused._num_splits(programs, n_blocks, 132)
            assert splits == 1 if n_blocks == 1 else 2 <= splits <= min(4, n_blocks)
    # Explicit splits: every block in one split, none empty.
    assert fused._split_plan(4, 300, 64, torch.device("cpu"), 2) == (2, 3)
    assert fused._split_plan(4, 300, 64, torch.device("cpu"), 4) == (3, 2)
    assert fused._split_plan(4, 50, 64, torch.device("cpu"), 3) == (1, 1)


def _poison_kernels(monkeypatch):
    """Make any launch of the Triton kernels (or, without Triton, of the custom op) fail."""
    def refuse(*args, **kwargs):
        raise AssertionError("the fused kernel was called")

    monkeypatch.setattr(kernels, "fused_bi_attention", refuse, raising=False)


def _poison_launchers(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a Triton kernel was launched")

    fused = importlib.import_module("sigma_fast.kernels.bi_attention")
    monkeypatch.setattr(fused, "_forward", refuse)
    monkeypatch.setattr(fused, "_backward", refuse)


@pytest.mark.skipif(not _dispatch.HAS_TRITON, reason="triton is not installed")
def test_cpu_tensors_run_the_op_on_the_reference_without_the_interpreter(monkeypatch):
    # The custom op runs on CPU tensors too (so graphs trace the same everywhere), with the
    # reference forward and the hand-written reference backward inside.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _poison_launchers(monkeypatch)
    inputs = make_inputs(1, 2, 10, 3, 16, seed=1, device="cpu")
    for fused, expected in zip(kernels.bi_attention(**inputs), reference.bi_attention(**inputs)):
        torch.testing.assert_close(fused, expected, rtol=0, atol=0)
    check_against_reference(make_inputs(2, 2, 37, 5, 32, seed=2, device="cpu", heads_last=True), device="cpu")


def test_without_triton_everything_uses_the_reference(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_dispatch, "HAS_TRITON", False)
    monkeypatch.setattr(kernels, "HAS_TRITON", False)
    _poison_kernels(monkeypatch)
    kernels.bi_attention(**make_inputs(1, 2, 10, 3, 16, seed=2, device="cpu"))


@pytest.mark.skipif(not _dispatch.HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("prior,mask", [(True, True), (False, False)], ids=["prior-mask", "plain"])
def test_custom_ops_pass_opcheck(prior, mask):
    # The Triton kernels under TRITON_INTERPRET=1 (or on a GPU), the references otherwise.
    fused = importlib.import_module("sigma_fast.kernels.bi_attention")
    inputs = make_inputs(1, 2, 21, 5, 16, seed=9, prior=prior, mask=mask, heads_last=True, device=OP_DEVICE)
    for name in ("q_v", "k_t", "v_v", "v_t", "prior_bias"):
        if inputs[name] is not None:
            inputs[name].requires_grad_()
    args = (inputs["q_v"], inputs["k_t"], inputs["v_v"], inputs["v_t"], inputs["prior_bias"], inputs["text_mask"], 0.25)
    torch.library.opcheck(fused.bi_attention_op, args)
    o_v, o_t, lse = fused.bi_attention_op(*args)
    grads = [torch.randn_like(o_v), torch.randn_like(o_t)]
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    torch.library.opcheck(fused.bi_attention_backward_op, (*detached[:6], o_t.detach(), lse.detach(), *grads, 0.25, prior))


@needs_kernels
def test_kernel_log_sum_exp_and_heads_last_output_match_the_reference():
    fused = importlib.import_module("sigma_fast.kernels.bi_attention")
    inputs = make_inputs(2, 2, 37, 5, 32, seed=10, heads_last=True)
    inputs["text_mask"][1, 1:] = False
    args = (inputs["q_v"], inputs["k_t"], inputs["v_v"], inputs["v_t"], inputs["prior_bias"], inputs["text_mask"], 0.2)
    o_v, o_t, lse = fused.bi_attention_op(*args)
    ref_o_v, ref_o_t, ref_lse = fused.reference_forward(*args)
    assert o_v.shape == (2, 37, 2, 32) and o_v.is_contiguous()
    assert_close(o_v, ref_o_v, rtol=1e-5)
    assert_close(lse, ref_lse, rtol=1e-5)
    public_o_v, _ = kernels.bi_attention(**inputs)
    assert public_o_v.shape == (2, 2, 37, 32) and public_o_v.transpose(1, 2).is_contiguous()


@pytest.mark.skipif(not _dispatch.HAS_TRITON, reason="triton is not installed")
def test_interpreter_sends_cpu_tensors_to_the_kernel_up_to_128_text_tokens(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls = []
    monkeypatch.setattr(kernels, "fused_bi_attention", lambda *args: calls.append("fused"))
    kernels.bi_attention(**make_inputs(1, 1, 10, 128, 16, seed=3, device="cpu"))
    assert calls == ["fused"]
    # Longer text does not fit the kernel's registers: the reference answers instead.
    kernels.bi_attention(**make_inputs(1, 1, 10, 129, 16, seed=3, device="cpu"))
    assert calls == ["fused"]


@needs_kernels
def test_errors_on_inputs_outside_the_contract():
    inputs = make_inputs(2, 2, 10, 4, 16, seed=4)
    fused = importlib.import_module("sigma_fast.kernels.bi_attention")
    with pytest.raises(ValueError, match="k_t and v_t must be"):
        kernels.bi_attention(**{**inputs, "k_t": inputs["k_t"][:, :, :, :8]})
    with pytest.raises(ValueError, match="v_v must match"):
        kernels.bi_attention(**{**inputs, "v_v": inputs["v_v"][:, :, :5]})
    with pytest.raises(ValueError, match="prior_bias must be"):
        kernels.bi_attention(**{**inputs, "prior_bias": inputs["prior_bias"][:, :5]})
    with pytest.raises(ValueError, match="text_mask must be a bool"):
        kernels.bi_attention(**{**inputs, "text_mask": inputs["text_mask"].float()})
    with pytest.raises(TypeError, match="share one dtype"):
        kernels.bi_attention(**{**inputs, "v_t": inputs["v_t"].double()})
    with pytest.raises(ValueError, match="1 to 128 text tokens"):
        fused.fused_bi_attention(**make_inputs(1, 1, 10, 129, 16, seed=4))
    with pytest.raises(ValueError, match="one device"):
        kernels.bi_attention(**{**inputs, "prior_bias": inputs["prior_bias"].to("meta")})


def relative_error(actual, expected):
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def check_half_precision(inputs, tolerance):
    """Both outputs and the gradients against the reference on the same half-precision inputs."""
    names = ["q_v", "k_t", "v_v", "v_t", "prior_bias"]
    for name in names:
        inputs[name] = inputs[name].detach().requires_grad_()
    outs = kernels.bi_attention(**inputs)
    expected = reference.bi_attention(**inputs)
    grads_out = [torch.randn(o.shape, generator=torch.Generator().manual_seed(7)).to(o) for o in outs]
    for out, ref in zip(outs, expected):
        assert out.dtype == inputs["q_v"].dtype and relative_error(out, ref) < tolerance
    grads = torch.autograd.grad(outs, [inputs[n] for n in names], grads_out)
    ref_grads = torch.autograd.grad(expected, [inputs[n] for n in names], grads_out)
    for name, grad, ref in zip(names, grads, ref_grads):
        assert grad.dtype == inputs[name].dtype and relative_error(grad, ref) < 2 * tolerance, name


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    # Half-precision loads, casts and stores; in the interpreter the dots run in fp32 (its bf16
    # dot is broken), on a GPU on the tensor cores.
    check_half_precision(make_inputs(2, 2, 37, 5, 32, seed=8, dtype=dtype), tolerance=1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("batch,heads,tokens,text_len,head_dim,prior,mask", CASES)
def test_fp32_compiled_kernel_on_gpu(batch, heads, tokens, text_len, head_dim, prior, mask):
    # The compiled kernel walks N in blocks of 16 (exact fp32 dots on FMA units) over several
    # splits: N = 301 leaves a ragged last block.
    inputs = make_inputs(batch, heads, 301, text_len, head_dim, seed=text_len, prior=prior, mask=mask,
                         device="cuda", heads_last=True)
    check_against_reference(inputs, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim,text_len", [(32, 32), (32, 96), (64, 77), (128, 128)])
def test_half_precision_on_gpu_matches_reference(dtype, head_dim, text_len):
    # The reference computes in fp32 from the same half-precision inputs; the kernel feeds
    # half-precision probabilities to the tensor cores.
    inputs = make_inputs(4, 8, 1369, text_len, head_dim, seed=head_dim, dtype=dtype, device="cuda", heads_last=True)
    check_half_precision(inputs, tolerance=1e-2)
