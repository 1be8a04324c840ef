"""Build script: compiles csrc/ into eplb_ext/_C (one library, stable ABI).

Environment:
  EPLB_EXT_CUDA=0/1      force a CPU-only build / force CUDA (fails if it cannot)
  TORCH_CUDA_ARCH_LIST   CUDA architectures (default "8.0;9.0;10.0+PTX")
  MAX_JOBS, NVCC_THREADS parallel compile jobs / nvcc threads per job
  EPLB_EXT_SANITIZE=1    CPU build under AddressSanitizer + UBSan (for tests)
  EPLB_EXT_LINEINFO=1    CUDA line tables (-lineinfo) for source-level profiles;
                         the device code generated is the same
"""

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
BASE_VERSION = "0.1.0"
# The stable ABI version the library is compiled against: it loads in every
# torch from 2.10 on.
TORCH_TARGET = "0x020a000000000000"
DEFAULT_ARCHS = "8.0;9.0;10.0+PTX"
CUDA_HOW = (
    "for the CUDA kernels install a CUDA build of torch and a CUDA toolkit (set CUDA_HOME to its root), "
    "or pass EPLB_EXT_CUDA=0 to build for the CPU only"
)


def is_toolkit(root):
    """A usable toolkit root has nvcc, the runtime headers and the runtime
    library that the link step needs (a wrapper's folder has only nvcc)."""
    if not root:
        return False
    libs = [os.path.join(root, d, "libcudart.so") for d in ("lib64", "lib", "targets/x86_64-linux/lib",
                                                          "targets/sbsa-linux/lib")]
    return (
        os.path.isfile(os.path.join(root, "bin", "nvcc"))
        and os.path.isfile(os.path.join(root, "include", "cuda_runtime.h"))
        and any(os.path.exists(p) for p in libs)
    )


def nvcc_root(nvcc):
    """The toolkit an nvcc runs from, as nvcc itself reports it (TOP in the
    listing of a dry run, which reads no file): right even when nvcc on PATH
    is a wrapper script."""
    try:
        dry = [nvcc, "--dryrun", "-c", os.path.join(ROOT, "none.cu")]
        out = subprocess.run(dry, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (out.stdout + out.stderr).splitlines():
        m = re.match(r"#\$ TOP=(.*)$", line.strip())
        if m:
            return os.path.realpath(m.group(1))
    return os.path.realpath(os.path.join(os.path.dirname(os.path.realpath(nvcc)), ".."))


def find_toolkit():
    """Returns (root, None) or (None, why not). CUDA_HOME / CUDA_PATH, when
    set, must be a toolkit; otherwise the nvcc on PATH is asked where it
    lives, then the usual install folders are tried."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        given = os.environ.get(var)
        if given:
            if is_toolkit(given):
                return os.path.realpath(given), None
            return None, f"{var}={given} is not a CUDA toolkit root (needs bin/nvcc, include/cuda_runtime.h, libcudart)"
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(nvcc_root(nvcc))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True) + ["/opt/cuda"]
    for root in candidates:
        if is_toolkit(root):
            return os.path.realpath(root), None
    return None, "no CUDA toolkit found (no nvcc on PATH, nothing in /usr/local/cuda*)"


def want_cuda():
    """Decides the build before anything compiles; with EPLB_EXT_CUDA=1 a
    missing piece stops the build at once."""
    flag = os.environ.get("EPLB_EXT_CUDA", "").strip()
    if flag not in ("", "0", "1"):
        raise SystemExit(f"EPLB_EXT_CUDA={flag!r}: use 0 (CPU only) or 1 (CUDA)")
    if flag == "0":
        return False, "EPLB_EXT_CUDA=0"
    import torch

    if torch.version.cuda is None:
        why = f"torch {torch.__version__} has no CUDA"
    else:
        root, why = find_toolkit()
        if root is not None:
            # torch.utils.cpp_extension reads CUDA_HOME once, when imported.
            os.environ["CUDA_HOME"] = root
            return True, None
    if flag == "1":
        raise SystemExit(f"eplb_ext build: EPLB_EXT_CUDA=1 but {why}; {CUDA_HOW}")
    return False, why


def toolkit_version():
    out = subprocess.check_output([os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc"), "--version"], text=True)
    major, minor = re.search(r"release (\d+)\.(\d+)", out).groups()
    return f"{major}.{minor}"


def main():
    cuda, why_not = want_cuda()
    import torch
    from torch.utils import cpp_extension

    sources = sorted(glob.glob("csrc/ops/*.cpp") + glob.glob("csrc/ops/cpu/*.cpp"))
    common = ["-DTORCH_TARGET_VERSION=" + TORCH_TARGET]
    # -fno-wrapv undoes the -fwrapv of Python's own CFLAGS, which blocks vectorising
    # the step loops; -ffp-contract=off: no FMA, so every float op rounds alone.
    cxx = ["-O3", "-std=c++17", "-fno-wrapv", "-ffp-contract=off", "-fvisibility=hidden"] + common
    extra = {"cxx": cxx}
    link = []
    if os.environ.get("EPLB_EXT_SANITIZE") == "1":
        # For the test suite under AddressSanitizer + UBSan (CPU build only):
        # any UB report aborts the process.
        if cuda:
            raise SystemExit("eplb_ext build: EPLB_EXT_SANITIZE=1 needs EPLB_EXT_CUDA=0")
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]
        cxx += san
        link += san
    if cuda:
        archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
        sources += sorted(glob.glob("csrc/ops/cuda/*.cu"))
        # USE_CUDA exposes the CUDA part of torch's C shim (the current stream).
        # --fmad=false: no fused multiply-add, so every float op rounds as on the CPU.
        extra["nvcc"] = [
            "-O3",
            "-std=c++17",
            "--fmad=false",
            "-Xcompiler",
            "-ffp-contract=off",
            "-DUSE_CUDA",
            "--threads",
            os.environ.get("NVCC_THREADS", "2"),
        ] + common
        if os.environ.get("EPLB_EXT_LINEINFO") == "1":
            extra["nvcc"].append("-lineinfo")
        cuda_version = toolkit_version()
        local = "cu" + cuda_version.replace(".", "")
        ext_cls = cpp_extension.CUDAExtension
    else:
        archs, cuda_version, local = "", None, "cpu"
        ext_cls = cpp_extension.CppExtension

    with open(os.path.join(ROOT, "eplb_ext", "_build_info.py"), "w") as f:
        f.write("# Written by setup.py at build time.\n")
        f.write(f"CUDA_VERSION = {cuda_version!r}\n")
        f.write(f"CUDA_ARCHS = {archs!r}\n")
        f.write(f"TORCH_TARGET_VERSION = {TORCH_TARGET!r}\n")
        f.write(f"BUILT_WITH_TORCH = {torch.__version__!r}\n")
    if cuda:
        what = f"CUDA {cuda_version} from {cpp_extension.CUDA_HOME}, archs {archs} (compiling takes minutes)"
    else:
        what = f"CPU only ({why_not}; {CUDA_HOW})" if why_not != "EPLB_EXT_CUDA=0" else "CPU only (EPLB_EXT_CUDA=0)"
    print(
        f"eplb_ext build: {what}; torch {torch.__version__}; stable ABI target {TORCH_TARGET}; "
        f"MAX_JOBS={os.environ.get('MAX_JOBS', 'auto')}",
        file=sys.stderr,
        flush=True,
    )

    setup(
        name="eplb_ext",
        version=f"{BASE_VERSION}+{local}",
        packages=find_packages(include=["eplb_ext", "eplb_ext.*"]),
        ext_modules=[
            ext_cls(
                "eplb_ext._C",
                sources,
                extra_compile_args=extra,
                extra_link_args=link,
                py_limited_api=True,
            )
        ],
        cmdclass={"build_ext": cpp_extension.BuildExtension},
        options={"bdist_wheel": {"py_limited_api": "cp310"}},
    )


if __name__ == "__main__":
    main()
