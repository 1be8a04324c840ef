"""The GPU check's scripts, without a GPU: benchmarks/gpu_check.sh parses,
the sanitizer driver's calls are right (run on the CPU kernels), and the
benchmark's and the summary's bookkeeping give the right verdicts on made-up
results. The measurements themselves need a GPU (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:  # the scripts import their neighbour common.py
    sys.path.insert(0, str(BENCH))

import bench_gpu  # noqa: E402
import gpu_summary  # noqa: E402
import sanitize_ops  # noqa: E402

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour where no GPU is present")


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_gpu_check_script_parses():
    result = subprocess.run(["bash", "-n", str(BENCH / "gpu_check.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_sanitize_driver_reaches_every_op_on_cpu(capsys):
    # The same calls as under compute-sanitizer, on the CPU kernels; main()
    # fails if any op with a CPU kernel is not reached.
    assert sanitize_ops.main(["--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "all calls ran" in out
    assert {"deepseek", "deepseek_vec", "migrate", "logical_to_physical"} <= sanitize_ops.registered_ops("CPU")


@no_gpu
def test_sanitize_driver_without_gpu():
    assert sanitize_ops.main(["--skip-missing"]) == 0
    assert sanitize_ops.main([]) == 1


def _row(variant="deepseek", S=1, graph=20.0, python=60.0, scratch=1000, same=True):
    return dict(variant=variant, S=S, graph_us=graph, python_us=python, kernel_us=15.0, python_default_us=90.0,
                via_host_us=900.0, scratch_bytes=scratch, identical_to_cpu=same,
                scratch_bound_bytes=bench_gpu.scratch_bound(S, 58, 256, 288))


def test_bench_targets_met_and_missed():
    assert bench_gpu.scratch_bound(1, 58, 256, 288) == 4 * 58 * 256 + 64 * 58 * 288
    good = [_row(v) for v in bench_gpu.VARIANTS] + [_row("deepseek_vec", 1000, graph=1500.0, python=1900.0)]
    checks = bench_gpu.targets(good)
    assert bench_gpu.all_met(checks)
    # 4 per S = 1 row (graph, python, scratch, identical), 4 for S = 1000.
    assert len(checks) == 4 * 5

    def missed(rows):
        return [c["name"] for c in bench_gpu.targets(rows) if not c["met"]]

    assert missed([_row(graph=50.5)]) == ["deepseek S=1 graph"]
    assert missed([_row(python=101.0)]) == ["deepseek S=1 python"]
    assert missed([_row("deepseek_vec", 1000, graph=100.0, python=2100.0)]) == ["deepseek_vec S=1000 python"]
    bound = bench_gpu.scratch_bound(1, 58, 256, 288)
    assert missed([_row(scratch=bound)]) == []
    assert missed([_row(scratch=bound + 1)]) == ["deepseek S=1 scratch"]
    assert missed([_row(same=False)]) == ["deepseek S=1 identical to CPU"]
    # A measurement that failed (None) is a miss, not a pass.
    assert missed([_row(graph=None)]) == ["deepseek S=1 graph"]
    assert not bench_gpu.all_met([])

    table = bench_gpu.format_table(good + [_row(graph=None)], bench_gpu.targets([_row(graph=None)]))
    assert "deepseek_vec_hierarchical" in table and "MISSED deepseek S=1 graph" in table
    assert "targets met: False" in table


@no_gpu
def test_bench_without_gpu_exits_cleanly(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench_gpu.main(["--quick", "--json", str(out)]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert "no CUDA device" in json.loads(out.read_text())["skipped"]


class _FakeEvent:
    def __init__(self, enable_timing=False):
        pass

    def record(self, stream=None):
        pass

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return 0.02  # ms


class _FakeStream:
    def wait_stream(self, other):
        pass


class _FakeGraph:
    def replay(self):
        pass


def test_bench_measure_logic_with_cuda_stubbed(monkeypatch):
    """measure() runs its whole sequence (op, Python call, graph, host path,
    memory) with the CUDA calls stubbed and tensors left on the CPU, so a
    slip in it shows here rather than on the GPU machine."""
    cuda = torch.cuda
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    for name, value in dict(
        synchronize=lambda *a: None, Event=_FakeEvent, Stream=_FakeStream, current_stream=lambda *a: _FakeStream(),
        stream=lambda s: contextlib.nullcontext(), CUDAGraph=_FakeGraph, graph=lambda g, **k: contextlib.nullcontext(),
        memory_allocated=lambda *a: 0, reset_peak_memory_stats=lambda *a: None,
        max_memory_allocated=lambda *a: 1 << 20,
    ).items():
        monkeypatch.setattr(cuda, name, value)
    gen = torch.Generator().manual_seed(0)
    for variant in ("deepseek", "deepseek_vec_hierarchical"):
        row = bench_gpu.measure(variant, 1, repeats=2, warmup=1, gen=gen)
        assert row["errors"] == [], row["errors"]
        assert row["identical_to_cpu"] is True
        assert row["graph_us"] == pytest.approx(20.0) and row["kernel_us"] == pytest.approx(20.0)
        assert row["python_us"] > 0 and row["via_host_us"] > 0
        assert row["scratch_bytes"] == (1 << 20) - row["output_bytes"] and row["output_bytes"] > 0


def test_bench_migration_logic_with_cuda_stubbed(monkeypatch):
    """The migration timing runs its sequence with tensors left on the CPU:
    both calls agree and every time is measured."""
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    row = bench_gpu.measure_migration(2, 1, torch.Generator().manual_seed(0))
    assert row["errors"] == [], row["errors"]
    assert row["identical_to_cpu"] is True
    assert row["gpu_us"] > 0 and row["gpu_relabel_us"] > 0 and row["cpu_us"] > 0


def _junit(path: Path, tests: int, failures: int = 0, errors: int = 0, skipped: int = 0) -> None:
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="{tests}" '
                    f'failures="{failures}" errors="{errors}" skipped="{skipped}"/></testsuites>')


def _outdir(tmp_path: Path, memcheck_errors: int = 0, bench: bool = True) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    rc_mem = 1 if memcheck_errors else 0
    (out / "stages.tsv").write_text(
        "probe\t0\t2.0\nbuild\t0\t95.5\nerrors\t0\t9.0\ntests\t0\t40.1\ntests_marked\t5\t6.0\n"
        f"memcheck\t{rc_mem}\t30.0\nracecheck\t0\t31.0\nsynccheck\t124\t60.0\n"
        + ("bench\t0\t20.0\n" if bench else "bench\tskipped\t0\n")
    )
    (out / "error_probe.json").write_text(json.dumps(dict(api=dict(rc=0), raw=dict(rc=-11), ok=True)))
    _junit(out / "tests.xml", 320, skipped=2)
    _junit(out / "tests_marked.xml", 0)
    (out / "memcheck.log").write_text(f"ok    deepseek\nall calls ran\n========= ERROR SUMMARY: {memcheck_errors} errors\n")
    # As racecheck writes it: no ERROR SUMMARY line.
    (out / "racecheck.log").write_text("all calls ran\n========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, "
                                       "0 warnings)\n")
    (out / "synccheck.log").write_text("ok    balanced_packing\n")  # killed by the timeout
    if bench:
        rows = [_row()]
        checks = bench_gpu.targets(rows)
        (out / "bench_gpu.json").write_text(json.dumps(dict(rows=rows, targets=checks,
                                                            targets_met=bench_gpu.all_met(checks))))
    return out


def test_summary_counts_and_verdicts(tmp_path):
    s = gpu_summary.build_summary(_outdir(tmp_path))
    assert s["build"] == dict(rc=0, seconds=95.5, timed_out=False, skipped=False)
    t = s["tests"]
    assert (t["passed"], t["failed"], t["errors"], t["skipped"], t["total"]) == (318, 0, 0, 2, 320)
    assert t["ok"]  # a marker that selects nothing (rc 5) is no failure
    san = s["sanitizers"]
    assert san["memcheck"]["ok"] and san["memcheck"]["errors"] == 0
    assert san["racecheck"]["ok"] and any("RACECHECK SUMMARY" in line for line in san["racecheck"]["summary"])
    assert san["racecheck"]["errors"] == 0
    assert san["synccheck"]["timed_out"] and not san["synccheck"]["ok"] and san["synccheck"]["errors"] is None
    assert s["targets_met"] is True
    assert s["errors"]["ok"] and s["errors"]["api_raises"] and s["errors"]["raw_raises"] is False
    assert not s["ok"]  # synccheck timed out


def test_summary_sanitizer_errors_and_missing_bench(tmp_path):
    out = _outdir(tmp_path, memcheck_errors=3, bench=False)
    assert gpu_summary.main([str(out)]) == 1
    s = json.loads((out / "summary.json").read_text())
    assert s["sanitizers"]["memcheck"]["errors"] == 3 and not s["sanitizers"]["memcheck"]["ok"]
    assert s["bench"]["skipped"] and s["targets_met"] is None and not s["ok"]


def test_summary_of_an_empty_outdir(tmp_path):
    # Nothing ran (say the machine died at once): still a summary, all failed.
    s = gpu_summary.build_summary(tmp_path)
    assert not s["ok"] and s["build"]["rc"] is None and s["tests"]["total"] == 0
    assert "all stages passed: False" in gpu_summary.brief(s)


def test_hotspots_ranks_rows_per_kernel():
    import hotspots

    text = "\n".join([
        '"==PROF== Disconnected"',
        '"migrate_kernel<long>","(58, 3, 1)x(128, 1, 1)"',
        '"Address","Source","Warp Stall Sampling (Not-issued Samples)","Warp Stall Sampling (All Samples)"',
        '"0x10","LDS R1, [R2]","5","1,200"',
        '"0x20","DADD R4, R4, R6","900","30"',
        '"0x30","BAR.SYNC","","77"',
        '"vec_chunk_kernel","(232, 1, 1)x(256, 1, 1)"',
        '"Address","Source","Warp Stall Sampling (All Samples)"',
        '"0x40","ISETP","3"',
        '"0x50","LDG","8"',
    ])
    tables = hotspots.top_rows(text, 2)
    assert [t[0] for t in tables] == ['migrate_kernel<long> (58, 3, 1)x(128, 1, 1)',
                                      'vec_chunk_kernel (232, 1, 1)x(256, 1, 1)']
    # "All Samples" is the key, thousands separators read, blanks count 0.
    assert [r[0] for r in tables[0][2]] == ["0x10", "0x30"]
    assert [r[0] for r in tables[1][2]] == ["0x50", "0x40"]
    assert "LDS R1" in hotspots.show(tables)


@pytest.mark.skipif(shutil.which("false") is None, reason="no 'false' command")
def test_hotspots_fails_cleanly_without_a_profiler(tmp_path):
    import hotspots

    assert hotspots.main(["--ncu", shutil.which("false"), "--out", str(tmp_path)]) == 1
    assert not (tmp_path / "hotspots.csv").exists()
