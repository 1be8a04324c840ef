"""The GPU kernels worth profiling, each launched once inside a profiler
range, for Nsight Compute:

    ncu --profile-from-start off --section SpeedOfLight --section Occupancy \
        --section LaunchStats --section WarpStateStats python benchmarks/profile_gpu.py

DeepSeek-V3 shape (58 layers, 256 experts, 288 slots, 8 groups, 4 nodes):
``deepseek`` and ``deepseek_hierarchical`` at fixed width, ``deepseek_vec``
at S = 1 and S = 1000, and the migration call (``deepseek`` against a
previous placement, M = 29). Every call runs twice first, outside the range,
so the range holds no first-launch costs. Prints what ran; exits 0 with a
message when there is no GPU.
"""

from __future__ import annotations

import sys

import torch

from common import eplb_ext

L, E, P, K, C, N = 58, 256, 288, 9, 8, 4


def calls():
    gen = torch.Generator().manual_seed(0)
    one = torch.poisson(torch.rand(1, L, E, generator=gen) ** 4 * 200, generator=gen).cuda()
    many = torch.poisson(torch.rand(1000, L, E, generator=gen) ** 4 * 20, generator=gen).cuda()
    drift = torch.exp(0.05 * torch.randn(1, L, E, generator=gen)).cuda()
    prev = eplb_ext.rebalance_experts(one, P, K, 1, 1, "deepseek", fixed_width=True)[0]
    newer = torch.poisson(one * drift)

    def place(tokens, algorithm, **kw):
        return lambda: eplb_ext.rebalance_experts(tokens, P, K, C, N, algorithm, fixed_width=True,
                                                  check_values=False, **kw)

    return [
        ("deepseek S=1", place(one, "deepseek")),
        ("deepseek_hierarchical S=1", place(one, "deepseek_hierarchical")),
        ("deepseek_vec S=1", place(one, "deepseek_vec")),
        ("deepseek_vec S=1000", place(many, "deepseek_vec")),
        ("migrate deepseek M=29", place(newer, "deepseek", previous_physical_to_logical_map=prev, max_moves=29)),
    ]


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to profile")
        return 0
    todo = calls()
    for _, fn in todo:
        fn(), fn()
    torch.cuda.synchronize()
    for name, fn in todo:
        torch.cuda.profiler.start()
        fn()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
        print("profiled", name, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
