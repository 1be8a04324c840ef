"""Shared fixtures. The golden vectors live beside the checkout, in
../shared/golden/ (SPEC: tests may read them there, never copy them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:  # for `import helpers`, whatever the import mode
    sys.path.insert(0, str(_HERE))

from helpers import GOLDEN, GOLDEN_MISSING  # noqa: E402


@pytest.fixture(scope="session")
def golden_path() -> Path:
    """Path of the golden vectors; skips the test if the file is absent."""
    if not GOLDEN.exists():
        pytest.skip(GOLDEN_MISSING)
    return GOLDEN


@pytest.fixture(scope="session")
def golden_cases(golden_path):
    """The 200 golden cases, keyed by name."""
    data = torch.load(golden_path, weights_only=True)
    return {case["name"]: case for case in data["cases"]}


# A raw op given a bad argument raises a C++ exception, which crosses from
# the library into torch. One torch build so far ended the process instead
# (benchmarks/error_probe.py). Tests marked cpp_raises check exactly those
# exceptions; on such a build they are skipped, with the reason, instead of
# taking the test process down with them. The Python API raises before any
# op and is tested everywhere.
_CPP_PROBE = """
import torch, eplb_ext
try:
    torch.ops.eplb_ext.balanced_packing(torch.ones(2, 4), 0)
except RuntimeError as exc:
    print("raised" if "num_packs=0" in str(exc) else "other")
"""


@pytest.fixture(scope="session")
def cpp_errors_reach_python() -> bool:
    """Whether a C++ exception raised by a raw op reaches Python here: probed
    once, in a child interpreter that imports eplb_ext as this one does."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    try:
        probe = subprocess.run([sys.executable, "-c", _CPP_PROBE], capture_output=True, text=True,
                               env=env, timeout=300)
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0 and probe.stdout.strip() == "raised"


@pytest.fixture(autouse=True)
def _cpp_raises_needs_unwinding(request):
    if request.node.get_closest_marker("cpp_raises") is None:
        return
    if not request.getfixturevalue("cpp_errors_reach_python"):
        pytest.skip("this torch build ends the process when a C++ exception leaves an op "
                    "(see benchmarks/error_probe.py); the Python API raises before any op")
