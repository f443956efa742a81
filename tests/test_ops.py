"""sigma_fast.ops: the C++ CPU twins (and, on a GPU, the CUDA kernels) of sigma_fast._C against the
PyTorch references in sigma_fast.ops.reference (uint8 outputs exactly, floats to 1e-5), the dispatch
by device, and the errors on inputs outside the contract."""
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

from sigma_fast import _ext, ops
from sigma_fast.ops import reference

needs_ext = pytest.mark.skipif(not _ext.has_cpu_ops(), reason="sigma_fast._C is not built")
needs_cuda_ops = pytest.mark.skipif(not _ext.has_cuda_ops(), reason="sigma_fast._C is built without CUDA")

ODD_SIZES = [(1, 1), (7, 3000), (4000, 4000)]
MIXED_SIZES = [(512, 512), (333, 517), (518, 518), (600, 200), (1, 1), (2, 1037)]


def random_images(sizes, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=generator) for h, w in sizes]


def random_logits(batch, h, w, seed, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, h, w, generator=generator) * scale


def vae_output(batch, height, width, seed):
    """Decoder outputs that hit every rounding case: exact halves (round to even), both ends of
    [-1, 1], values outside it."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, height, width, generator=generator) * 0.8
    levels = torch.arange(-3, 259, dtype=torch.float32)
    edge = torch.cat([(levels + 0.5) / 127.5 - 1, levels / 127.5 - 1, torch.tensor([-1.0, 1.0, -7.0, 7.0])])
    x.view(-1)[: edge.numel()] = edge
    return x


def assert_postprocess_matches(result, expected, return_probs, exact_masks=True, threshold=0.5):
    masks, scores = result[:2]
    ref_masks, ref_scores, ref_probs = expected
    assert len(masks) == len(ref_masks)
    for mask, ref_mask, ref_prob in zip(masks, ref_masks, ref_probs):
        assert mask.dtype == torch.uint8 and mask.shape == ref_mask.shape
        if exact_masks:
            assert torch.equal(mask, ref_mask)
        else:
            # Only where the reference's probability is within float rounding of the threshold.
            decided = (ref_prob - threshold).abs() > 1e-6
            assert torch.equal(mask[decided], ref_mask[decided])
    torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=1e-5)
    if return_probs:
        assert len(result) == 3
        for prob, ref_prob in zip(result[2], ref_probs):
            assert prob.dtype == torch.float32
            torch.testing.assert_close(prob, ref_prob, atol=1e-5, rtol=1e-5)
    else:
        assert len(result) == 2


# ---- preprocess_pairs ---------------------------------------------------------------------------

@needs_ext
@pytest.mark.parametrize("sizes", [ODD_SIZES, MIXED_SIZES], ids=["odd", "mixed"])
def test_preprocess_matches_reference(sizes):
    originals = random_images(sizes, seed=0)
    editeds = random_images(sizes[::-1], seed=1)
    x_orig, x_edit = ops.preprocess_pairs(originals, editeds)
    ref_orig, ref_edit = reference.preprocess_pairs(originals, editeds)
    assert x_orig.shape == (len(sizes), 3, 518, 518) and x_orig.dtype == torch.float32
    torch.testing.assert_close(x_orig, ref_orig, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_edit, ref_edit, atol=1e-5, rtol=1e-5)


@needs_ext
@pytest.mark.parametrize("size", [1, 37, 224, 777])
def test_preprocess_other_sizes(size):
    images = random_images([(1, 1), (300, 301), (90, 1200)], seed=2)
    out = ops.preprocess_pairs(images, images[::-1], size=size)
    expected = reference.preprocess_pairs(images, images[::-1], size=size)
    for x, ref in zip(out, expected):
        torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-5)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_preprocess_half_precision(dtype):
    images = random_images(MIXED_SIZES[1:4], seed=3)
    x_orig, _ = ops.preprocess_pairs(images, images, dtype=dtype)
    ref32, _ = reference.preprocess_pairs(images, images)
    assert x_orig.dtype == dtype
    # One rounding of the float32 result.
    torch.testing.assert_close(x_orig.float(), ref32, atol=1e-5, rtol=torch.finfo(dtype).eps)


@needs_ext
def test_preprocess_strided_images():
    base = random_images([(64, 96)], seed=4)[0]
    originals = [base[:, ::2], base.transpose(0, 1)]
    editeds = [base[::3], base.flip(0)]
    out = ops.preprocess_pairs(originals, editeds, size=40)
    expected = reference.preprocess_pairs(originals, editeds, size=40)
    for x, ref in zip(out, expected):
        torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-5)


# ---- postprocess_masks --------------------------------------------------------------------------

@needs_ext
@pytest.mark.parametrize("return_probs", [False, True])
@pytest.mark.parametrize("logit_size, sizes, threshold", [
    ((37, 37), ODD_SIZES, 0.5),
    ((518, 518), [(512, 512), (768, 1024), (300, 700)], 0.5),
    ((20, 30), [(45, 61), (10, 10), (1, 999)], 0.3),
    ((8, 8), [(64, 64), (4, 4)], 0.9),
], ids=["odd", "decoder", "small", "high_threshold"])
def test_postprocess_matches_reference(logit_size, sizes, threshold, return_probs):
    logits = random_logits(len(sizes), *logit_size, seed=5)
    result = ops.postprocess_masks(logits, sizes, threshold=threshold, return_probs=return_probs)
    expected = reference.postprocess_masks(logits, sizes, threshold=threshold, return_probs=True)
    assert_postprocess_matches(result, expected, return_probs)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_postprocess_logit_dtypes(dtype):
    logits = random_logits(2, 16, 16, seed=6).to(dtype)
    sizes = [(100, 80), (33, 47)]
    result = ops.postprocess_masks(logits, sizes, return_probs=True)
    assert_postprocess_matches(result, reference.postprocess_masks(logits, sizes, return_probs=True), True)


@needs_ext
def test_postprocess_empty_and_full_masks():
    logits = torch.stack([torch.full((1, 9, 9), -4.0), torch.full((1, 9, 9), 4.0)])
    logits[0, 0, 4, 4] = -1.0
    sizes = [(9, 9), (5, 7)]
    masks, scores = ops.postprocess_masks(logits, sizes)
    assert not masks[0].any() and bool((masks[1] == 255).all())
    expected = reference.postprocess_masks(logits, sizes, return_probs=True)
    assert_postprocess_matches((masks, scores), expected, return_probs=False)
    # An empty mask scores how sure the model is that nothing changed.
    assert scores[0].item() == pytest.approx(1 - torch.sigmoid(torch.tensor(-1.0)).item(), abs=1e-6)


# ---- vae_roundtrip_composite --------------------------------------------------------------------

@needs_ext
@pytest.mark.parametrize("vae_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_vae_quantisation_matches_reference(vae_dtype):
    x_vae = vae_output(2, 40, 50, seed=7).to(vae_dtype)
    assert torch.equal(ops.vae_roundtrip_composite(x_vae), reference.vae_roundtrip_composite(x_vae))


@needs_ext
@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.float64, torch.float16, torch.bool, torch.uint8,
                                        torch.int64])
def test_composite_matches_reference(mask_dtype):
    generator = torch.Generator().manual_seed(8)
    x_vae = vae_output(3, 33, 65, seed=8)
    x_edit = torch.randint(0, 256, (3, 33, 65, 3), dtype=torch.uint8, generator=generator)
    mask = torch.rand(3, 33, 65, generator=generator, dtype=torch.float64)
    mask.view(-1)[:4] = torch.tensor([0.5, 0.5 + 1e-12, 0.5 - 1e-12, 1.0], dtype=torch.float64)
    mask = (mask * 2).to(mask_dtype) if mask_dtype in (torch.uint8, torch.int64) else mask.to(mask_dtype)
    out = ops.vae_roundtrip_composite(x_vae, x_edit, mask)
    assert out.shape == (3, 33, 65, 3) and out.dtype == torch.uint8
    assert torch.equal(out, reference.vae_roundtrip_composite(x_vae, x_edit, mask))


# ---- inputs outside the contract: the same error from the compiled ops and the reference --------

IMAGE = torch.zeros(4, 5, 3, dtype=torch.uint8)
BAD_CALLS = {
    "float_image": ("preprocess_pairs", ([IMAGE.float()], [IMAGE]), TypeError, r"originals\[0\]: expected dtype uint8"),
    "four_channels": ("preprocess_pairs", ([IMAGE], [torch.zeros(4, 5, 4, dtype=torch.uint8)]), ValueError,
                      r"editeds\[0\]: expected shape \(H, W, 3\)"),
    "gray_image": ("preprocess_pairs", ([IMAGE[..., 0]], [IMAGE]), ValueError, r"expected shape \(H, W, 3\)"),
    "empty_image": ("preprocess_pairs", ([IMAGE[:0]], [IMAGE]), ValueError, r"empty image"),
    "empty_list": ("preprocess_pairs", ([], []), ValueError, r"originals: empty list of images"),
    "mismatched_lists": ("preprocess_pairs", ([IMAGE, IMAGE], [IMAGE]), ValueError,
                         r"2 originals but 1 edited images"),
    "not_a_tensor": ("preprocess_pairs", ([IMAGE.numpy()], [IMAGE]), TypeError, r"expected a torch.Tensor"),
    "logits_3d": ("postprocess_masks", (torch.zeros(2, 4, 4), [(4, 4)] * 2), ValueError,
                  r"logits must be a \(B, 1, h, w\) tensor"),
    "logits_2_channels": ("postprocess_masks", (torch.zeros(1, 2, 4, 4), [(4, 4)]), ValueError,
                          r"logits must be a \(B, 1, h, w\) tensor"),
    "integer_logits": ("postprocess_masks", (torch.zeros(1, 1, 4, 4, dtype=torch.int32), [(4, 4)]), TypeError,
                       r"logits must be floating point"),
    "mismatched_sizes": ("postprocess_masks", (torch.zeros(2, 1, 4, 4), [(4, 4)]), ValueError,
                         r"2 logit maps but 1 sizes"),
    "zero_size": ("postprocess_masks", (torch.zeros(1, 1, 4, 4), [(0, 4)]), ValueError, r"invalid output size"),
    "empty_batch": ("postprocess_masks", (torch.zeros(0, 1, 4, 4), []), ValueError, r"logits must not be empty"),
    "vae_4_channels": ("vae_roundtrip_composite", (torch.zeros(1, 4, 8, 8),), ValueError, r"x_vae must be \(B, 3, H, W\)"),
    "edit_without_mask": ("vae_roundtrip_composite", (torch.zeros(1, 3, 8, 8), torch.zeros(1, 8, 8, 3, dtype=torch.uint8)),
                          ValueError, r"x_edit and edit_mask go together"),
    "float_edit": ("vae_roundtrip_composite", (torch.zeros(1, 3, 8, 8), torch.zeros(1, 8, 8, 3), torch.zeros(1, 8, 8)),
                   ValueError, r"x_edit must be uint8"),
    "mask_shape": ("vae_roundtrip_composite", (torch.zeros(1, 3, 8, 8), torch.zeros(1, 8, 8, 3, dtype=torch.uint8),
                                               torch.zeros(1, 8, 9)), ValueError, r"edit_mask must be"),
}


@pytest.mark.parametrize("implementation", ["reference", "dispatched"])
@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_inputs_outside_the_contract(case, implementation):
    name, args, error, message = BAD_CALLS[case]
    function = getattr(reference if implementation == "reference" else ops, name)
    with pytest.raises(error, match=message):
        function(*args)


# pybind11 rejects a non-tensor before the op runs (its own TypeError); the wrappers route it to the reference.
COMPILED_BAD_CALLS = sorted(case for case in BAD_CALLS if case != "not_a_tensor")


@needs_ext
@pytest.mark.parametrize("case", COMPILED_BAD_CALLS)
def test_compiled_ops_check_their_inputs(case):
    name, args, error, message = BAD_CALLS[case]
    with pytest.raises(error, match=message):
        getattr(_ext._C, name)(*args)


@needs_ext
def test_compiled_ops_check_size_and_dtype():
    with pytest.raises(TypeError, match="dtype must be a floating point type, got Int"):
        _ext._C.preprocess_pairs([IMAGE], [IMAGE], 518, torch.int32)
    with pytest.raises(ValueError, match="size must be positive, got -3"):
        _ext._C.preprocess_pairs([IMAGE], [IMAGE], -3)
    with pytest.raises(ValueError, match=r"output size \(70000, 40000\) has 2\^31 pixels or more"):
        _ext._C.postprocess_masks(torch.zeros(1, 1, 4, 4), [(70000, 40000)])


@needs_ext
def test_compiled_error_messages_do_not_crash_the_process():
    """Every bad call of the compiled ops in a fresh interpreter: a crash while formatting a message
    (as g++ 13 builds did, SIGSEGV in std::ostream::_M_insert<long>) fails here instead of killing
    the test session."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_ops import BAD_CALLS, COMPILED_BAD_CALLS
        from sigma_fast import _ext
        for case in COMPILED_BAD_CALLS:
            name, args, error, message = BAD_CALLS[case]
            try:
                getattr(_ext._C, name)(*args)
            except error as raised:
                assert re.search(message, str(raised)), (case, str(raised))
            else:
                raise AssertionError(case + ": no error")
        print("ok", len(COMPILED_BAD_CALLS))
    """)
    result = subprocess.run([sys.executable, "-c", "import re\n" + script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"exit status {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.stdout.strip() == f"ok {len(COMPILED_BAD_CALLS)}"


def test_csrc_checks_build_messages_without_streams():
    """TORCH_CHECK with several message parts formats them through an ostringstream; csrc/check.h's
    SF_CHECK* concatenate a std::string instead (see its comment), so csrc uses only those."""
    csrc = Path(__file__).parents[1] / "csrc"
    offenders = [f"{path.relative_to(csrc)}:{number}"
                 for path in sorted(csrc.rglob("*")) if path.suffix in (".cpp", ".cu", ".h") and path.name != "check.h"
                 for number, line in enumerate(path.read_text().splitlines(), 1) if "TORCH_CHECK" in line]
    assert offenders == []


# ---- dispatch -----------------------------------------------------------------------------------

def fake_extension(calls, with_cuda=False):
    def record(name, result):
        def op(*args):
            calls.append(name)
            return result
        return op
    return types.SimpleNamespace(
        with_cuda=with_cuda,
        preprocess_pairs=record("preprocess_pairs", ("x_orig", "x_edit")),
        postprocess_masks=record("postprocess_masks", ("masks", "scores", "probs")),
        vae_roundtrip_composite=record("vae_roundtrip_composite", "composited"),
    )


def test_cpu_tensors_go_to_the_cpp_ops(monkeypatch):
    calls = []
    monkeypatch.setattr(_ext, "_C", fake_extension(calls))
    assert ops.preprocess_pairs([IMAGE], [IMAGE]) == ("x_orig", "x_edit")
    assert ops.postprocess_masks(torch.zeros(1, 1, 4, 4), [(4, 4)]) == ("masks", "scores")
    assert ops.postprocess_masks(torch.zeros(1, 1, 4, 4), [(4, 4)], return_probs=True) == ("masks", "scores", "probs")
    assert ops.vae_roundtrip_composite(torch.zeros(1, 3, 4, 4)) == "composited"
    assert calls == ["preprocess_pairs", "postprocess_masks", "postprocess_masks", "vae_roundtrip_composite"]


def test_without_the_extension_the_references_run(monkeypatch):
    monkeypatch.setattr(_ext, "_C", None)
    x_orig, _ = ops.preprocess_pairs([IMAGE], [IMAGE], size=8)
    torch.testing.assert_close(x_orig, reference.preprocess_pairs([IMAGE], [IMAGE], size=8)[0])
    masks, scores = ops.postprocess_masks(torch.zeros(1, 1, 4, 4), [(6, 6)])
    assert masks[0].shape == (6, 6) and scores.shape == (1,)


class CudaTensor(torch.Tensor):
    """A CPU tensor that says it lives on the GPU: enough for the dispatch decision."""
    device = property(lambda self: torch.device("cuda", 0))


def test_cuda_tensors_need_the_cuda_ops(monkeypatch):
    cuda_tensor = torch.zeros(1).as_subclass(CudaTensor)
    monkeypatch.setattr(_ext, "_C", fake_extension([], with_cuda=False))
    assert ops._compiled_ops(torch.zeros(1)) is _ext._C
    assert ops._compiled_ops(cuda_tensor) is None
    assert ops._compiled_ops(torch.empty(1, device="meta")) is None
    monkeypatch.setattr(_ext, "_C", fake_extension([], with_cuda=True))
    assert ops._compiled_ops(cuda_tensor) is _ext._C


# ---- CUDA kernels against the references on the GPU --------------------------------------------

# nvcc contracts the resampling's multiply-adds into FMAs and sums the taps in another order than
# torch's kernels: normalised values then differ by up to ~1.2e-4 (H200, 2026-11-27), under 1% of a
# grey level (1 / 255 / 0.225 = 0.017). 5e-4 keeps a wrong tap or weight (>= 1e-2) a failure.
GPU_ATOL = 5e-4

@pytest.mark.gpu
@needs_cuda_ops
@pytest.mark.parametrize("sizes", [ODD_SIZES + MIXED_SIZES, [(512, 512)] * 64], ids=["mixed", "batch64"])
def test_cuda_preprocess_matches_reference(sizes):
    originals = [image.cuda() for image in random_images(sizes, seed=10)]
    editeds = [image.cuda() for image in random_images(sizes[::-1], seed=11)]
    x_orig, x_edit = ops.preprocess_pairs(originals, editeds)
    ref_orig, ref_edit = reference.preprocess_pairs(originals, editeds)
    assert x_orig.is_cuda and x_orig.shape == (len(sizes), 3, 518, 518)
    torch.testing.assert_close(x_orig, ref_orig, atol=GPU_ATOL, rtol=0)
    torch.testing.assert_close(x_edit, ref_edit, atol=GPU_ATOL, rtol=0)
    b_orig, b_edit = ops.preprocess_pairs(originals, editeds, dtype=torch.bfloat16)
    assert b_orig.dtype == torch.bfloat16
    torch.testing.assert_close(b_orig.float(), ref_orig, atol=GPU_ATOL, rtol=torch.finfo(torch.bfloat16).eps)
    torch.testing.assert_close(b_edit.float(), ref_edit, atol=GPU_ATOL, rtol=torch.finfo(torch.bfloat16).eps)
    cpu_orig, _ = ops.preprocess_pairs([image.cpu() for image in originals], [image.cpu() for image in editeds])
    torch.testing.assert_close(x_orig.cpu(), cpu_orig, atol=GPU_ATOL, rtol=0)


@pytest.mark.gpu
@needs_cuda_ops
@pytest.mark.parametrize("return_probs", [False, True])
@pytest.mark.parametrize("logit_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("logit_side", [37, 518], ids=["small", "decoder"])
def test_cuda_postprocess_matches_reference(return_probs, logit_dtype, logit_side):
    sizes = ODD_SIZES + MIXED_SIZES
    logits = random_logits(len(sizes), logit_side, logit_side, seed=12).to(logit_dtype).cuda()
    logits[1] = -6.0  # an empty mask
    result = ops.postprocess_masks(logits, sizes, return_probs=return_probs)
    assert result[0][0].is_cuda and result[1].is_cuda
    expected = reference.postprocess_masks(logits, sizes, return_probs=True)
    # nvcc may fuse the multiply-adds of torch's kernel differently: a probability can then differ
    # by one float32 step, which flips a mask pixel only where it sits on the threshold.
    assert_postprocess_matches(result, expected, return_probs, exact_masks=False)


@pytest.mark.gpu
@needs_cuda_ops
@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.bool, torch.float16])
def test_cuda_composite_matches_reference(mask_dtype):
    generator = torch.Generator().manual_seed(13)
    x_vae = vae_output(4, 257, 130, seed=13).cuda()
    x_edit = torch.randint(0, 256, (4, 257, 130, 3), dtype=torch.uint8, generator=generator).cuda()
    mask = torch.rand(4, 257, 130, generator=generator).to(mask_dtype).cuda()
    assert torch.equal(ops.vae_roundtrip_composite(x_vae), reference.vae_roundtrip_composite(x_vae))
    assert torch.equal(ops.vae_roundtrip_composite(x_vae.bfloat16()), reference.vae_roundtrip_composite(x_vae.bfloat16()))
    out = ops.vae_roundtrip_composite(x_vae, x_edit, mask)
    assert out.is_cuda
    assert torch.equal(out, reference.vae_roundtrip_composite(x_vae, x_edit, mask))
