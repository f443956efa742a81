"""The SIGMA forward traces as one graph: `torch.compile(fullgraph=True)` (no graph break, which
is also what CUDA-graph capture needs) on the CPU with the reference ops inside the custom ops,
giving the eager result; for the whole model, the difference branch and a refinement block."""
import pytest
import torch

from sigma_fast.grounding.edit import EditTuple
from sigma_fast.kernels import reference
from sigma_fast.model import BiAttentionBlock, DifferenceBranch, SigmaModel


@pytest.fixture(autouse=True)
def fresh_dynamo(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the references: fast and exact
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled(module):
    return torch.compile(module, fullgraph=True, backend="aot_eager")


@pytest.mark.slow
def test_full_model_forward_traces_as_one_graph(tiny_checkpoint):
    model = SigmaModel.from_pretrained(tiny_checkpoint)
    difference = model.difference
    difference.set_noise_stats(torch.rand_like(difference.noise_mean), torch.rand_like(difference.noise_std) + 0.5)
    size = model.config.image_size
    generator = torch.Generator().manual_seed(0)
    x_orig = torch.randn(2, 3, size, size, generator=generator)
    x_edit = x_orig + 0.3 * torch.randn(2, 3, size, size, generator=generator)
    tokens, mask = model.encode_text(["add a red ball", "remove the cat"],
                                     [EditTuple("add", None, "red ball"), EditTuple("remove", "the cat", None)])
    prior = torch.rand(2, model.grid, model.grid, generator=generator)
    with torch.no_grad():
        expected = model(x_orig, x_edit, tokens, mask, prior)
        got = compiled(model)(x_orig, x_edit, tokens, mask, prior)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("training", [False, True], ids=["folded-inference", "training"])
def test_difference_branch_traces_as_one_graph(training):
    torch.manual_seed(0)
    branch = DifferenceBranch(channels=8, num_taps=2, dim=4)
    f_orig = [torch.randn(2, 5, 8) for _ in range(2)]
    f_edit = [0.5 * o + torch.randn(2, 5, 8) for o in f_orig]
    mean, std = reference.feature_diff_stats(f_orig, f_edit)
    branch.set_noise_stats(mean, std)
    branch.train(training)
    with torch.set_grad_enabled(training):
        expected = branch(f_orig, f_edit)
        got = compiled(branch)(f_orig, f_edit)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if training:
        (expected_grad,) = torch.autograd.grad(expected.square().sum(), branch.weight)
        (got_grad,) = torch.autograd.grad(got.square().sum(), branch.weight)
        torch.testing.assert_close(got_grad, expected_grad, rtol=1e-5, atol=1e-5)


def test_refinement_block_traces_as_one_graph_forward_and_backward():
    torch.manual_seed(0)
    block = BiAttentionBlock(dim=16, heads=2, layer_scale_init=1.0)
    visual, text = torch.randn(2, 9, 16), torch.randn(2, 4, 16)
    mask = torch.tensor([[True, True, False, True], [True, False, False, False]])
    prior = torch.rand(2, 9)
    expected = block(visual, text, prior, mask)
    got = compiled(block)(visual, text, prior, mask)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    params = [block.query_visual.weight, block.key_text.weight, block.value_visual.bias, block.value_text.weight]
    expected_grads = torch.autograd.grad(sum(o.square().sum() for o in expected), params)
    got_grads = torch.autograd.grad(sum(o.square().sum() for o in got), params)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
