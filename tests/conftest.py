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


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory):
    """Paths of a tiny random DINOv2 and CLIP text tower (with tokenizer), saved like hub models."""
    from sigma_fast.tiny import build_tiny_encoders

    return build_tiny_encoders(str(tmp_path_factory.mktemp("encoders")))


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_encoders, tmp_path_factory):
    """A saved tiny SIGMA checkpoint folder (config.json + model.safetensors)."""
    from sigma_fast.model import SigmaModel
    from sigma_fast.tiny import tiny_sigma_config

    torch.manual_seed(0)
    model = SigmaModel.from_config(tiny_sigma_config(*tiny_encoders))
    folder = str(tmp_path_factory.mktemp("checkpoint"))
    model.save_pretrained(folder)
    return folder


def random_image(height, width, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
