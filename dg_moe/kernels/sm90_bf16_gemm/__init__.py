"""SM90 BF16 GEMM (FP32 accumulation; BF16 or FP32 output, dense also D = C + A @ B^T): the host side of
one kernel family.

- kernel: ``dg_moe/csrc/kernels/sm90_bf16_gemm.cuh`` (numbers shared with Python:
  ``sm90_bf16_gemm_constants.cuh``, read by :mod:`.constants`); scheduler ``dg_moe/csrc/common/scheduler.cuh``,
  the FP8 family's
- host entry (tensor maps, launch): ``dg_moe/csrc/launch/sm90_bf16_gemm.cu``; NVRTC twin :mod:`.cubin_entry`
- :mod:`.launcher`: the public ops' CUDA path (operand rules, config, JIT build, call); :func:`register`
- :mod:`.heuristic`: the cost model that picks tile, stages and B-sharing clusters
- :mod:`.variants`: template arguments of a variant and the variants a set of call shapes needs
- tests: ``tests/test_sm90_bf16_gemm_*.py``
"""

from .heuristic import config_for
from .launcher import register
from .variants import FAMILY, VariantSet, template_args

__all__ = ["FAMILY", "VariantSet", "config_for", "register", "template_args"]
