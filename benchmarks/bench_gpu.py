"""GPU benchmark on the DeepSeek-V3 shape (58 layers x 256 experts -> 288
slots, 8 groups, 4 nodes, 32 GPUs).

For each variant it times, with CUDA events after warm-up (median of the
repeats):
  gpu        rebalance_experts on the CUDA tensor, fixed width, no value check
             (no host synchronisation: the graph-capturable call);
  gpu_default  the default call (value check and, for deepseek, the width read);
  via_host   copy the loads to the host, run the CPU op, copy the results back.

    python benchmarks/bench_gpu.py [--json OUT] [--repeats N]
"""

import argparse
import json
import statistics

import torch

import eplb_ext

SHAPE = dict(L=58, E=256, P=288, k=9, C=8, N=4)
VARIANTS = ["deepseek", "deepseek_hierarchical", "deepseek_vec", "deepseek_vec_hierarchical"]


def cuda_time_ms(fn, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device")

    s = SHAPE
    gen = torch.Generator().manual_seed(0)
    rows = []
    cases = [(a, 1) for a in VARIANTS] + [("deepseek_vec", 1000), ("deepseek_vec_hierarchical", 1000)]
    for algo, S in cases:
        base = torch.rand(s["L"], s["E"], generator=gen) ** 4 * 200
        x = torch.poisson(base.expand(S, -1, -1).contiguous(), generator=gen).to(torch.int64)
        xg = x.cuda()
        args_ = (s["P"], s["k"], s["C"], s["N"], algo)
        repeats = args.repeats if S == 1 else max(5, args.repeats // 5)

        def gpu():
            return eplb_ext.rebalance_experts(xg, *args_, fixed_width=True, check_values=False)

        def gpu_default():
            return eplb_ext.rebalance_experts(xg, *args_)

        def via_host():
            out = eplb_ext.rebalance_experts(xg.cpu(), *args_, fixed_width=True)
            return [t.cuda() for t in out]

        ref = [t.cpu() for t in via_host()]
        same = all(torch.equal(a.cpu(), b) for a, b in zip(gpu(), ref))
        row = dict(
            variant=algo,
            steps=S,
            gpu_ms=cuda_time_ms(gpu, repeats),
            gpu_default_ms=cuda_time_ms(gpu_default, repeats),
            via_host_ms=cuda_time_ms(via_host, max(5, repeats // 2)),
            identical_to_cpu=same,
        )
        row["speedup_vs_host"] = row["via_host_ms"] / row["gpu_ms"]
        rows.append(row)
        print(
            f"{algo:28s} S={S:<5d} gpu {row['gpu_ms']*1e3:9.1f} us   default {row['gpu_default_ms']*1e3:9.1f} us"
            f"   via host {row['via_host_ms']*1e3:9.1f} us   x{row['speedup_vs_host']:.1f}   identical={same}",
            flush=True,
        )
    result = dict(
        device=torch.cuda.get_device_name(),
        torch=torch.__version__,
        build=eplb_ext.build_info(),
        shape=SHAPE,
        rows=rows,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
