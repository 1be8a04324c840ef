"""Collects what benchmarks/gpu_check.sh left in OUTDIR into summary.json.

    python benchmarks/gpu_summary.py OUTDIR

Reads stages.tsv (one line per stage: name, exit status, seconds; 124 or
137 is a timeout, "skipped" a stage that never started), the pytest JUnit
files, the compute-sanitizer logs and the benchmark's JSON. Each part is
read on its own, so a stage that failed or left nothing still yields a
summary of the others. Exit status 0 when every stage passed; whether the
benchmark met its targets is reported (``targets_met``), not part of it.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional

TEST_STAGES = ("tests", "tests_marked")
SANITIZERS = ("memcheck", "racecheck", "synccheck")
TIMEOUT_RCS = (124, 137)
NO_TESTS_COLLECTED = 5  # pytest's exit status when a marker selects nothing


def read_stages(path: Path) -> Dict[str, Dict]:
    stages: Dict[str, Dict] = {}
    if not path.exists():
        return stages
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        name, rc, seconds = parts
        stage = dict(rc=int(rc) if rc.lstrip("-").isdigit() else None, seconds=float(seconds))
        stage["timed_out"] = stage["rc"] in TIMEOUT_RCS
        stage["skipped"] = rc == "skipped"
        stages[name] = stage
    return stages


def junit_counts(path: Path) -> Optional[Dict[str, int]]:
    """passed/failed/errors/skipped/total of a pytest JUnit file, or None
    when it is missing or unreadable (the run died before writing it)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = dict(total=0, failed=0, errors=0, skipped=0)
    for suite in suites:
        counts["total"] += int(suite.get("tests", 0))
        counts["failed"] += int(suite.get("failures", 0))
        counts["errors"] += int(suite.get("errors", 0))
        counts["skipped"] += int(suite.get("skipped", 0))
    counts["passed"] = counts["total"] - counts["failed"] - counts["errors"] - counts["skipped"]
    return counts


_ERROR_SUMMARY = re.compile(r"ERROR SUMMARY: (\d+) errors?")
_HAZARDS = re.compile(r"RACECHECK SUMMARY: .*")
# racecheck ends with this line only, no ERROR SUMMARY.
_HAZARD_ERRORS = re.compile(r"RACECHECK SUMMARY: \d+ hazards? displayed \((\d+) errors?,")


def sanitizer_result(log: Path) -> Dict:
    """Error count and summary lines from a compute-sanitizer log, and
    whether the driver script itself got through all its calls."""
    text = log.read_text(errors="replace") if log.exists() else ""
    counts = [int(m) for m in _ERROR_SUMMARY.findall(text)] or [int(m) for m in _HAZARD_ERRORS.findall(text)]
    lines = [m.group(0).strip("= ").strip() for m in re.finditer(r"=+ (ERROR SUMMARY: .*)", text)]
    lines += [m.group(0).strip() for m in _HAZARDS.finditer(text)]
    return dict(
        errors=sum(counts) if counts else None,
        # Failed CUDA API calls are counted among the errors; told apart here
        # because some come from torch itself, not from a kernel of ours.
        api_errors=len(re.findall(r"Program hit \S+ .*on CUDA API call", text)),
        summary=lines,
        driver_completed="all calls ran" in text,
    )


def build_summary(out: Path) -> Dict:
    stages = read_stages(out / "stages.tsv")

    def stage(name: str) -> Dict:
        return dict(stages.get(name, dict(rc=None, seconds=None, timed_out=False, skipped=True)))

    summary: Dict = dict(stages=stages)
    probe = out / "probe.json"
    if probe.exists():
        try:
            summary["machine"] = json.loads(probe.read_text())
        except ValueError:
            pass
    summary["build"] = stage("build")

    tests = dict(passed=0, failed=0, errors=0, skipped=0, total=0)
    failed_stage = False
    for name in TEST_STAGES:
        st = stage(name)
        counts = junit_counts(out / f"{name}.xml")
        st["counts"] = counts
        tests[name] = st
        if counts:
            for key in ("passed", "failed", "errors", "skipped", "total"):
                tests[key] += counts[key]
        if st["rc"] not in (0, NO_TESTS_COLLECTED) or (counts is None and st["rc"] == 0):
            failed_stage = True
    tests["ok"] = not failed_stage and tests["failed"] == 0 and tests["errors"] == 0
    summary["tests"] = tests

    sanitizers = {}
    for tool in SANITIZERS:
        st = stage(tool)
        st.update(sanitizer_result(out / f"{tool}.log"))
        st["ok"] = st["rc"] == 0 and st["errors"] == 0 and st["driver_completed"]
        sanitizers[tool] = st
    summary["sanitizers"] = sanitizers

    # error_probe.py: do the API's errors raise in Python, and do the raw ops'
    # C++ errors reach Python (informational: a torch build may not unwind them).
    errors = stage("errors")
    probe_errors = _load_json(out / "error_probe.json")
    if probe_errors is not None:
        errors["api_raises"] = probe_errors.get("ok")
        raw = [v.get("rc") == 0 for n, v in probe_errors.items() if n in ("raw", "raw_cuda") and isinstance(v, dict)]
        errors["raw_raises"] = all(raw) if raw else None
    errors["ok"] = errors["rc"] == 0
    summary["errors"] = errors
    # Nsight Compute (informational: needs ncu and counter permissions).
    summary["profile"] = stage("profile")
    summary["hotspots"] = stage("hotspots")

    bench = stage("bench")
    result = _load_json(out / "bench_gpu.json")
    if result is not None:
        bench["skipped_reason"] = result.get("skipped")
        bench["device"] = result.get("device")
        bench["rows"] = result.get("rows")
        bench["targets"] = result.get("targets")
        bench["targets_met"] = result.get("targets_met")
        bench["scratch_bound"] = result.get("scratch_bound")
    summary["bench"] = bench
    summary["targets_met"] = bench.get("targets_met")
    summary["ok"] = (
        summary["build"]["rc"] == 0
        and errors["ok"]
        and tests["ok"]
        and all(s["ok"] for s in sanitizers.values())
        and bench["rc"] == 0
        and result is not None
        and not result.get("skipped")
    )
    return summary


def _load_json(path: Path) -> Optional[Dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def brief(summary: Dict) -> List[str]:
    """A few lines for the end of the log."""
    b, t = summary["build"], summary["tests"]
    lines = [
        f"build: rc={b['rc']} in {b['seconds']} s",
        f"errors: rc={summary['errors']['rc']} api raises={summary['errors'].get('api_raises')} "
        f"raw ops raise={summary['errors'].get('raw_raises')}",
        f"tests: {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, {t['skipped']} skipped",
    ]
    for tool, s in summary["sanitizers"].items():
        lines.append(f"{tool}: rc={s['rc']} errors={s['errors']} driver completed={s['driver_completed']}")
    bench = summary["bench"]
    lines.append(f"bench: rc={bench['rc']} targets met={summary['targets_met']}"
                 + (f" (skipped: {bench['skipped_reason']})" if bench.get("skipped_reason") else ""))
    for target in bench.get("targets") or []:
        if not target["met"]:
            lines.append(f"  missed: {target['name']}: {target['value']} {target['unit']} (limit {target['limit']})")
    lines.append(f"all stages passed: {summary['ok']}")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: gpu_summary.py OUTDIR", file=sys.stderr)
        return 2
    out = Path(args[0])
    summary = build_summary(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(brief(summary)))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
