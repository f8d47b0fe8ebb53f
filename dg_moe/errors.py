"""Exception types raised by dg_moe; each message names the bad input and the fix."""


class DgMoeError(RuntimeError):
    """Base class of every error dg_moe raises on its own behalf."""


class UnsupportedArchitectureError(DgMoeError):
    """A CUDA tensor lives on a GPU whose architecture has no dg_moe kernels (only SM90 has)."""


class KernelNotAvailableError(DgMoeError, NotImplementedError):
    """The op exists and validated its arguments, but its SM90 kernel has not landed yet."""


class ToolchainNotFoundError(DgMoeError):
    """nvcc or the CUTLASS/CuTe headers needed by the JIT could not be found."""


class CompileError(DgMoeError):
    """nvcc rejected a generated kernel source; the message carries the compiler output."""


class CudaError(DgMoeError):
    """A host entry point returned a CUDA error status; the message carries CUDA's own text."""

    def __init__(self, where: str, code: int, text: str):
        super().__init__(f"{where} failed with CUDA error {code}: {text}")
        self.code = code
        self.text = text


class UsageError(DgMoeError, ValueError):
    """A command-line argument is invalid (an unknown model, a malformed token list); the message names the fix."""


class DeviceNotAvailableError(DgMoeError):
    """A command needs a device this machine lacks (e.g. a CUDA GPU under a CPU build of torch)."""
