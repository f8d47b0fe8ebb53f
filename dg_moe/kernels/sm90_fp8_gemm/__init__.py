"""SM90 FP8 GEMM with (1, 128, 128) block scaling: the host side of one kernel family.

- kernel: ``dg_moe/csrc/kernels/sm90_fp8_gemm.cuh`` (numbers shared with Python:
  ``sm90_fp8_gemm_constants.cuh``, read by :mod:`.constants`); scheduler ``dg_moe/csrc/common/scheduler.cuh``
- host entry (tensor maps, launch): ``dg_moe/csrc/launch/sm90_fp8_gemm.cu``
- :mod:`.launcher`: the public ops' CUDA path (scale layout, config, JIT build, call); :func:`register`
- :mod:`.heuristic`: the cost model that picks tile, stages and multicast
- :mod:`.variants`: template arguments of a variant and the variants a model needs
- tests: ``tests/test_sm90_fp8_gemm_*.py``; design: ``docs/sm90-fp8-gemm.md``; history: ``docs/perf-log.md``
"""

from .constants import GemmType
from .heuristic import GemmConfig, choose_config, config_for
from .launcher import register
from .variants import FAMILY, template_args

__all__ = ["FAMILY", "GemmConfig", "GemmType", "choose_config", "config_for", "register", "template_args"]
