"""SM90 weight-gradient GEMM, FP32 output accumulated into ``c``, on FP8 operands (recipe (1, 1, 128)) or
BF16 ones (the K-grouped BF16 op): the host side of one kernel family.

- kernel: ``dg_moe/csrc/kernels/sm90_fp8_wgrad.cuh``; host entry (tensor maps, launch):
  ``dg_moe/csrc/launch/sm90_fp8_wgrad.cu``
- :mod:`.launcher`: the public ops' CUDA path (operand and scale layouts, config, JIT build, call); :func:`register`
- :mod:`.heuristic`: the cost model that picks the tile and stages
- :mod:`.variants`: layouts, template arguments, and the variants DeepSeek-V3's weight gradients need
- :mod:`.cubin_entry`: the host entry in Python for NVRTC cubins
- tests: ``tests/test_sm90_fp8_wgrad_*.py``
"""

from .heuristic import WgradConfig, choose_config
from .launcher import register
from .variants import FAMILY, WgradType, config_for, template_args

__all__ = ["FAMILY", "WgradConfig", "WgradType", "choose_config", "config_for", "register", "template_args"]
