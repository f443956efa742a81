"""What every fused-kernel test asserts against its PyTorch reference."""
import torch


def assert_close(actual, expected, rtol):
    """Elementwise within rtol of the reference's largest magnitude, same shape and dtype, and every
    element written (no NaN or inf left behind)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    actual, expected = actual.double().cpu(), expected.double().cpu()
    assert torch.isfinite(actual).all()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * expected.abs().max().item())
