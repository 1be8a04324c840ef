"""What the build produced: the ops, their kernels and the build record."""

import torch

import eplb_ext

OPS = ["balanced_packing", "replicate_experts", "deepseek", "logical_to_physical", "deepseek_vec", "migrate"]


def has_kernel(op: str, key: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"eplb_ext::{op}", key)


def test_every_op_has_a_cpu_kernel():
    for op in OPS:
        assert has_kernel(op, "CPU"), op


def test_every_op_has_a_fake_kernel():
    # The fake kernels are what torch.compile and opcheck trace through.
    from torch._subclasses.fake_tensor import FakeTensorMode

    ops = torch.ops.eplb_ext
    with FakeTensorMode():
        x = torch.empty(3, 4, 16)
        w = torch.empty(4, 16)
        p2l, rank, cnt = ops.deepseek(x, 24, 3, 4, 2)
        assert (p2l.shape, rank.shape, cnt.shape) == ((4, 24), (4, 24), (4, 16))
        assert ops.logical_to_physical(p2l, rank, 16, 5).shape == (4, 16, 5)
        p2l, l2p, cnt = ops.deepseek_vec(x, 24, 3, 4, 2)
        assert (p2l.dtype, l2p.shape) == (torch.int32, (4, 16, 9))
        assert ops.balanced_packing(w, 4)[0].shape == (4, 16)
        assert ops.replicate_experts(w, 20)[0].shape == (4, 20)
        act = torch.empty(0, dtype=torch.uint8)
        p2l, rank, cnt, info = ops.migrate(x, p2l.long(), p2l.long(), p2l.long(), act, 3, 4, 2, 5, 0.0)
        assert (p2l.shape, rank.shape, cnt.shape, info.shape) == ((4, 24), (4, 24), (4, 16), (4, 3))


def test_cuda_build_registers_cuda_kernels():
    info = eplb_ext.build_info()
    built_with_cuda = info["cuda_version"] is not None
    for op in OPS:
        assert has_kernel(op, "CUDA") == built_with_cuda, (op, info)


def test_build_info_and_version():
    info = eplb_ext.build_info()
    local = "cpu" if info["cuda_version"] is None else "cu" + info["cuda_version"].replace(".", "")
    assert info["torch_target_version"] == "0x020a000000000000"
    if info["version"] not in ("0.1.0+local",):
        assert info["version"].endswith("+" + local), info
    if info["cuda_version"] is not None:
        assert info["cuda_archs"]
