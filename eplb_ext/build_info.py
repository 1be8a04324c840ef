"""What this copy of eplb_ext was built with."""

from __future__ import annotations

from typing import Dict, Optional

import torch

try:
    from importlib.metadata import PackageNotFoundError, version as _dist_version
except ImportError:  # pragma: no cover
    _dist_version = None

try:
    from . import _build_info as _info
except ImportError:  # a source tree whose setup.py has not run
    _info = None


def _version() -> str:
    try:
        return _dist_version("eplb_ext") if _dist_version else "unknown"
    except PackageNotFoundError:
        return "0.1.0+local"


__version__ = _version()


def build_info() -> Dict[str, Optional[str]]:
    """The package version, the CUDA toolkit and architectures it was compiled
    for (None/"" for a CPU-only build), the stable-ABI torch version it
    targets, the torch it was built with, and the torch it runs with."""
    ops = torch.ops.eplb_ext
    has_cuda_kernels = torch._C._dispatch_has_kernel_for_dispatch_key(
        ops.deepseek.default.name(), "CUDA"
    )
    return {
        "version": __version__,
        "cuda_version": getattr(_info, "CUDA_VERSION", None),
        "cuda_archs": getattr(_info, "CUDA_ARCHS", ""),
        "torch_target_version": getattr(_info, "TORCH_TARGET_VERSION", None),
        "built_with_torch": getattr(_info, "BUILT_WITH_TORCH", None),
        "runtime_torch": torch.__version__,
        "cuda_kernels": str(bool(has_cuda_kernels)),
    }
