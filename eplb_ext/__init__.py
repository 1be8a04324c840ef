"""eplb_ext: Expert Parallelism Load Balancing for Mixture-of-Experts models,
compiled for CPU and CUDA.

Drop-in for SGLang's ``eplb_algorithms`` (``EplbAlgorithm``,
``compute_algorithm``, ``rebalance_experts``) and, in ``eplb_ext.deepseek``,
DeepSeek's ``eplb.py``. ``eplb_ext.integrations`` installs it into SGLang and
vLLM.
"""

from . import _ops  # noqa: F401  (loads the compiled library)
from .algorithms import EplbAlgorithm, compute_algorithm, rebalance_experts
from .build_info import build_info
from .deepseek import balanced_packing, rebalance_experts_hierarchical, replicate_experts

__all__ = [
    "EplbAlgorithm",
    "compute_algorithm",
    "rebalance_experts",
    "balanced_packing",
    "replicate_experts",
    "rebalance_experts_hierarchical",
    "build_info",
    "__version__",
]

from .build_info import __version__  # noqa: E402
