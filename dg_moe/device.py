"""Device queries and the two process-wide knobs DeepGEMM exposes: SM count and tensor-core utilisation."""

from __future__ import annotations

import functools

import torch

from .errors import UnsupportedArchitectureError

SUPPORTED_ARCH = (9, 0)

_num_sms: int | None = None
_tc_util: int = 100


@functools.cache
def _device_properties(index: int):
    return torch.cuda.get_device_properties(index)


def device_capability(device: torch.device) -> tuple[int, int]:
    """Compute capability of a CUDA device, cached per device index."""
    props = _device_properties(_device_index(device))
    return props.major, props.minor


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def require_sm90(device: torch.device, op: str) -> None:
    """Raise UnsupportedArchitectureError unless ``device`` is a Hopper (SM90) GPU."""
    major, minor = device_capability(device)
    if (major, minor) != SUPPORTED_ARCH:
        name = _device_properties(_device_index(device)).name
        raise UnsupportedArchitectureError(
            f"{op}: {device} is {name} (compute capability {major}.{minor}, sm_{major}{minor}); "
            "dg_moe kernels support only SM90 (H100/H200, compute capability 9.0). "
            "Move the tensors to an SM90 GPU, or to the CPU to run the reference implementation."
        )


def set_num_sms(num_sms: int) -> None:
    """Limit the persistent grid of every kernel to ``num_sms`` SMs (e.g. to leave SMs for communication)."""
    if not isinstance(num_sms, int) or isinstance(num_sms, bool) or num_sms <= 0:
        raise ValueError(f"set_num_sms: num_sms must be a positive int, got {num_sms!r}")
    if torch.cuda.is_available():
        available = _device_properties(torch.cuda.current_device()).multi_processor_count
        if num_sms > available:
            raise ValueError(
                f"set_num_sms: num_sms={num_sms} exceeds the {available} SMs of the current GPU"
            )
    global _num_sms
    _num_sms = num_sms


def num_sms_setting() -> int | None:
    """The value given to set_num_sms, or None (every SM): launch plans compare it to the one they saw."""
    return _num_sms


def get_num_sms() -> int:
    """SMs the kernels may use: the value given to set_num_sms, else the current GPU's SM count."""
    if _num_sms is not None:
        return _num_sms
    if not torch.cuda.is_available():
        raise RuntimeError(
            "get_num_sms: no CUDA device is visible and set_num_sms() was never called; "
            "call dg_moe.set_num_sms(n) to choose a count without a GPU"
        )
    return _device_properties(torch.cuda.current_device()).multi_processor_count


def num_sms_for(device: torch.device) -> int:
    """SMs a kernel launched on CUDA ``device`` may use: set_num_sms's value, else that GPU's SM count.
    The launch path's version of :func:`get_num_sms` (no availability check: ``device`` holds tensors)."""
    return _num_sms if _num_sms is not None else _device_properties(_device_index(device)).multi_processor_count


# torch's own raw-stream getter (what torch.cuda.current_stream() wraps in a Stream object, ~3 us per
# call; this is ~0.3 us). Private, so looked up once with the public call as the fallback.
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def stream_handle(device: torch.device) -> int:
    """The cudaStream_t (as an int) of the current stream on CUDA ``device``, for kernel launches."""
    if _raw_stream is not None:
        return _raw_stream(_device_index(device))
    return torch.cuda.current_stream(device).cuda_stream


def set_tc_util(tc_util: int) -> None:
    """Set the tensor-core utilisation (percent, 1..100) the config heuristic plans for."""
    if not isinstance(tc_util, int) or isinstance(tc_util, bool) or not 1 <= tc_util <= 100:
        raise ValueError(f"set_tc_util: tc_util must be an int percentage in [1, 100], got {tc_util!r}")
    global _tc_util
    _tc_util = tc_util


def get_tc_util() -> int:
    """Tensor-core utilisation (percent) the config heuristic plans for; 100 unless set."""
    return _tc_util
