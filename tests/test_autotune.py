import json

import pytest
import torch

from sigma_fast.model import autotune


@pytest.fixture
def cache_file(tmp_path, monkeypatch):
    path = tmp_path / "autotune.json"
    monkeypatch.setenv(autotune.CACHE_ENV, str(path))
    monkeypatch.setattr(autotune, "_choices", None)  # forget what another test loaded
    return path


def test_cpu_takes_the_first_candidate_without_running_any(cache_file):
    ran = []
    candidates = {"reference": lambda: ran.append("reference"), "other": lambda: ran.append("other")}
    assert autotune.choose("op|(2, 3)", torch.device("cpu"), candidates) == "reference"
    assert ran == [] and not cache_file.exists()


def test_a_remembered_choice_is_taken_from_the_file(cache_file):
    key = f"{autotune.device_key(torch.device('cpu'))}|op|(2, 3)"
    cache_file.write_text(json.dumps({key: "other"}))
    candidates = {"reference": lambda: None, "other": lambda: None}
    assert autotune.choose("op|(2, 3)", torch.device("cpu"), candidates) == "other"
    assert autotune.recorded_choices() == {key: "other"}


def test_a_remembered_choice_that_is_no_candidate_is_ignored(cache_file):
    key = f"{autotune.device_key(torch.device('cpu'))}|op|(2, 3)"
    cache_file.write_text(json.dumps({key: "gone"}))
    assert autotune.choose("op|(2, 3)", torch.device("cpu"), {"reference": lambda: None}) == "reference"


@pytest.mark.gpu
def test_the_fastest_candidate_is_measured_and_remembered(cache_file):
    big = torch.randn(4096, 4096, device="cuda")
    small = torch.randn(64, 64, device="cuda")

    def broken():
        raise RuntimeError("not for this shape")

    candidates = {"slow": lambda: big @ big, "fast": lambda: small @ small, "broken": broken}
    assert autotune.choose("matmul", torch.device("cuda"), candidates) == "fast"
    assert list(json.loads(cache_file.read_text()).values()) == ["fast"]
