#!/usr/bin/env bash
# One-shot GPU check: build for sm_90, run the CUDA tests and the GPU
# benchmark, and leave a log and a JSON summary in OUTDIR. Needs a GPU, the
# CUDA toolkit, torch with CUDA, pytest and ninja already installed; no network.
#
#   bash benchmarks/gpu_check.sh OUTDIR
set -uo pipefail
out=${1:?usage: gpu_check.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
log="$out/gpu_check.log"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} EPLB_EXT_CUDA=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)} CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

build_rc=1 test_rc=1 bench_rc=1
{
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  start=$(date +%s)
  timeout 300 $py setup.py build_ext --inplace; build_rc=$?
  echo "build rc=$build_rc in $(( $(date +%s) - start )) s"
  if [ $build_rc -eq 0 ]; then
    timeout 200 $py -m pytest -q -p no:cacheprovider tests/test_build.py tests/test_cuda.py \
      --junitxml="$out/cuda_tests.xml"; test_rc=$?
    timeout 150 $py benchmarks/bench_gpu.py --json "$out/bench_gpu.json"; bench_rc=$?
  fi
  echo "rc build=$build_rc tests=$test_rc bench=$bench_rc"
} 2>&1 | tee "$log"

$py - "$out" "$build_rc" "$test_rc" "$bench_rc" <<'PY'
import json, os, sys
import xml.etree.ElementTree as ET
out, build, tests, bench = sys.argv[1], *map(int, sys.argv[2:])
summary = {"build_rc": build, "tests_rc": tests, "bench_rc": bench}
junit = os.path.join(out, "cuda_tests.xml")
if os.path.exists(junit):
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    summary["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
path = os.path.join(out, "bench_gpu.json")
if os.path.exists(path):
    summary["bench"] = json.load(open(path))
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps({k: v for k, v in summary.items() if k != "bench"}))
PY
[ $build_rc -eq 0 ] && [ $test_rc -eq 0 ] && [ $bench_rc -eq 0 ]
