"""Build script: compiles csrc/ into eplb_ext/_C (one library, stable ABI).

Environment:
  EPLB_EXT_CUDA=0/1      force a CPU-only build / force CUDA (fails if it cannot)
  TORCH_CUDA_ARCH_LIST   CUDA architectures (default "8.0;9.0;10.0+PTX")
  MAX_JOBS, NVCC_THREADS parallel compile jobs / nvcc threads per job
"""

import glob
import os
import re
import subprocess

from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
BASE_VERSION = "0.1.0"
# The stable ABI version the library is compiled against: it loads in every
# torch from 2.10 on.
TORCH_TARGET = "0x020a000000000000"
DEFAULT_ARCHS = "8.0;9.0;10.0+PTX"


def want_cuda():
    flag = os.environ.get("EPLB_EXT_CUDA", "").strip()
    import torch

    have_torch_cuda = torch.version.cuda is not None
    have_toolkit = cpp_extension.CUDA_HOME is not None and os.path.exists(
        os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
    )
    if flag == "0":
        return False
    if flag == "1":
        if not have_torch_cuda:
            raise SystemExit("EPLB_EXT_CUDA=1 but this torch has no CUDA (torch.version.cuda is None)")
        if not have_toolkit:
            raise SystemExit("EPLB_EXT_CUDA=1 but no CUDA toolkit was found; set CUDA_HOME")
        return True
    return have_torch_cuda and have_toolkit


def toolkit_version():
    out = subprocess.check_output([os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc"), "--version"], text=True)
    major, minor = re.search(r"release (\d+)\.(\d+)", out).groups()
    return f"{major}.{minor}"


def main():
    import torch

    cuda = want_cuda()
    sources = sorted(glob.glob("csrc/ops/*.cpp") + glob.glob("csrc/ops/cpu/*.cpp"))
    common = ["-DTORCH_TARGET_VERSION=" + TORCH_TARGET]
    # -fno-wrapv undoes the -fwrapv of Python's own CFLAGS, which blocks vectorising
    # the step loops; -ffp-contract=off: no FMA, so every float op rounds alone.
    cxx = ["-O3", "-std=c++17", "-fno-wrapv", "-ffp-contract=off", "-fvisibility=hidden"] + common
    extra = {"cxx": cxx}
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
    print(
        f"eplb_ext build: {'CUDA ' + cuda_version + ' archs ' + archs if cuda else 'CPU only'}; "
        f"torch {torch.__version__}; stable ABI target {TORCH_TARGET}; "
        f"MAX_JOBS={os.environ.get('MAX_JOBS', 'auto')}"
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
                py_limited_api=True,
            )
        ],
        cmdclass={"build_ext": cpp_extension.BuildExtension},
        options={"bdist_wheel": {"py_limited_api": "cp310"}},
    )


if __name__ == "__main__":
    main()
