"""One small call of every eplb_ext op on one device, for compute-sanitizer.

    compute-sanitizer --tool memcheck --error-exitcode 1 python benchmarks/sanitize_ops.py

Each call goes through the public Python API where there is one (so the
arguments are the ones users pass), on inputs small enough that racecheck
and synccheck, which slow kernels down by orders of magnitude, finish in
seconds. The calls run under a dispatch mode that records which
``eplb_ext`` ops actually ran; the script fails if an op that has a kernel
for the device was never reached, so an op added later cannot silently
escape the sanitizers.

``--device cpu`` runs the same calls on the CPU kernels: a check, without a
GPU, that the driver itself is right. Exit status: 0 when every call ran and
every registered op was reached, 1 otherwise, 0 with a message when the
device is absent and ``--skip-missing`` is given.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Callable, List, Set, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

try:
    import eplb_ext
except ImportError:
    # An in-place build (python setup.py build_ext --inplace) of this checkout.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import eplb_ext

from eplb_ext import deepseek as ds_api

NAMESPACE = "eplb_ext"
# A small shape with every structure of the DeepSeek-V3 one: groups that
# split over nodes, several GPUs per node, replicas beyond one per expert.
S, L, E, P, K, C, N = 3, 2, 16, 24, 3, 4, 2  # 8 GPUs, 2 nodes
G = P // K

Call = Tuple[str, Callable[[], object]]


def registered_ops(dispatch_key: str) -> Set[str]:
    """Names of the ops in the namespace with a kernel for ``dispatch_key``
    ("CUDA", "CPU"); ops without one (Python composites) run through those.
    Test-only ops (a leading underscore: the host runs of the lane-parallel
    code) are left out: servers never call them."""
    prefix = NAMESPACE + "::"
    return {
        name[len(prefix):]
        for name in torch._C._dispatch_get_all_op_names()
        if name.startswith(prefix)
        and not name.startswith(prefix + "_")
        and torch._C._dispatch_has_kernel_for_dispatch_key(name, dispatch_key)
    }


class OpRecorder(TorchDispatchMode):
    """Notes every op of the namespace that is dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == NAMESPACE:
            self.seen.add(func._schema.name.split("::", 1)[1])
        return func(*args, **(kwargs or {}))


def calls(device: str) -> List[Call]:
    """The calls, labelled; inputs are made on the CPU and copied, so the
    only kernels the sanitizers watch besides ours are copies and fills."""
    gen = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.rand(S, L, E, generator=gen) ** 2 * 50, generator=gen).to(torch.int64).to(device)
    xf = x.float()
    w = x.sum(0)
    # A previous placement: the fresh one of other loads, so migrate has work.
    other = torch.poisson(torch.rand(S, L, E, generator=gen) * 50, generator=gen).to(device)
    prev = eplb_ext.rebalance_experts(other, P, K, C, N, "deepseek", fixed_width=True)[0]
    active = torch.ones(G, dtype=torch.bool)
    active[[1, 6]] = False  # one dead GPU on each node
    ops = torch.ops.eplb_ext
    fixed = dict(fixed_width=True, check_values=False)

    def rebalance(algo: str, loads: torch.Tensor = x, **kw):
        return lambda: eplb_ext.rebalance_experts(loads, P, K, C, N, algo, **kw)

    return [
        ("balanced_packing", lambda: ds_api.balanced_packing(w, 4)),
        ("replicate_experts", lambda: ds_api.replicate_experts(w, 20)),
        ("deepseek op", lambda: ops.deepseek(xf, P, K, C, N)),
        ("logical_to_physical op", lambda: ops.logical_to_physical(*ops.deepseek(x, P, K, 1, 1)[:2], E, P - E + 1)),
        ("deepseek_vec op", lambda: ops.deepseek_vec(xf, P, K, C, N)),
        ("deepseek", rebalance("deepseek")),
        ("deepseek fixed width", rebalance("deepseek", **fixed)),
        ("deepseek_hierarchical", rebalance("deepseek_hierarchical", xf)),
        ("deepseek_vec", rebalance("deepseek_vec")),
        ("deepseek_vec_hierarchical", rebalance("deepseek_vec_hierarchical", xf, **fixed)),
        ("deepseek_vec S=1 (2-D loads)", rebalance("deepseek_vec", x[0])),
        ("migrate: deepseek, relabel", rebalance("deepseek", previous_physical_to_logical_map=prev)),
        ("migrate: deepseek, max_moves", rebalance("deepseek", previous_physical_to_logical_map=prev, max_moves=2)),
        ("migrate: deepseek_vec_hierarchical, max_moves",
         rebalance("deepseek_vec_hierarchical", previous_physical_to_logical_map=prev, max_moves=2,
                   min_improvement=0.01)),
        ("elasticity_aware", rebalance("elasticity_aware", active_ranks=active)),
        ("elasticity_aware_hierarchical fixed width",
         rebalance("elasticity_aware_hierarchical", active_ranks=active.to(device), fixed_width=True)),
        ("elasticity_aware + migrate",
         rebalance("elasticity_aware", active_ranks=active, previous_physical_to_logical_map=prev, max_moves=2)),
    ]


def run(device: str) -> int:
    """Runs every call once; returns the number of failures (a failed call,
    or a registered op that no call reached)."""
    key = "CUDA" if device.startswith("cuda") else device.upper()
    failures = 0
    recorder = OpRecorder()
    with recorder:
        for label, fn in calls(device):
            try:
                fn()
                if key == "CUDA":
                    # Surfaces an asynchronous kernel fault at the call that caused it.
                    torch.cuda.synchronize()
                print(f"ok    {label}", flush=True)
            except Exception:  # keep going: one report for every call
                failures += 1
                print(f"FAIL  {label}\n{traceback.format_exc()}", flush=True)
    missing = sorted(registered_ops(key) - recorder.seen)
    if missing:
        failures += len(missing)
        print(f"FAIL  ops with a {key} kernel that no call reached: {', '.join(missing)}", flush=True)
    print(f"{NAMESPACE} ops reached on {device}: {', '.join(sorted(recorder.seen))}")
    print(f"{'all calls ran' if failures == 0 else f'{failures} failure(s)'}", flush=True)
    return failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--skip-missing", action="store_true",
                        help="exit 0 with a message when the device is not present")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("sanitize_ops.py: no CUDA device present", flush=True)
        return 0 if args.skip_missing else 1
    return 1 if run(args.device) else 0


if __name__ == "__main__":
    sys.exit(main())
