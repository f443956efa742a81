"""Benchmark-run hooks: the card and library versions in pytest-benchmark's machine_info (it has
no GPU of its own), and a JSON even from a run that gpu_check.sh's time limit cut short."""
import pytest
import torch


def pytest_benchmark_update_machine_info(config, machine_info):
    import triton
    import transformers

    machine_info["torch"] = torch.__version__
    machine_info["triton"] = triton.__version__
    machine_info["transformers"] = transformers.__version__
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        machine_info["cuda"] = {"card": properties.name, "memory_mib": properties.total_memory // 2 ** 20,
                                "capability": f"{properties.major}.{properties.minor}",
                                "runtime": torch.version.cuda}


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    # An interrupted benchmark has no rounds, and pytest-benchmark then fails to write any JSON:
    # keep only the benchmarks that finished.
    benchmark_session = getattr(session.config, "_benchmarksession", None)
    if benchmark_session is not None:
        benchmark_session.benchmarks[:] = [bench for bench in benchmark_session.benchmarks if bench]
    yield
