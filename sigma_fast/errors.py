"""User errors: typed exceptions with one-line messages, shared by the Python API and the CLI."""
import importlib


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module, extra, what):
    """Import `module`, or raise MissingExtraError: "<what> needs the `[extra]` extra: pip install ..."."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        raise MissingExtraError(f"{what} needs the `[{extra}]` extra ({error.name} is not installed): "
                                f"pip install 'sigma-fast[{extra}]'") from None


def user_errors():
    """The exception types the CLI reports as one line (exit status 2) instead of a traceback."""
    from sigma_fast.io.images import ImageLoadError

    return (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError,
            ValueError, TypeError, ImageLoadError, MissingExtraError, DeviceError)


class DeviceError(ValueError):
    """A device was asked for that this machine does not have."""


def check_device(device):
    """`device` ("cpu", "cuda", "cuda:N" or None) -> None, or DeviceError before any model loads."""
    import torch

    if device is None:
        return
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r}: torch sees no CUDA GPU on this machine; use cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r}: this machine has {torch.cuda.device_count()} GPU(s)")
