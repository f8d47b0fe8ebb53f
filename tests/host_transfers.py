"""A record of the host transfers a piece of code asks torch for, so CPU tests can show that a CUDA path
neither reads a device value on the host (a synchronisation) nor builds a tensor from host data on the
device (a copy that synchronises the stream and breaks CUDA-graph capture). Run the code on ``meta``
tensors: they stand for device tensors, and carry no values for a read to return."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

# Methods and functions that hand a tensor's values to Python, synchronising when the tensor is on a GPU.
_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy", "nonzero", "unique",
          "masked_select"}
_FROM_HOST = {"tensor", "as_tensor"}


def _off_cpu(device: object) -> bool:
    return device is not None and torch.device(device).type != "cpu"


class HostTransfers(TorchFunctionMode):
    """Inside ``with HostTransfers() as seen``, ``seen.calls`` lists (name, device) of every value read off a
    non-CPU tensor and every tensor made from host data on a non-CPU device."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in _READS and args and isinstance(args[0], torch.Tensor) and args[0].device.type != "cpu":
            self.calls.append((name, str(args[0].device)))
        elif name in _FROM_HOST and _off_cpu(kwargs.get("device")):
            self.calls.append((name, str(kwargs["device"])))
        return func(*args, **kwargs)
