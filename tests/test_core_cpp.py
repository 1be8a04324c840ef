"""Builds the torch-free core (csrc/core) on its own with the host C++
compiler and runs tests/cpp/core_test.cpp: the core must compile without
torch and pass its own hand-checked and randomised tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "tests" / "cpp" / "core_test.cpp"
CORE = REPO / "csrc" / "core"
FLAGS = ["-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", f"-I{REPO}"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]


def _compiler():
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def cxx():
    found = _compiler()
    if found is None:
        pytest.skip("no C++ compiler found (tried $CXX, g++, c++, clang++); cannot build the core test")
    return found


def _build(cxx, out: Path, extra=()):
    cmd = [cxx, *FLAGS, *extra, str(SOURCE), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"compile failed: {' '.join(cmd)}\n{proc.stderr[-4000:]}"
    return proc


def _run(binary: Path, env=None):
    proc = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120, env=env)
    match = re.search(r"^(\d+) passed, (\d+) failed$", proc.stdout, re.MULTILINE)
    assert match, f"no summary line in output:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    passed, failed = int(match.group(1)), int(match.group(2))
    assert proc.returncode == 0 and failed == 0, f"core test failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert passed >= 100, f"only {passed} checks ran"
    return passed


def test_core_headers_do_not_include_torch():
    headers = sorted(CORE.glob("*.h"))
    assert headers, f"no headers under {CORE}"
    for h in headers:
        text = h.read_text()
        includes = re.findall(r'^\s*#\s*include\s*[<"]([^>"]+)[>"]', text, re.MULTILINE)
        for inc in includes:
            assert not inc.startswith(("torch", "ATen", "c10", "cuda")), f"{h.name} includes {inc}"


def test_core_cpp(cxx, tmp_path):
    binary = tmp_path / "core_test"
    proc = _build(cxx, binary)
    assert "warning" not in proc.stderr, proc.stderr[-4000:]
    _run(binary)


def test_core_cpp_sanitized(cxx, tmp_path):
    """The same tests under AddressSanitizer / UBSan: scratch carving, trees
    and index arithmetic stay in bounds and free of undefined behaviour."""
    probe = tmp_path / "probe.cpp"
    probe.write_text("int main() { return 0; }\n")
    ok = subprocess.run([cxx, *SANITIZE, str(probe), "-o", str(tmp_path / "probe")], capture_output=True)
    if ok.returncode != 0:
        pytest.skip(f"{cxx} cannot link -fsanitize=address,undefined here (no sanitizer runtime)")
    binary = tmp_path / "core_test_asan"
    _build(cxx, binary, ["-O1", "-g", *SANITIZE])
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0", UBSAN_OPTIONS="print_stacktrace=1")
    _run(binary, env)
