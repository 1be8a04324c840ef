"""Shared fixtures. The golden vectors live beside the checkout, in
../shared/golden/ (SPEC: tests may read them there, never copy them)."""

from __future__ import annotations

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
