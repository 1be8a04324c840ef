#!/usr/bin/env bash
# GPU check in one call, within 8 minutes: build for sm_90, run the CUDA
# tests, run compute-sanitizer (memcheck, racecheck, synccheck) over one
# small call of every CUDA op, run the GPU benchmark and, where Nsight
# Compute is installed, profile the kernels and their hot source lines
# (hotspots.csv); leave a log per stage, gpu_check.log (all of them) and
# summary.json in OUTDIR.
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# Needs a GPU, a CUDA build of torch, a CUDA toolkit (found as setup.py finds
# it: CUDA_HOME may be unset), pytest and ninja; no network. Every stage runs
# under its own timeout, sized from what is left of the overall budget, and a
# failed stage is recorded and the next one still runs, so the summary always
# covers every stage. Exit status 0 when every stage passed; performance
# targets are in summary.json ("targets_met") and do not change it.
#
# Environment: PYTHON (default python, else python3), GPU_CHECK_BUDGET_S
# (default 460: the 8 minutes less room for the summary), MAX_JOBS (default
# nproc), TORCH_CUDA_ARCH_LIST (default 9.0).
set -uo pipefail
# The whole script is one block, read before any of it runs: a checkout that
# changes under a running check cannot shift what bash reads next.
{
out=${1:?usage: gpu_check.sh OUTDIR}
mkdir -p "$out" && out=$(cd "$out" && pwd) || { echo "cannot create $1" >&2; exit 2; }
cd "$(dirname "$0")/.." || exit 2
repo=$(pwd)

py=${PYTHON:-$(command -v python || command -v python3)}
budget_s=${GPU_CHECK_BUDGET_S:-460}
start=$(date +%s)
deadline=$((start + budget_s))
log="$out/gpu_check.log"
stages="$out/stages.tsv"
# Results of an earlier run in the same OUTDIR must not leak into this summary.
rm -f "$log" "$stages" "$out"/*.xml "$out"/bench_gpu.json "$out"/summary.json "$out"/probe.json "$out"/error_probe.json \
  "$out"/hotspots.csv "$out"/hotspots.ncu-rep

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
# Line tables (the same device code) for the hotspots stage's source view.
export EPLB_EXT_CUDA=1 EPLB_EXT_LINEINFO=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} PYTHONUNBUFFERED=1
# The checkout's in-place build, whatever else is installed.
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
# pip's ninja installs its binary beside the interpreter; torch looks for it
# on PATH and compiles one file at a time without it.
PATH="$(dirname "$py"):$PATH"

say() { echo "$*" | tee -a "$log"; }
# Set while stages run side by side: their logs are appended after all end.
defer_log=0

# seconds CAP RESERVE: the timeout of a stage, at most CAP, leaving RESERVE
# seconds of the budget to the stages after it.
seconds() {
  local left=$((deadline - $(date +%s) - $2))
  echo $((left < $1 ? left : $1))
}

# stage NAME CAP RESERVE CMD...: runs CMD under timeout into NAME.log, appends
# that to the main log, shows its tail, and records "NAME rc seconds".
stage() {
  local name=$1 cap=$2 reserve=$3
  shift 3
  local limit t0 rc
  limit=$(seconds "$cap" "$reserve")
  if ((limit < 10)); then
    say "== $name: skipped, ${limit} s left of the budget"
    printf '%s\tskipped\t0\n' "$name" >>"$stages"
    return 0
  fi
  # First line of the command only: the probe's is a whole script.
  say "== $name (timeout ${limit} s): $(printf '%s ' "$@" | head -n 1)"
  t0=$(date +%s.%N)
  # -k: a process that ignores SIGTERM is killed 5 s later; timeout signals
  # the whole process group, so children (the sanitizer's target) go too.
  timeout -k 5 "$limit" "$@" >"$out/$name.log" 2>&1 </dev/null
  rc=$?
  local secs
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  if ((!defer_log)); then
    cat "$out/$name.log" >>"$log"
    tail -n 15 "$out/$name.log"
  fi
  ((rc == 124 || rc == 137)) && say "== $name: TIMED OUT after ${limit} s"
  say "== $name: rc=$rc in ${secs} s"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$secs" >>"$stages"
  return 0
}

say "gpu_check: $(date -u +%FT%TZ) in $repo, budget ${budget_s} s, MAX_JOBS=$MAX_JOBS, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"

# --- probe: what the machine has (no stage depends on its success).
stage probe 60 400 "$py" -c "
import json, shutil, subprocess, sys, torch
info = dict(python=sys.version.split()[0], torch=torch.__version__, torch_cuda=torch.version.cuda,
            cuda_available=torch.cuda.is_available())
if info['cuda_available']:
    info['device'] = torch.cuda.get_device_name()
    info['capability'] = '.'.join(map(str, torch.cuda.get_device_capability()))
try:
    info['nvidia_smi'] = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total',
                                         '--format=csv,noheader'], capture_output=True, text=True,
                                        timeout=20).stdout.strip()
except Exception as exc:
    info['nvidia_smi'] = repr(exc)
info['ninja_on_path'] = shutil.which('ninja')
for mod in ('setuptools', 'numpy', 'pytest', 'ninja', 'pytest_timeout', 'hypothesis'):
    try:
        __import__(mod)
        info[mod] = True
    except ImportError:
        info[mod] = False
print(json.dumps(info, indent=2))
json.dump(info, open(sys.argv[1], 'w'), indent=2)
" "$out/probe.json"

# The toolkit, found by setup.py's own search, for compute-sanitizer.
toolkit=$(timeout 60 "$py" -c "import setup; print(setup.find_toolkit()[0] or '')" 2>/dev/null | tail -n 1)
# The pip wheels of the toolkit put it under site-packages/nvidia/ instead.
wheels=$(timeout 30 "$py" -c "import nvidia, os; print(os.path.realpath(list(nvidia.__path__)[0]))" 2>/dev/null)
sanitizer=""
for c in "${toolkit:+$toolkit/bin/compute-sanitizer}" "${toolkit:+$toolkit/compute-sanitizer/compute-sanitizer}" \
         "$(command -v compute-sanitizer)" /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer \
         ${wheels:+"$wheels"/*/compute-sanitizer/compute-sanitizer "$wheels"/*/bin/compute-sanitizer}; do
  if [ -n "$c" ] && [ -f "$c" ] && [ -x "$c" ]; then sanitizer=$c; break; fi
done
say "toolkit: ${toolkit:-not found}; compute-sanitizer: ${sanitizer:-not found}"

# --- build (setup.py finds the toolkit; EPLB_EXT_CUDA=1 makes a CPU-only
# fallback an error instead of a silent success).
stage build 270 170 "$py" setup.py build_ext --inplace

# --- does a C++ error raised in an op reach Python as an exception? (each
# case in its own interpreter; on a crash it records the unwinder's bindings)
stage errors 60 200 "$py" benchmarks/error_probe.py --json "$out/error_probe.json"

# --- tests: the CUDA and build tests and the CPU tests of the lane-parallel
# code, then the tests marked cuda in the other files. addopts is replaced
# (-rs kept) and per-test timeouts are asked of pytest-timeout where it is
# installed; where it is not, the ini option only warns. A test file that
# cannot be imported (say hypothesis is missing) counts as an error without
# stopping the others.
pytest_args=(-q -rs -o addopts= -o timeout=150 -p no:cacheprovider --continue-on-collection-errors)
# With pytest-xdist, tests run in worker processes: a test that crashes its
# process is reported as failed and the others still run.
if timeout 30 "$py" -c "import xdist" 2>/dev/null; then pytest_args+=(-n 8); fi
shopt -s nullglob
lanes=(tests/test_lanes_*.py)
shopt -u nullglob
skip_seen=(--ignore=tests/test_cuda.py)
for f in ${lanes[@]+"${lanes[@]}"}; do skip_seen+=("--ignore=$f"); done
stage tests 150 110 "$py" -m pytest "${pytest_args[@]}" --junitxml="$out/tests.xml" \
  tests/test_build.py tests/test_cuda.py ${lanes[@]+"${lanes[@]}"}
stage tests_marked 60 90 "$py" -m pytest "${pytest_args[@]}" --junitxml="$out/tests_marked.xml" \
  -m cuda "${skip_seen[@]}" tests

# --- compute-sanitizer: each tool over one small call of every CUDA op,
# the three side by side (they are independent processes, and one at a time
# they would take most of what is left of the budget after the build).
# memcheck runs without torch's caching allocator so that every tensor is its
# own allocation and an overrun past a tensor's end is caught, not absorbed
# by a neighbouring block of the same pool.
tools=(memcheck racecheck synccheck)
if [ -z "$sanitizer" ]; then
  for tool in "${tools[@]}"; do
    say "== $tool: compute-sanitizer not found (looked in ${toolkit:-no toolkit}/bin, PATH, /usr/local/cuda*, site-packages/nvidia)"
    printf '%s\t127\t0\n' "$tool" >>"$stages"
  done
else
  defer_log=1
  for tool in "${tools[@]}"; do
    extra=(CUDA_MODULE_LOADING=LAZY)
    [ "$tool" = memcheck ] && extra+=(PYTORCH_NO_CUDA_MEMORY_CACHING=1)
    stage "$tool" 150 50 env "${extra[@]}" "$sanitizer" --tool "$tool" --error-exitcode 1 --print-limit 50 \
      "$py" benchmarks/sanitize_ops.py &
  done
  wait
  defer_log=0
  for tool in "${tools[@]}"; do
    { echo "== $tool log"; cat "$out/$tool.log"; } >>"$log"
    echo "== $tool (last lines)"
    tail -n 12 "$out/$tool.log"
  done
fi

# --- benchmark; the quick variant when little of the budget is left.
bench_args=(--json "$out/bench_gpu.json")
(($(seconds 120 10) < 90)) && bench_args+=(--quick)
stage bench 120 10 "$py" benchmarks/bench_gpu.py "${bench_args[@]}"

# --- Nsight Compute over one launch of each kernel worth profiling (where
# ncu is installed and the budget allows; counters may need permissions that
# a machine does not grant, which the stage's log then shows).
ncu=""
for c in "${toolkit:+$toolkit/bin/ncu}" "$(command -v ncu)" /usr/local/cuda/bin/ncu /usr/local/cuda-*/bin/ncu; do
  if [ -n "$c" ] && [ -f "$c" ] && [ -x "$c" ]; then ncu=$c; break; fi
done
if [ -n "$ncu" ]; then
  # Where the slowest kernels spend their time, line by line (hotspots.csv),
  # first: it says more than the whole-kernel sections after it.
  stage hotspots 100 5 "$py" benchmarks/hotspots.py --ncu "$ncu" --out "$out" --python "$py"
  stage profile 120 5 "$ncu" --profile-from-start off --section SpeedOfLight --section Occupancy \
    --section LaunchStats --section WarpStateStats --csv --page details "$py" benchmarks/profile_gpu.py
else
  say "== profile: ncu not found"
fi

# --- summary.json from everything above.
say "== summary"
timeout -k 5 15 "$py" benchmarks/gpu_summary.py "$out" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
if [ ! -s "$out/summary.json" ]; then
  # Python itself failed: still leave the stage table in machine-readable form.
  printf '{"ok": false, "error": "gpu_summary.py failed (rc %s)", "stages_tsv": "%s"}\n' "$rc" "$stages" \
    >"$out/summary.json"
  rc=1
fi
say "gpu_check: done in $(($(date +%s) - start)) s; summary in $out/summary.json"
exit "$rc"
}
