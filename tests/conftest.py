import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def triton_interpret():
    """True when Triton kernels run in the interpreter on CPU tensors (CI sets TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"
