"""Does a C++ error raised inside an op reach Python as an exception here?

    python benchmarks/error_probe.py [--json OUT]

Each case runs in its own interpreter, so a crash ends that case only:
- torch:    one of torch's own errors (shape mismatch in an add);
- api:      bad loads given to eplb_ext.rebalance_experts, which checks them
            in Python before any op (must raise ValueError);
- raw:      an argument error raised by the compiled code of a raw op,
            which crosses into torch as a C++ exception;
- api_cuda, raw_cuda: the same with CUDA tensors (when a GPU is present);
- raw_libgcc: "raw" with the system libgcc_s unwinder loaded first.
For a raw case that crashes, the dynamic linker's binding of the unwinder's
entry points and the shared libraries loaded with an unwinder in them are
recorded too: a process that binds _Unwind_RaiseException to another unwinder
than libgcc_s's is a known cause of C++ exceptions ending in a segfault.
ERROR_PROBE_ALL=1 records those details even when every case raises (to try
the probe itself). Exit status 0 when the api cases raise ValueError.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TORCH_ERROR = "import torch\ntorch.ones(2) + torch.ones(3)\n"
OUR_ERROR = "import torch, eplb_ext\ntorch.ops.eplb_ext.balanced_packing(torch.ones(2, 4, device={dev!r}), 0)\n"
API_ERROR = ("import torch, eplb_ext\n"
             "eplb_ext.rebalance_experts(torch.tensor([[1.0, -1.0]], device={dev!r}), 2, 1, None, None)\n")
WRAP = """
import sys
try:
{body}
except BaseException as exc:
    print("RAISED", type(exc).__name__, str(exc).splitlines()[0][:200])
    sys.exit(0)
print("NO ERROR")
sys.exit(3)
"""
LIBS = """
import torch, eplb_ext
seen = set()
for line in open("/proc/self/maps"):
    parts = line.split()
    if len(parts) >= 6 and parts[5].startswith("/"):
        seen.add(parts[5])
for path in sorted(seen):
    name = path.rsplit("/", 1)[-1]
    if any(k in name for k in ("unwind", "gcc_s", "stdc++", "libc++", "libpython", "libc10.")):
        print(path)
"""


def indent(code):
    return "".join("    " + line + "\n" for line in code.splitlines())


def run(code, env=None, timeout=120, keep=3000):
    full = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))
    try:
        p = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], capture_output=True, text=True,
                           timeout=timeout, env=full, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"rc": "timeout"}
    return {"rc": p.returncode, "stdout": p.stdout[-2000:], "stderr": p.stderr if keep is None else p.stderr[-keep:]}


def libgcc_path():
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=20).stdout
    except Exception:
        return None
    m = re.search(r"libgcc_s\.so\.1 \(libc6,x86-64\) => (\S+)", out)
    return m.group(1) if m else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    args = ap.parse_args()
    import torch

    res = {"python": sys.executable, "python_version": sys.version.split()[0], "torch_version": torch.__version__}
    cases = {"torch": TORCH_ERROR, "api": API_ERROR.format(dev="cpu"), "raw": OUR_ERROR.format(dev="cpu")}
    if torch.cuda.is_available():
        cases["api_cuda"] = API_ERROR.format(dev="cuda")
        cases["raw_cuda"] = OUR_ERROR.format(dev="cuda")
    for name, body in cases.items():
        res[name] = run(WRAP.format(body=indent(body)))
    crashed = any(res[n]["rc"] != 0 for n in cases) or os.environ.get("ERROR_PROBE_ALL") == "1"
    if crashed:
        gcc = libgcc_path()
        if gcc:
            res["raw_libgcc"] = run(WRAP.format(body=indent(cases["raw"])), env={"LD_PRELOAD": gcc})
            res["raw_libgcc"]["preload"] = gcc
        binds = run(WRAP.format(body=indent(cases["raw"])), env={"LD_DEBUG": "bindings"}, keep=None)
        keep = [line.strip() for line in binds.get("stderr", "").splitlines()
                if re.search(r"_Unwind_RaiseException|__cxa_throw'", line)]
        res["unwinder_bindings"] = keep[:60]
        res["loaded_libraries"] = run(LIBS).get("stdout", "").split()
        exe = os.path.realpath(sys.executable)
        if shutil.which("nm"):
            nm = subprocess.run(["nm", "-D", "--defined-only", exe], capture_output=True, text=True, timeout=60)
            res["python_exports_unwind"] = [ln for ln in nm.stdout.splitlines() if "_Unwind_" in ln][:20]
        if shutil.which("gdb"):
            script = os.path.join(ROOT, ".error_probe_case.py")
            with open(script, "w") as f:
                f.write(cases["raw"])
            g = subprocess.run(["gdb", "-q", "-batch", "-ex", "run", "-ex", "bt 30", "--args", sys.executable, script],
                               capture_output=True, text=True, timeout=180,
                               env=dict(os.environ, PYTHONPATH=ROOT))
            os.remove(script)
            res["gdb"] = g.stdout[-6000:]
    ok = all(res[n]["rc"] == 0 and "RAISED ValueError" in res[n]["stdout"] for n in cases if n.startswith("api"))
    res["ok"] = ok
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
