"""eplb_ext.integrations.sglang against a stand-in of SGLang's module layout
(``sglang.srt.eplb.eplb_algorithms`` and the elastic-EP state manager), built
in ``sys.modules`` by each test: SGLang is not installed here."""

from __future__ import annotations

import enum
import inspect
import logging
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

import eplb_ext
from eplb_ext import integrations
from eplb_ext.integrations import sglang as plugin
from helpers import assert_same, check_installed_entry_point, check_invariants, declared_entry_point

ROOT = Path(__file__).resolve().parents[1]
SIX = ("deepseek", "deepseek_hierarchical", "deepseek_vec", "deepseek_vec_hierarchical",
       "elasticity_aware", "elasticity_aware_hierarchical")


class SglangAlgorithm(enum.Enum):
    """SGLang's own enum: same names, other class (and one eplb_ext lacks)."""

    deepseek = enum.auto()
    deepseek_hierarchical = enum.auto()
    deepseek_vec = enum.auto()
    deepseek_vec_hierarchical = enum.auto()
    elasticity_aware = enum.auto()
    elasticity_aware_hierarchical = enum.auto()
    flash_lb = enum.auto()


def _module(monkeypatch, name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    monkeypatch.setitem(sys.modules, name, module)
    parent, _, child = name.rpartition(".")
    if parent:
        monkeypatch.setattr(sys.modules[parent], child, module, raising=False)
    return module


@pytest.fixture(autouse=True)
def clean_state():
    integrations._LOGGED.clear()
    yield
    plugin._ORIGINAL.clear()
    integrations._LOGGED.clear()


@pytest.fixture
def fake_sglang(monkeypatch):
    """SGLang's packages down to the dispatcher, whose own rebalance_experts
    records its calls; ``state.active_ranks`` is what the state manager holds."""
    calls = []

    def rebalance_experts(tokens_per_expert, num_physical_experts, num_local_physical_experts,
                          num_groups, num_nodes, algorithm):
        calls.append(algorithm)
        return "sglang's own"

    for name in ("sglang", "sglang.srt", "sglang.srt.eplb", "sglang.srt.elastic_ep"):
        _module(monkeypatch, name)
    dispatcher = _module(monkeypatch, plugin.TARGET, EplbAlgorithm=SglangAlgorithm,
                         rebalance_experts=rebalance_experts)
    state = types.SimpleNamespace(active_ranks=None)

    class ElasticEPStateManager:
        _instance = None

        @classmethod
        def instance(cls):
            return cls._instance

    _module(monkeypatch, plugin.STATE_MODULE, ElasticEPStateManager=ElasticEPStateManager)
    # The expert-location metadata: none until a test serves a placement.
    location = types.SimpleNamespace(metadata=None)
    _module(monkeypatch, plugin.LOCATION_MODULE, get_global_expert_location_metadata=lambda: location.metadata)
    monkeypatch.delenv(integrations.MAX_MOVES_ENV, raising=False)
    return types.SimpleNamespace(dispatcher=dispatcher, original=rebalance_experts, calls=calls,
                                 manager=ElasticEPStateManager, state=state, location=location)


def _serve(fake, placement):
    fake.location.metadata = types.SimpleNamespace(physical_to_logical_map=placement)


def _messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == plugin.logger.name]


def test_register_patches_the_dispatcher_once(fake_sglang, caplog):
    caplog.set_level(logging.INFO, logger=plugin.logger.name)
    assert plugin.register() is True
    assert fake_sglang.dispatcher.rebalance_experts is plugin.rebalance_experts
    assert plugin.register() is True  # idempotent: SGLang may load plugins again
    assert fake_sglang.dispatcher.rebalance_experts is plugin.rebalance_experts
    messages = _messages(caplog)
    assert len(messages) == 1 and "now runs on eplb_ext" in messages[0]
    assert plugin.unregister() is True
    assert fake_sglang.dispatcher.rebalance_experts is fake_sglang.original
    assert plugin.unregister() is False


def test_same_signature_as_sglang(fake_sglang):
    assert inspect.signature(plugin.rebalance_experts).parameters.keys() == \
        inspect.signature(fake_sglang.original).parameters.keys()


@pytest.mark.parametrize("name", SIX)
def test_dispatches_sglang_members_by_name(fake_sglang, name):
    plugin.register()
    tokens = torch.poisson(torch.rand(3, 4, 32) * 40).to(torch.int32)
    kwargs = dict(tokens_per_expert=tokens, num_physical_experts=48, num_local_physical_experts=6,
                  num_groups=4, num_nodes=2)
    out = fake_sglang.dispatcher.rebalance_experts(**kwargs, algorithm=SglangAlgorithm[name])
    assert_same(out, eplb_ext.rebalance_experts(tokens, 48, 6, 4, 2, name))
    assert all(t.device.type == "cpu" for t in out)
    check_invariants(out, name, 4, 32, 48, 6, 4, 2)
    assert fake_sglang.calls == []
    # eplb_ext's own members and plain names work too.
    assert_same(fake_sglang.dispatcher.rebalance_experts(**kwargs, algorithm=eplb_ext.EplbAlgorithm[name]), out)
    assert_same(fake_sglang.dispatcher.rebalance_experts(**kwargs, algorithm=name), out)


def test_auto_is_resolved_here(fake_sglang):
    plugin.register()
    tokens = torch.rand(1, 2, 16)
    out = fake_sglang.dispatcher.rebalance_experts(tokens, 32, 4, 4, 2, "auto")
    assert_same(out, eplb_ext.rebalance_experts(tokens, 32, 4, 4, 2, "deepseek_hierarchical"))
    assert fake_sglang.calls == []


def test_unknown_algorithm_goes_to_sglang(fake_sglang, caplog):
    plugin.register()
    caplog.set_level(logging.INFO, logger=plugin.logger.name)
    for _ in range(2):
        result = fake_sglang.dispatcher.rebalance_experts(torch.ones(1, 2, 8), 8, 2, None, 1, SglangAlgorithm.flash_lb)
        assert result == "sglang's own"
    assert fake_sglang.calls == [SglangAlgorithm.flash_lb] * 2
    assert sum("flash_lb" in m for m in _messages(caplog)) == 1


@pytest.mark.parametrize("name", ["elasticity_aware", "elasticity_aware_hierarchical"])
def test_elastic_reads_the_state_manager(fake_sglang, name):
    plugin.register()
    tokens = torch.rand(2, 3, 16) * 100
    call = lambda: fake_sglang.dispatcher.rebalance_experts(tokens, 32, 4, 4, 2, SglangAlgorithm[name])  # noqa: E731
    # No state manager instance: every GPU alive.
    assert_same(call(), eplb_ext.rebalance_experts(tokens, 32, 4, 4, 2, name))
    fake_sglang.manager._instance = fake_sglang.state
    fake_sglang.state.active_ranks = torch.tensor([1, 1, 0, 1, 1, 1, 1, 0], dtype=torch.int32)
    out = call()
    assert_same(out, eplb_ext.rebalance_experts(tokens, 32, 4, 4, 2, name, active_ranks=[1, 1, 0, 1, 1, 1, 1, 0]))
    assert bool((out[0][:, 8:12] == 0).all()) and int(out[2].sum()) == 3 * 24
    check_invariants(out, name, 3, 16, 32, 4, 4, 2, active_ranks=[1, 1, 0, 1, 1, 1, 1, 0])
    # The deepseek variants never read it.
    assert_same(fake_sglang.dispatcher.rebalance_experts(tokens, 32, 4, 4, 2, SglangAlgorithm.deepseek),
                eplb_ext.rebalance_experts(tokens, 32, 4, 4, 2, "deepseek"))


def test_elastic_with_older_state_getter(fake_sglang, monkeypatch):
    plugin.register()
    state_module = _module(monkeypatch, plugin.STATE_MODULE,
                           get_elastic_ep_state=lambda: types.SimpleNamespace(active_ranks=torch.tensor([0, 1, 1, 1])))
    assert plugin.active_ranks().tolist() == [0, 1, 1, 1]
    tokens = torch.rand(1, 2, 8)
    out = fake_sglang.dispatcher.rebalance_experts(tokens, 16, 4, None, 1, SglangAlgorithm.elasticity_aware)
    assert_same(out, eplb_ext.rebalance_experts(tokens, 16, 4, None, 1, "elasticity_aware", active_ranks=[0, 1, 1, 1]))
    del state_module.get_elastic_ep_state
    assert plugin.active_ranks() is None


def test_elastic_without_the_state_module(fake_sglang, monkeypatch):
    monkeypatch.setitem(sys.modules, plugin.STATE_MODULE, None)  # import fails
    assert plugin.active_ranks() is None


def test_no_sglang_is_a_logged_no_op(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "sglang", None)
    caplog.set_level(logging.INFO, logger=plugin.logger.name)
    assert plugin.register() is False
    assert plugin.register() is False
    messages = _messages(caplog)
    assert len(messages) == 1 and "SGLang not patched: cannot import sglang.srt.eplb.eplb_algorithms" in messages[0]
    assert plugin._ORIGINAL == {}


@pytest.mark.parametrize("change", ["no function", "other signature", "no enum"])
def test_unexpected_layout_is_a_logged_no_op(fake_sglang, caplog, change):
    module = fake_sglang.dispatcher
    if change == "no function":
        del module.rebalance_experts
    elif change == "other signature":
        module.rebalance_experts = lambda weight, num_replicas, algorithm: None
    else:
        del module.EplbAlgorithm
    before = module.__dict__.get("rebalance_experts")
    caplog.set_level(logging.INFO, logger=plugin.logger.name)
    assert plugin.register() is False
    assert plugin.register() is False
    assert module.__dict__.get("rebalance_experts") is before
    messages = _messages(caplog)
    assert len(messages) == 1 and "not laid out as expected" in messages[0]


def _moves_per_layer(new, old, k):
    L, P = new.shape
    return [sum(len(set(new[l, g:g + k].tolist()) - set(old[l, g:g + k].tolist())) for g in range(0, P, k))
            for l in range(L)]


@pytest.mark.parametrize("name", ["deepseek", "deepseek_hierarchical", "deepseek_vec", "elasticity_aware"])
def test_max_moves_searches_from_the_served_placement(fake_sglang, monkeypatch, name):
    plugin.register()
    old_tokens = torch.poisson(torch.rand(2, 4, 32) * 40).to(torch.int64)
    tokens = (old_tokens * torch.exp(0.3 * torch.randn(2, 4, 32, generator=torch.Generator().manual_seed(1)))).round()
    served = eplb_ext.rebalance_experts(old_tokens, 48, 6, 4, 2, name)[0]
    call = lambda: fake_sglang.dispatcher.rebalance_experts(tokens, 48, 6, 4, 2, SglangAlgorithm[name])  # noqa: E731
    plain = eplb_ext.rebalance_experts(tokens, 48, 6, 4, 2, name)
    # Unset: SGLang's algorithm as it is, served placement or not.
    _serve(fake_sglang, served.int())
    assert_same(call(), plain)
    for setting, M in (("3", 3), ("10%", 5), ("0", 0)):
        monkeypatch.setenv(integrations.MAX_MOVES_ENV, setting)
        out = call()
        assert_same(out, eplb_ext.rebalance_experts(tokens, 48, 6, 4, 2, name, previous_physical_to_logical_map=served,
                                                    max_moves=M))
        assert max(_moves_per_layer(out[0], served, 6)) <= M
        check_invariants(out, name, 4, 32, 48, 6, 4, 2)
    assert torch.equal(out[0].long(), served.long())  # M = 0 keeps the served placement
    # Nothing served yet (the first placement, at start): a fresh placement.
    fake_sglang.location.metadata = None
    assert_same(call(), plain)


def test_served_placement_of_another_shape_is_ignored(fake_sglang, monkeypatch, caplog):
    plugin.register()
    caplog.set_level(logging.INFO, logger=plugin.logger.name)
    monkeypatch.setenv(integrations.MAX_MOVES_ENV, "4")
    tokens = torch.poisson(torch.rand(2, 4, 32) * 40)
    _serve(fake_sglang, torch.zeros(4, 40, dtype=torch.int64))
    for _ in range(2):
        out = fake_sglang.dispatcher.rebalance_experts(tokens, 48, 6, 4, 2, SglangAlgorithm.deepseek)
        assert_same(out, eplb_ext.rebalance_experts(tokens, 48, 6, 4, 2, "deepseek"))
    assert sum("has shape (4, 40), not [4, 48]" in m for m in _messages(caplog)) == 1
    monkeypatch.setitem(sys.modules, plugin.LOCATION_MODULE, None)  # import fails
    assert plugin.served_placement(tokens, 48) is None


def test_bad_max_moves_stops_registration(fake_sglang, monkeypatch, caplog):
    monkeypatch.setenv(integrations.MAX_MOVES_ENV, "-3")
    with pytest.raises(ValueError, match="EPLB_EXT_MAX_MOVES='-3': expected moves per layer"):
        plugin.register()
    assert fake_sglang.dispatcher.rebalance_experts is fake_sglang.original
    monkeypatch.setenv(integrations.MAX_MOVES_ENV, "7")
    caplog.set_level(logging.INFO, logger=plugin.logger.name)
    assert plugin.register() is True
    assert any("at most 7 moves per layer" in m for m in _messages(caplog))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none present)")
def test_cuda_search_from_the_served_placement(fake_sglang, monkeypatch):
    plugin.register()
    monkeypatch.setenv(integrations.MAX_MOVES_ENV, "4")
    old_tokens = torch.poisson(torch.rand(2, 4, 32) * 40)
    tokens = torch.poisson(torch.rand(2, 4, 32) * 40)
    served = eplb_ext.rebalance_experts(old_tokens, 48, 6, 4, 2, "deepseek")[0]
    _serve(fake_sglang, served.cuda())
    out = fake_sglang.dispatcher.rebalance_experts(tokens.cuda(), 48, 6, 4, 2, SglangAlgorithm.deepseek)
    assert all(t.is_cuda for t in out)
    assert_same([t.cpu() for t in out], eplb_ext.rebalance_experts(tokens, 48, 6, 4, 2, "deepseek",
                                                                    previous_physical_to_logical_map=served,
                                                                    max_moves=4))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none present)")
def test_cuda_loads_give_cuda_outputs(fake_sglang):
    plugin.register()
    tokens = torch.poisson(torch.rand(2, 4, 32) * 40).cuda()
    fake_sglang.manager._instance = fake_sglang.state
    fake_sglang.state.active_ranks = torch.tensor([1, 0, 1, 1, 1, 1, 1, 1], dtype=torch.int32, device="cuda")
    for name in SIX:
        out = fake_sglang.dispatcher.rebalance_experts(tokens, 48, 6, 4, 2, SglangAlgorithm[name])
        assert all(t.is_cuda for t in out)
        active = [1, 0, 1, 1, 1, 1, 1, 1] if name.startswith("elasticity") else None
        assert_same([t.cpu() for t in out], eplb_ext.rebalance_experts(tokens.cpu(), 48, 6, 4, 2, name, active_ranks=active))


def test_entry_point_declared():
    target = declared_entry_point("sglang.srt.plugins", "eplb_ext")
    assert target == "eplb_ext.integrations.sglang:register"
    module, _, attr = target.partition(":")
    assert getattr(__import__(module, fromlist=[attr]), attr) is plugin.register


FAKE_LAUNCHER = {
    "sglang/__init__.py": "",
    "sglang/srt/__init__.py": "",
    "sglang/srt/eplb/__init__.py": "",
    "sglang/srt/eplb/eplb_algorithms/__init__.py": textwrap.dedent("""\
        import enum
        class EplbAlgorithm(enum.Enum):
            deepseek = 1
        def rebalance_experts(tokens_per_expert, num_physical_experts, num_local_physical_experts,
                              num_groups, num_nodes, algorithm):
            raise AssertionError("SGLang's own code ran")
        """),
    "sglang/worker.py": textwrap.dedent("""\
        def report(queue):
            from sglang.srt.eplb import eplb_algorithms
            queue.put(eplb_algorithms.rebalance_experts.__module__)
        """),
    "sglang/launch_server.py": textwrap.dedent("""\
        import multiprocessing, sys
        from sglang import worker
        from sglang.srt.eplb import eplb_algorithms
        if __name__ == "__main__":
            ctx = multiprocessing.get_context("spawn")
            queue = ctx.Queue()
            process = ctx.Process(target=worker.report, args=(queue,))
            process.start()
            print("args", sys.argv[1:])
            print("parent", eplb_algorithms.rebalance_experts.__module__)
            print("worker", queue.get(timeout=120))
            process.join()
        """),
}


def test_launcher_registers_in_spawned_workers(tmp_path):
    for relative, text in FAKE_LAUNCHER.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-m", "eplb_ext.integrations.sglang_launch", "--model-path", "m"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "args ['--model-path', 'm']" in proc.stdout
    assert "parent eplb_ext.integrations.sglang" in proc.stdout
    assert "worker eplb_ext.integrations.sglang" in proc.stdout


def test_installed_entry_point_loads_register():
    """As the server loads plugins (only where this checkout is pip-installed)."""
    check_installed_entry_point("sglang.srt.plugins", plugin.register)
