"""The eplb-ext command line, end to end through ``python -m eplb_ext`` in a
subprocess (plus a few in-process calls of ``main``)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eplb_ext
from eplb_ext import metrics
from eplb_ext import cli as cli_module
from eplb_ext.cli import main

REPO = Path(__file__).resolve().parents[1]
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
HAS_SAFETENSORS = importlib.util.find_spec("safetensors") is not None

# A small grouped deployment: 4 layers of 16 experts in 4 groups, 24 slots on
# 4 GPUs (6 each) in 2 nodes. Every variant applies.
S, L, E, C, N, G, P = 3, 4, 16, 4, 2, 4, 24
DEPLOY_ARGS = ["-P", str(P), "-G", str(G), "--num-nodes", str(N), "--num-groups", str(C)]


def run_cli(*args, cwd, extra_path=None):
    """Runs ``python -m eplb_ext ARGS``; the checkout (with its in-place build)
    is importable through PYTHONPATH. Never a traceback, whatever happens."""
    path = [str(REPO)] + ([str(extra_path)] if extra_path else [])
    if extra_path:
        path.reverse()  # a stand-in module must shadow the real one
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path + [os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "eplb_ext", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def assert_error(proc, *fragments):
    """Exit code 2 and an ``eplb-ext: error:`` line holding every fragment."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("eplb-ext: error: ") or " error: " in line]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Runs ``main(ARGS)`` in this process with tmp_path as the working folder:
    the same code path as the console script, without a Python start-up per
    case. An exception escaping ``main`` fails the test (it would be a
    traceback for the user)."""
    monkeypatch.chdir(tmp_path)

    def run(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return Result(code, out, err)

    return run


@pytest.fixture(scope="module")
def tokens():
    gen = torch.Generator().manual_seed(5)
    return torch.randint(0, 1000, (S, L, E), generator=gen)


def expected(tokens, algorithm="auto"):
    return eplb_ext.rebalance_experts(tokens, P, P // G, C, N, algorithm)


def read_output(path):
    if path.suffix == ".json":
        return {k: torch.tensor(v) for k, v in json.loads(path.read_text()).items()}
    return torch.load(path, weights_only=True)


def assert_valid_placement(out, num_experts=E, num_slots=P):
    phy2log, log2phy, logcnt = (out[k].to(torch.int64) for k in ("physical_to_logical_map", "logical_to_physical_map", "logical_count"))
    assert phy2log.shape == (L, num_slots) and logcnt.shape == (L, num_experts)
    assert bool(((phy2log >= 0) & (phy2log < num_experts)).all())
    assert torch.equal(metrics.replica_counts(phy2log, num_experts), logcnt)
    for layer in range(L):
        for e in range(num_experts):
            slots = log2phy[layer, e]
            count = int(logcnt[layer, e])
            assert bool((slots[count:] == -1).all())
            assert all(int(phy2log[layer, s]) == e for s in slots[:count])


def assert_same_as_library(out, ref):
    for key, want in zip(("physical_to_logical_map", "logical_to_physical_map", "logical_count"), ref):
        assert torch.equal(out[key].to(want.dtype), want), key


# --------------------------------------------------------------------------
# commands that work
# --------------------------------------------------------------------------


def test_version(tmp_path):
    proc = run_cli("--version", cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"eplb-ext {eplb_ext.__version__}"


def test_info(tmp_path):
    proc = run_cli("info", cwd=tmp_path)
    assert proc.returncode == 0
    for key, value in eplb_ext.build_info().items():
        assert key in proc.stdout and str(value) in proc.stdout


@pytest.mark.parametrize("command", [[], ["demo"], ["rebalance"], ["bench"], ["info"]])
def test_help_everywhere_has_examples(cli, command):
    proc = cli(*command, "--help")
    assert proc.returncode == 0
    assert "example" in proc.stdout and "eplb-ext" in proc.stdout


def test_no_command_is_a_usage_error(tmp_path):
    proc = run_cli(cwd=tmp_path)
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_demo(tmp_path):
    proc = run_cli("demo", "--layers", 2, "--steps", 2, "--repeats", 1, "--seed", 3, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for name in ("dsv3-4x8", "dsv3-8x8", "dsv3-18x8", "moe128-4x8"):
        assert name in out
    for variant in eplb_ext.EplbAlgorithm:
        assert variant.name in out
    assert "trivial (p % E)" in out and "best" in out
    # The 18-node and the group-less deployments skip the three hierarchical variants.
    assert out.count("skipped") == 6


def test_demo_is_deterministic(cli, tmp_path):
    def table(seed):
        out = cli("demo", "--layers", 2, "--steps", 2, "--repeats", 1, "--seed", seed).stdout
        # Drop the timing column, which varies from run to run.
        return [line.split()[:2] + line.split()[3:] for line in out.splitlines() if line.startswith("dsv3-4x8")]

    assert table(1) == table(1)
    assert table(1) != table(2)


def test_bench_quick(tmp_path):
    proc = run_cli("bench", "--quick", "--json", "bench.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "machine:" in proc.stdout and "speedup" in proc.stdout
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["preset"] == "smoke"
    assert {r["variant"] for r in result["rows"]} == {a.name for a in eplb_ext.EplbAlgorithm}
    assert all(r["identical"] and r["op_ms"] > 0 and r["ref_ms"] > 0 for r in result["rows"])


def save_input(kind, tokens, folder):
    """Writes ``tokens`` in one of the accepted input formats."""
    if kind == "pt-tensor":
        path = folder / "loads.pt"
        torch.save(tokens, path)
    elif kind == "pt-dict":
        # As SGLang's expert-distribution recorder dumps it.
        path = folder / "expert_distribution.pt"
        torch.save(dict(rank=0, logical_count=tokens, average_utilization_rate_over_window=0.5), path)
    elif kind == "npy":
        import numpy as np

        path = folder / "loads.npy"
        np.save(path, tokens.numpy())
    elif kind == "json-list":
        path = folder / "loads.json"
        path.write_text(json.dumps(tokens.tolist()))
    elif kind == "json-dict":
        path = folder / "loads_dict.json"
        path.write_text(json.dumps({"logical_count": tokens.tolist(), "note": "recorded"}))
    elif kind == "safetensors":
        from safetensors.torch import save_file

        path = folder / "loads.safetensors"
        save_file({"logical_count": tokens.contiguous()}, str(path))
    else:
        raise AssertionError(kind)
    return path


INPUT_KINDS = ["pt-tensor", "pt-dict", "npy", "json-list", "json-dict"] + (["safetensors"] if HAS_SAFETENSORS else [])


@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("out_ext", [".pt", ".json"])
def test_rebalance_every_format(cli, tmp_path, tokens, kind, out_ext):
    path = save_input(kind, tokens, tmp_path)
    out = tmp_path / f"placement{out_ext}"
    proc = cli("rebalance", path.name, *DEPLOY_ARGS, "-o", out.name)
    assert proc.returncode == 0, proc.stderr
    assert "deepseek_hierarchical (auto: " in proc.stdout
    assert "trivial (p % E) (before)" in proc.stdout and "worst layers" in proc.stdout
    result = read_output(out)
    assert set(result) == {"physical_to_logical_map", "logical_to_physical_map", "logical_count"}
    assert_valid_placement(result)
    assert_same_as_library(result, expected(tokens))


@pytest.mark.parametrize("algorithm", [a.name for a in eplb_ext.EplbAlgorithm])
def test_rebalance_every_variant(cli, tmp_path, tokens, algorithm):
    save_input("pt-tensor", tokens, tmp_path)
    proc = cli("rebalance", "loads.pt", *DEPLOY_ARGS, "--algorithm", algorithm, "-o", "out.pt")
    assert proc.returncode == 0, proc.stderr
    assert f"{algorithm}  <- written" in proc.stdout
    result = read_output(tmp_path / "out.pt")
    assert_valid_placement(result)
    assert_same_as_library(result, expected(tokens, algorithm))


def test_rebalance_two_dimensional_input_without_groups(cli, tmp_path, tokens):
    w = tokens.sum(dim=0).float()
    torch.save(w, tmp_path / "w.pt")
    proc = cli("rebalance", "w.pt", "-P", P, "-G", G, "-o", "out.json")
    assert proc.returncode == 0, proc.stderr
    assert "algorithm deepseek (auto: no expert groups" in proc.stdout
    assert "skipped" in proc.stdout  # the hierarchical variants need groups
    result = read_output(tmp_path / "out.json")
    assert_same_as_library(result, eplb_ext.rebalance_experts(w, P, P // G, None, 1, "deepseek"))


def test_rebalance_report_numbers(cli, tmp_path, tokens):
    save_input("pt-tensor", tokens, tmp_path)
    proc = cli("rebalance", "loads.pt", *DEPLOY_ARGS, "--algorithm", "deepseek", "-o", "out.pt")
    w = metrics.expert_load(tokens)
    after = metrics.balancedness(w, expected(tokens, "deepseek")[0], G)
    before = metrics.balancedness(w, metrics.trivial_placement(E, P, L), G)
    row = next(line for line in proc.stdout.splitlines() if line.startswith("deepseek  <- written"))
    assert row.split()[3] == f"{float(after.mean()):.3f}"
    row = next(line for line in proc.stdout.splitlines() if line.startswith("trivial"))
    assert row.split()[5] == f"{float(before.mean()):.3f}"  # after "trivial (p % E) (before)"


def test_rebalance_previous_placement(cli, tmp_path, tokens):
    save_input("pt-tensor", tokens, tmp_path)
    first = cli("rebalance", "loads.pt", *DEPLOY_ARGS, "--algorithm", "deepseek", "-o", "old.json")
    assert first.returncode == 0, first.stderr
    proc = cli("rebalance", "loads.pt", *DEPLOY_ARGS, "--algorithm", "deepseek", "--previous", "old.json",
                   "-o", "new.pt")
    assert proc.returncode == 0, proc.stderr
    assert "moved" in proc.stdout
    # The same load placed again moves nothing.
    row = next(line for line in proc.stdout.splitlines() if line.startswith("deepseek  <- written"))
    assert row.split()[-1] == "0"
    trivial_moved = metrics.experts_moved(expected(tokens, "deepseek")[0], metrics.trivial_placement(E, P, L), G)
    row = next(line for line in proc.stdout.splitlines() if line.startswith("trivial"))
    assert row.split()[-1] == str(int(trivial_moved.sum()))


def test_rebalance_previous_placement_of_other_integer_dtypes(cli, tmp_path, tokens):
    # A placement saved as uint64 (torch compares no uint64 tensors on the
    # CPU) is read as the int64 one it equals.
    save_input("pt-tensor", tokens, tmp_path)
    ref = expected(tokens, "deepseek")[0]
    torch.save({"physical_to_logical_map": ref.to(torch.uint64)}, tmp_path / "u64.pt")
    proc = cli("rebalance", "loads.pt", *DEPLOY_ARGS, "--algorithm", "deepseek", "--previous", "u64.pt",
               "-o", "new.pt")
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("deepseek  <- written"))
    assert row.split()[-1] == "0"


def test_unusual_tensors_and_deep_json_are_errors(cli, tmp_path, tokens):
    save_input("pt-tensor", tokens, tmp_path)
    good = expected(tokens, "deepseek")[0]
    odd = {
        "sparse.pt": (good.to_sparse(), "torch.sparse_coo"),
        "meta.pt": (torch.empty(good.shape, dtype=torch.int64, device="meta"), "a meta tensor"),
    }
    for name, (t, fragment) in odd.items():
        torch.save({"physical_to_logical_map": t}, tmp_path / name)
        assert_error(cli("rebalance", "loads.pt", *DEPLOY_ARGS, "--previous", name, "-o", "o.pt"), name, fragment)
    torch.save(tokens.to_sparse(), tmp_path / "sparse_loads.pt")
    assert_error(cli("rebalance", "sparse_loads.pt", *DEPLOY_ARGS, "-o", "o.pt"), "torch.sparse_coo")
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    assert_error(cli("rebalance", "deep.json", *DEPLOY_ARGS, "-o", "o.pt"), "nested too deeply")
    # A previous placement far from the loads is also one error line.
    wrapped = good.clone()
    wrapped[0, 0] = -3  # as uint64: 2**64 - 3
    torch.save({"physical_to_logical_map": wrapped.to(torch.uint64)}, tmp_path / "wrapped.pt")
    assert_error(cli("rebalance", "loads.pt", *DEPLOY_ARGS, "--previous", "wrapped.pt", "-o", "o.pt"),
                 f"placement holds expert {2**64 - 3}")


def test_more_inputs_that_are_one_error_line(cli, tmp_path, monkeypatch):
    torch.save(torch.zeros(0, 3, 16), tmp_path / "nosteps.pt")
    assert_error(cli("rebalance", "nosteps.pt", "-P", "32", "-G", "8", "-o", "o.pt"), "no steps")
    assert not (tmp_path / "o.pt").exists()
    for command in (("demo", "--layers", "1"), ("bench", "--quick")):
        proc = cli(*command, "--seed", str(2**63))
        assert proc.returncode == 2 and "the largest seed" in proc.stderr
    proc = cli("demo", "--repeats", "1001")
    assert proc.returncode == 2 and "more than 1000 timed calls" in proc.stderr
    # Running out of memory is an error line with a hint, not a traceback.
    torch.save(torch.randint(1, 9, (2, 1, 4)), tmp_path / "l.pt")

    def no_memory(*args, **kwargs):
        raise MemoryError("could not allocate 8 GiB")

    monkeypatch.setattr(cli_module, "rebalance_experts", no_memory)
    assert_error(cli("rebalance", "l.pt", "-P", "8", "-G", "2", "-o", "o.pt"), "out of memory", "8 GiB")


def test_rebalance_many_slots_reports_quickly(cli, tmp_path):
    # The report's lower bound no longer takes a Python step per slot: four
    # million slots for four experts finish (they took minutes).
    torch.save(torch.randint(1, 100, (1, 1, 4)), tmp_path / "l.pt")
    proc = cli("rebalance", "l.pt", "-P", "4000000", "-G", "1", "-o", "o.pt")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed (pip install matplotlib)")
def test_rebalance_plot(tmp_path, tokens):
    save_input("pt-tensor", tokens, tmp_path)
    proc = run_cli("rebalance", "loads.pt", *DEPLOY_ARGS, "-o", "out.pt", "--plot", "balance.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    png = (tmp_path / "balance.png").read_bytes()
    assert len(png) > 1000 and png.startswith(b"\x89PNG")
    assert "wrote balance.png" in proc.stdout
    assert_same_as_library(read_output(tmp_path / "out.pt"), expected(tokens))


def test_plot_without_matplotlib_in_process(cli, tmp_path, tokens, monkeypatch):
    save_input("pt-tensor", tokens, tmp_path)
    # A None entry in sys.modules makes the import raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    proc = cli("rebalance", "loads.pt", *DEPLOY_ARGS, "-o", "out.pt", "--plot", "balance.png")
    assert_error(proc, "--plot needs matplotlib", "pip install matplotlib")
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed (pip install matplotlib)")
def test_plot_format_unknown(cli, tmp_path, tokens):
    save_input("pt-tensor", tokens, tmp_path)
    assert_error(cli("rebalance", "loads.pt", *DEPLOY_ARGS, "-o", "out.pt", "--plot", "balance.xyz"),
                 "matplotlib cannot write '.xyz' images", ".png")


def stand_in_module(folder, name):
    """A package called ``name`` whose import fails, as if not installed."""
    pkg = folder / "fake_site" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"raise ImportError({'No module named ' + name!r})\n")
    return folder / "fake_site"


def test_plot_without_matplotlib(tmp_path, tokens):
    save_input("pt-tensor", tokens, tmp_path)
    fake = stand_in_module(tmp_path, "matplotlib")
    proc = run_cli("rebalance", "loads.pt", *DEPLOY_ARGS, "-o", "out.pt", "--plot", "balance.png", cwd=tmp_path,
                   extra_path=fake)
    assert_error(proc, "pip install matplotlib")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.pt").exists()  # refused before any work


def test_safetensors_without_the_package(tmp_path, tokens):
    (tmp_path / "loads.safetensors").write_bytes(b"\0" * 16)
    fake = stand_in_module(tmp_path, "safetensors")
    proc = run_cli("rebalance", "loads.safetensors", *DEPLOY_ARGS, "-o", "out.pt", cwd=tmp_path, extra_path=fake)
    assert_error(proc, "safetensors package", "pip install safetensors")


# --------------------------------------------------------------------------
# mistakes
# --------------------------------------------------------------------------


def test_missing_file(tmp_path):
    assert_error(run_cli("rebalance", "nope.pt", *DEPLOY_ARGS, "-o", "o.pt", cwd=tmp_path), "nope.pt: no such file")


def test_unknown_input_format(cli, tmp_path):
    (tmp_path / "loads.csv").write_text("1,2,3\n")
    assert_error(cli("rebalance", "loads.csv", *DEPLOY_ARGS, "-o", "o.pt"), "unknown input format '.csv'", ".npy")


def test_unknown_output_format(cli, tmp_path, tokens):
    save_input("pt-tensor", tokens, tmp_path)
    assert_error(cli("rebalance", "loads.pt", *DEPLOY_ARGS, "-o", "o.csv"), "unknown output format", ".json")


def test_output_folder_missing(cli, tmp_path, tokens):
    save_input("pt-tensor", tokens, tmp_path)
    assert_error(cli("rebalance", "loads.pt", *DEPLOY_ARGS, "-o", "no/such/o.pt"), "does not exist")


@pytest.mark.parametrize("shape", [(16,), (2, 2, 2, 16)])
def test_bad_shape(cli, tmp_path, shape):
    torch.save(torch.ones(shape), tmp_path / "loads.pt")
    assert_error(cli("rebalance", "loads.pt", *DEPLOY_ARGS, "-o", "o.pt"), f"got shape {shape}")


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("[[1, 2], [3]]", "not a rectangular array"),
        ("[[1, 2], [3, \"x\"]]", "not a rectangular array"),
        ("{\"loads\": [[1, 2]], \"other\": [[3]]}", "no 'logical_count'"),
        ("not json", "not valid JSON"),
    ],
)
def test_bad_json(cli, tmp_path, content, fragment):
    (tmp_path / "loads.json").write_text(content)
    assert_error(cli("rebalance", "loads.json", *DEPLOY_ARGS, "-o", "o.pt"), fragment)


def test_corrupt_pt(cli, tmp_path):
    (tmp_path / "loads.pt").write_bytes(b"this is not a torch file")
    assert_error(cli("rebalance", "loads.pt", *DEPLOY_ARGS, "-o", "o.pt"), "not a readable torch file")


def test_negative_load(cli, tmp_path, tokens):
    bad = tokens.clone()
    bad[1, 2, 3] = -5
    torch.save(bad, tmp_path / "loads.pt")
    assert_error(cli("rebalance", "loads.pt", *DEPLOY_ARGS, "-o", "o.pt"), "loads.pt: loads[1, 2, 3] = -5 is negative")


def test_slots_not_divisible_by_gpus_suggests_nearest(cli, tmp_path, tokens):
    save_input("pt-tensor", tokens, tmp_path)
    proc = cli("rebalance", "loads.pt", "-P", 26, "-G", 4, "-o", "o.pt")
    assert_error(proc, "--num-physical-experts 26 is not divisible by --num-gpus 4", "try --num-physical-experts 24 or 28")


def test_too_few_slots_suggests_smallest(cli, tmp_path, tokens):
    save_input("pt-tensor", tokens, tmp_path)
    proc = cli("rebalance", "loads.pt", "-P", 8, "-G", 4, "-o", "o.pt")
    assert_error(proc, "smaller than the number of logical experts 16", "try --num-physical-experts 16 ")


def test_nodes_not_dividing_groups_suggests_nodes(cli, tmp_path, tokens):
    save_input("pt-tensor", tokens, tmp_path)
    proc = cli("rebalance", "loads.pt", "-P", P, "-G", G, "--num-groups", C, "--num-nodes", 3,
                   "--algorithm", "deepseek_hierarchical", "-o", "o.pt")
    assert_error(proc, "num_nodes=3 must divide num_groups=4", "one of [1, 2, 4]", "--algorithm deepseek")


def test_hierarchical_without_groups(cli, tmp_path, tokens):
    save_input("pt-tensor", tokens, tmp_path)
    proc = cli("rebalance", "loads.pt", "-P", P, "-G", G, "--algorithm", "deepseek_vec_hierarchical", "-o", "o.pt")
    assert_error(proc, "needs num_groups", "--algorithm deepseek_vec")


def test_elastic_hierarchical_without_groups_suggests_elastic(cli, tmp_path, tokens):
    save_input("pt-tensor", tokens, tmp_path)
    proc = cli("rebalance", "loads.pt", "-P", P, "-G", G, "--algorithm", "elasticity_aware_hierarchical", "-o", "o.pt")
    assert_error(proc, "needs num_groups", "--algorithm elasticity_aware for a model")


def test_groups_not_dividing_experts(cli, tmp_path, tokens):
    save_input("pt-tensor", tokens, tmp_path)
    proc = cli("rebalance", "loads.pt", "-P", P, "-G", G, "--num-groups", 3, "--algorithm", "deepseek_hierarchical",
                   "-o", "o.pt")
    assert_error(proc, "num_groups=3 must divide", "one of [1, 2, 4, 8, 16]")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["-P", "0", "-G", "4"], "not a positive integer"),
        (["-P", "x", "-G", "4"], "is not an integer"),
        (["-P", "24", "-G", "4", "--algorithm", "foo"], "invalid choice"),
        (["-G", "4"], "required"),
    ],
)
def test_usage_errors(cli, tmp_path, tokens, args, fragment):
    save_input("pt-tensor", tokens, tmp_path)
    proc = cli("rebalance", "loads.pt", *args, "-o", "o.pt")
    assert proc.returncode == 2 and fragment in proc.stderr and "usage:" in proc.stderr


def test_previous_placement_mismatch(cli, tmp_path, tokens):
    save_input("pt-tensor", tokens, tmp_path)
    (tmp_path / "old.json").write_text(json.dumps({"physical_to_logical_map": [[0, 1]]}))
    proc = cli("rebalance", "loads.pt", *DEPLOY_ARGS, "--previous", "old.json", "-o", "o.pt")
    assert_error(proc, "does not fit 4 layers x 24 slots")


# --------------------------------------------------------------------------
# in process
# --------------------------------------------------------------------------


def test_main_returns_exit_codes(tmp_path, capsys):
    assert main(["--version"]) == 0
    assert eplb_ext.__version__ in capsys.readouterr().out
    assert main(["rebalance", str(tmp_path / "missing.npy"), "-P", "24", "-G", "4", "-o", str(tmp_path / "o.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eplb-ext: error: ") and "no such file" in err
    assert main(["demo", "--layers", "0"]) == 2


# --------------------------------------------------------------------------
# files a new user gets wrong
# --------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".json"])
def test_placement_given_as_loads(cli, tmp_path, tokens, suffix):
    save_input("pt-tensor", tokens, tmp_path)
    assert cli("rebalance", "loads.pt", *DEPLOY_ARGS, "-o", "placement" + suffix).returncode == 0
    proc = cli("rebalance", "placement" + suffix, *DEPLOY_ARGS, "-o", "again.pt")
    assert_error(proc, "holds a placement (physical_to_logical_map), not loads", "goes to --previous")
    assert not (tmp_path / "again.pt").exists()


def test_output_is_the_input(cli, tmp_path, tokens):
    save_input("pt-tensor", tokens, tmp_path)
    before = (tmp_path / "loads.pt").read_bytes()
    for same in ("loads.pt", "./loads.pt", str(tmp_path / "loads.pt")):
        proc = cli("rebalance", "loads.pt", *DEPLOY_ARGS, "-o", same)
        assert_error(proc, "is the input file", "--force")
    assert (tmp_path / "loads.pt").read_bytes() == before
    proc = cli("rebalance", "loads.pt", *DEPLOY_ARGS, "-o", "loads.pt", "--force")
    assert proc.returncode == 0, proc.stderr
    assert_same_as_library(read_output(tmp_path / "loads.pt"), expected(tokens))


def test_previous_with_other_expert_count_writes_nothing(cli, tmp_path, tokens):
    save_input("pt-tensor", tokens, tmp_path)
    # A model with 32 experts, same layers and slots: ids up to 31.
    old = torch.arange(P).repeat(L, 1) + 8
    torch.save({"physical_to_logical_map": old}, tmp_path / "old.pt")
    proc = cli("rebalance", "loads.pt", *DEPLOY_ARGS, "--previous", "old.pt", "-o", "new.pt")
    assert_error(proc, "old.pt: placement holds expert 16 (layer 0, slot 8), but the loads have 16 experts (ids 0..15, or -1 for an empty slot)")
    assert not (tmp_path / "new.pt").exists()


def test_previous_with_float_ids(cli, tmp_path, tokens):
    save_input("pt-tensor", tokens, tmp_path)
    torch.save({"physical_to_logical_map": torch.zeros(L, P)}, tmp_path / "old.pt")
    proc = cli("rebalance", "loads.pt", *DEPLOY_ARGS, "--previous", "old.pt", "-o", "new.pt")
    assert_error(proc, "placement has dtype torch.float32")
    assert not (tmp_path / "new.pt").exists()


def test_pt_is_read_onto_the_cpu(cli, tmp_path, tokens, monkeypatch):
    save_input("pt-tensor", tokens, tmp_path)
    seen = []
    real_load = torch.load

    def load(*args, **kwargs):
        seen.append(kwargs.get("map_location"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    assert cli("rebalance", "loads.pt", *DEPLOY_ARGS, "-o", "o.json").returncode == 0
    assert seen and all(str(m) == "cpu" for m in seen)


@pytest.mark.parametrize("algorithm", ["deepseek", "deepseek_vec"])
def test_zero_steps(cli, tmp_path, tokens, algorithm):
    padded = torch.cat([tokens, torch.zeros(2, L, E, dtype=tokens.dtype)])  # a recorder buffer not yet full
    torch.save({"logical_count": padded}, tmp_path / "dump.pt")
    kept = cli("rebalance", "dump.pt", *DEPLOY_ARGS, "--algorithm", algorithm, "-o", "kept.pt")
    assert kept.returncode == 0, kept.stderr
    assert "2 of 5 steps are all zero" in kept.stdout and "--drop-zero-steps" in kept.stdout
    assert_same_as_library(read_output(tmp_path / "kept.pt"), expected(padded, algorithm))
    dropped = cli("rebalance", "dump.pt", *DEPLOY_ARGS, "--algorithm", algorithm, "--drop-zero-steps", "-o", "d.pt")
    assert dropped.returncode == 0, dropped.stderr
    assert "dropped 2 all-zero steps of 5" in dropped.stdout and f"{S} steps x" in dropped.stdout
    assert_same_as_library(read_output(tmp_path / "d.pt"), expected(tokens, algorithm))
    # Nothing to drop: no note.
    save_input("pt-tensor", tokens, tmp_path)
    assert "all-zero" not in cli("rebalance", "loads.pt", *DEPLOY_ARGS, "--drop-zero-steps", "-o", "x.pt").stdout


@pytest.mark.parametrize("args, reason", [
    (DEPLOY_ARGS, "deepseek_hierarchical (auto: 4 expert groups over 2 node(s), which divide the groups and the 4 GPUs)"),
    (["-P", P, "-G", G], "deepseek (auto: no expert groups (--num-groups not given))"),
    (["-P", P, "-G", G, "--num-groups", 4, "--num-nodes", 3], "deepseek (auto: 3 nodes do not divide the 4 expert groups)"),
    (["-P", P, "-G", G, "--num-groups", 3], "deepseek (auto: 3 groups do not divide the 16 experts)"),
    (["-P", 48, "-G", 8, "--num-groups", 4, "--num-nodes", 4], "deepseek_hierarchical (auto: 4 expert groups over 4"),
    (["-P", P, "-G", 6, "--num-groups", 4, "--num-nodes", 4], "deepseek (auto: 4 nodes do not divide the 6 GPUs)"),
])
def test_auto_says_why(cli, tmp_path, tokens, args, reason):
    save_input("pt-tensor", tokens, tmp_path)
    proc = cli("rebalance", "loads.pt", *args, "-o", "o.pt")
    assert proc.returncode == 0, proc.stderr
    assert f"algorithm {reason}" in proc.stdout


def test_rebalance_against_previous_with_budget(cli, tmp_path, tokens):
    old = (tokens.double() * torch.linspace(0.2, 3.0, E)).round().long()
    save_input("pt-tensor", old, tmp_path)
    assert cli("rebalance", "loads.pt", *DEPLOY_ARGS, "--algorithm", "deepseek", "-o", "old.pt").returncode == 0
    save_input("pt-tensor", tokens, tmp_path)
    proc = cli("rebalance", "loads.pt", *DEPLOY_ARGS, "--algorithm", "deepseek", "--previous", "old.pt",
               "--max-moves", "3", "--min-improvement", "0.5", "-o", "new.pt")
    assert proc.returncode == 0, proc.stderr
    prev = torch.load(tmp_path / "old.pt")["physical_to_logical_map"]
    written = torch.load(tmp_path / "new.pt")["physical_to_logical_map"]
    searched = eplb_ext.rebalance_experts(tokens, P, P // G, C, N, "deepseek", previous_physical_to_logical_map=prev,
                                          max_moves=3)[0]
    lines = proc.stdout.splitlines()
    row = next(line for line in lines if line.startswith("incremental (max 3 moves/layer)"))
    assert int(row.split()[-2]) == metrics.moves(prev, searched, P // G).total
    assert int(row.split()[-2]) <= 3 * L
    kept = sum(bool(torch.equal(written[i], prev[i])) and not bool(torch.equal(searched[i], prev[i])) for i in range(L))
    assert kept > 0
    assert any(line.startswith(f"written ({kept} of {L} layers kept)") for line in lines)
    assert any(line.startswith("relabeled") for line in lines) and any(line.startswith("fresh (deepseek)") for line in lines)


@pytest.mark.parametrize("args,fragment", [
    (["--max-moves", "3"], "need --previous"),
    (["--min-improvement", "0.1"], "need --previous"),
])
def test_budget_needs_previous(cli, tmp_path, tokens, args, fragment):
    save_input("pt-tensor", tokens, tmp_path)
    assert_error(cli("rebalance", "loads.pt", *DEPLOY_ARGS, *args, "-o", "o.pt"), fragment)


@pytest.mark.parametrize("args,fragment", [
    (["--max-moves", "-1"], "is negative"),
    (["--min-improvement", "2"], "not in [0, 1]"),
    (["--min-improvement", "nan"], "not in [0, 1]"),
    (["--min-improvement", "x"], "not a number"),
])
def test_budget_usage_errors(cli, tmp_path, tokens, args, fragment):
    save_input("pt-tensor", tokens, tmp_path)
    proc = cli("rebalance", "loads.pt", *DEPLOY_ARGS, *args, "-o", "o.pt")
    assert proc.returncode == 2 and fragment in proc.stderr


def test_previous_with_empty_slots_is_relabeled_against(cli, tmp_path, tokens):
    save_input("pt-tensor", tokens, tmp_path)
    old = eplb_ext.rebalance_experts(tokens, P, P // G, C, N, "deepseek")[0].clone()
    old[:, ::5] = -1  # slots a server left empty
    torch.save({"physical_to_logical_map": old}, tmp_path / "old.pt")
    proc = cli("rebalance", "loads.pt", *DEPLOY_ARGS, "--algorithm", "deepseek", "--previous", "old.pt", "-o", "new.pt")
    assert proc.returncode == 0, proc.stderr
    written = torch.load(tmp_path / "new.pt")["physical_to_logical_map"]
    expected = eplb_ext.rebalance_experts(tokens, P, P // G, C, N, "deepseek", previous_physical_to_logical_map=old)[0]
    assert torch.equal(written, expected)
