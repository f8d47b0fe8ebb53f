"""What every `dg-moe` subcommand shares: a parser whose errors are exceptions, argument types, and the
GPU precondition. `dg_moe.cli.main` turns the exceptions into one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
from typing import NoReturn

import torch

from .device import SUPPORTED_ARCH
from .errors import DeviceNotAvailableError, UnsupportedArchitectureError, UsageError


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser that raises UsageError instead of printing its usage and exiting.

    argparse would print two lines of usage before the message and exit from inside the subcommand;
    raising lets the entry point report every user error the same way. ``--help`` still prints and exits 0.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _no_gpu_reason() -> str:
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build"
    return "no CUDA device is visible (check CUDA_VISIBLE_DEVICES and the driver)"


def require_gpu(fix: str, sm90: bool = True, index: int | None = None) -> None:
    """Raise DeviceNotAvailableError without a CUDA GPU (or without GPU ``index``), UnsupportedArchitectureError
    when ``sm90`` and that GPU (default: the current one) is not SM90; ``fix`` ends the message."""
    if not torch.cuda.is_available():
        raise DeviceNotAvailableError(f"needs a CUDA GPU{' (SM90)' if sm90 else ''}, but {_no_gpu_reason()}; {fix}")
    if index is not None and not 0 <= index < torch.cuda.device_count():
        raise DeviceNotAvailableError(f"there is no GPU cuda:{index} ({torch.cuda.device_count()} visible); {fix}")
    if sm90 and torch.cuda.get_device_capability(index) != SUPPORTED_ARCH:
        major, minor = torch.cuda.get_device_capability(index)
        raise UnsupportedArchitectureError(
            f"needs an SM90 GPU (H100/H200), but {torch.cuda.get_device_name(index)} has compute capability "
            f"{major}.{minor}; {fix}"
        )
