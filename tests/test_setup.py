"""setup.py's choice of build: the CUDA toolkit is found behind an nvcc
wrapper, a folder without the runtime library is not taken for a toolkit,
and a forced CUDA build without what it needs stops before compiling."""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _load_setup():
    spec = importlib.util.spec_from_file_location("eplb_setup", REPO / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _script(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _toolkit(root: Path) -> Path:
    """A stand-in toolkit whose nvcc reports its root in a dry run, as nvcc does."""
    _script(root / "bin" / "nvcc", f'echo "#$ _HERE_={root}/bin"\necho "#$ TOP={root}/bin/.."\n')
    (root / "include").mkdir(parents=True)
    (root / "include" / "cuda_runtime.h").write_text("")
    (root / "lib64").mkdir()
    (root / "lib64" / "libcudart.so").write_text("")
    return root


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("CUDA_HOME", "CUDA_PATH", "EPLB_EXT_CUDA"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_toolkit_found_behind_a_wrapper(tmp_path, clean_env):
    setup = _load_setup()
    root = _toolkit(tmp_path / "cuda-99.0")
    # The wrapper's own folder has nvcc but no runtime library: torch's guess
    # (the folder above the nvcc on PATH) would be this one.
    _script(tmp_path / "wrap" / "bin" / "nvcc", f'exec {root}/bin/nvcc "$@"\n')
    clean_env.setenv("PATH", f"{tmp_path / 'wrap' / 'bin'}{os.pathsep}{os.environ['PATH']}")
    assert not setup.is_toolkit(str(tmp_path / "wrap"))
    assert setup.find_toolkit() == (os.path.realpath(root), None)


def test_cuda_home_must_be_a_toolkit(tmp_path, clean_env):
    setup = _load_setup()
    clean_env.setenv("CUDA_HOME", str(tmp_path))
    root, why = setup.find_toolkit()
    assert root is None and f"CUDA_HOME={tmp_path}" in why and "libcudart" in why
    clean_env.setenv("CUDA_HOME", str(_toolkit(tmp_path / "tk")))
    assert setup.find_toolkit()[0] == os.path.realpath(tmp_path / "tk")


def test_cpu_only_build_is_chosen_and_explained(clean_env):
    setup = _load_setup()
    clean_env.setenv("EPLB_EXT_CUDA", "0")
    assert setup.want_cuda() == (False, "EPLB_EXT_CUDA=0")
    clean_env.setenv("EPLB_EXT_CUDA", "yes")
    with pytest.raises(SystemExit, match="EPLB_EXT_CUDA='yes'"):
        setup.want_cuda()


def test_forced_cuda_fails_before_compiling(tmp_path, clean_env):
    # With a CPU torch the torch is what is missing; with a CUDA torch, the
    # toolkit (CUDA_HOME points at an empty folder). Either way: no compiling.
    env = dict(os.environ, EPLB_EXT_CUDA="1", CUDA_HOME=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "setup.py", "--version"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    why = "has no CUDA" if torch.version.cuda is None else "is not a CUDA toolkit root"
    assert "eplb_ext build: EPLB_EXT_CUDA=1 but" in proc.stderr and why in proc.stderr, proc.stderr
