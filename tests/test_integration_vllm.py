"""eplb_ext.integrations.vllm: EplbExtPolicy against a re-statement of
vLLM's default EPLB policy (numpy, below), and register() against a stand-in
of vLLM's policy registry built in ``sys.modules`` (vLLM is not installed
here)."""

from __future__ import annotations

import abc
import importlib
import inspect
import logging
import sys
import types

import numpy as np
import pytest
import torch

import eplb_ext
from eplb_ext import integrations
from eplb_ext.integrations import vllm as plugin
from helpers import check_installed_entry_point, declared_entry_point
from vllm_default import (
    balancedness,
    tie_free_loads,
    vllm_hierarchical,
    vllm_packing,
    vllm_policy,
    vllm_preserve,
    vllm_replicate,
)



def _grouped_distinct(w, C):
    sums = w.reshape(w.shape[0], C, -1).sum(-1)
    return all(len(set(r.tolist())) == C for r in sums)


CASES = [
    # (L, E, P, C, N, G)
    (6, 64, 80, 8, 2, 8),
    (4, 32, 48, 4, 4, 8),
    (5, 48, 72, 6, 3, 12),
    (3, 256, 288, 8, 4, 32),
    (6, 40, 60, 5, 1, 10),
    (4, 60, 72, 4, 3, 12),  # 4 % 3 != 0: global
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_policy_matches_vllm_default(case):
    L, E, P, C, N, G = case
    compared = 0
    for seed in range(4):
        w = tie_free_loads(seed, L, E)
        if C % N == 0 and not _grouped_distinct(w, C):
            continue
        ours = plugin.EplbExtPolicy.rebalance_experts(torch.from_numpy(w), P, C, N, G)
        assert ours.dtype == torch.int64 and ours.device.type == "cpu" and tuple(ours.shape) == (L, P)
        vllm64 = vllm_policy(w, P, C, N, G, np.float64)
        vllm32 = vllm_policy(w, P, C, N, G, np.float32)
        # eplb_ext is the float32 computation, bit for bit.
        assert np.array_equal(ours.numpy(), vllm32)
        if np.array_equal(vllm64, vllm32):
            assert np.array_equal(ours.numpy(), vllm64)
            compared += 1
        # Never less balanced than vLLM's (where float64 orders differently,
        # within float32's resolution).
        assert np.all(balancedness(w, ours.numpy(), G) >= balancedness(w, vllm64, G) - 1e-6)
    assert compared >= 2


@pytest.mark.parametrize("dt", [np.float64, np.float32, np.int64])
def test_classmethods_match_vllm_default(dt):
    w = tie_free_loads(11, 5, 32).astype(dt)
    pack, rank = plugin.EplbExtPolicy.balanced_packing(w, 4)
    assert pack.dtype == rank.dtype == np.int64 and pack.shape == rank.shape == w.shape
    ref = vllm_packing(w.astype(np.float64), 4)
    assert np.array_equal(pack, ref[0]) and np.array_equal(rank, ref[1])
    one_each = plugin.EplbExtPolicy.balanced_packing(w, 32)
    assert np.array_equal(one_each[0], np.tile(np.arange(32), (5, 1))) and not one_each[1].any()

    phy2log, count = plugin.EplbExtPolicy.replicate_experts(w, 45)
    ref = vllm_replicate(w.astype(np.float64), 45)
    assert phy2log.dtype == count.dtype == np.int64 and phy2log.shape == (5, 45) and count.shape == (5, 32)
    assert np.array_equal(phy2log, ref[0]) and np.array_equal(count, ref[1])

    hier = plugin.EplbExtPolicy.rebalance_experts_hierarchical(w, 48, 4, 2, 8)
    assert hier.dtype == np.int64 and hier.shape == (5, 48)
    assert np.array_equal(hier, vllm_hierarchical(w, 48, 4, 2, 8))


def test_classmethod_signatures_are_vllms():
    names = lambda f: list(inspect.signature(f).parameters)  # noqa: E731
    P = plugin.EplbExtPolicy
    assert names(P.rebalance_experts) == ["weight", "num_replicas", "num_groups", "num_nodes", "num_ranks",
                                          "old_global_expert_indices"]
    assert names(P.balanced_packing) == ["weight", "num_packs"]
    assert names(P.replicate_experts) == ["weight", "num_phy"]
    assert names(P.rebalance_experts_hierarchical) == ["weight", "num_physical_experts", "num_groups", "num_nodes",
                                                       "num_gpus"]
    assert names(P.preserve_intragpu_slots) == ["phy2log", "num_ranks", "old_phy2log"]


def test_preserve_intragpu_slots():
    rng = np.random.default_rng(3)
    for _ in range(20):
        new = rng.integers(0, 6, size=(3, 12))
        old = np.where(rng.random((3, 12)) < 0.2, -1, rng.integers(0, 6, size=(3, 12)))
        out = plugin.EplbExtPolicy.preserve_intragpu_slots(new, 3, old)
        assert out.dtype == np.int64
        assert np.array_equal(out, vllm_preserve(new, 3, old))
        # Same experts on each GPU; shared ones stay in place.
        assert np.array_equal(np.sort(out.reshape(3, 3, 4), -1), np.sort(new.reshape(3, 3, 4), -1))
    by_hand = plugin.EplbExtPolicy.preserve_intragpu_slots(np.array([[1, 2, 3, 4]]), 2, np.array([[3, 1, 4, -1]]))
    assert by_hand.tolist() == [[2, 1, 4, 3]]
    assert plugin.EplbExtPolicy.preserve_intragpu_slots(np.array([[1, 2, 3]]), 2, np.array([[3, 2, 1]])).tolist() == [[1, 2, 3]]


@pytest.mark.parametrize("C, N, R, hierarchical", [
    (8, 2, 8, True), (0, 1, 8, False), (8, 3, 6, False), (5, 1, 8, False), (8, 4, 6, False), (8, 2, 6, True),
])
def test_hierarchical_only_where_it_applies(C, N, R, hierarchical):
    w = torch.from_numpy(tie_free_loads(4, 3, 48))
    ours = plugin.EplbExtPolicy.rebalance_experts(w, 96, C, N, R)
    if hierarchical:
        expected = eplb_ext.rebalance_experts(w, 96, 96 // R, C, N, "deepseek_hierarchical")[0]
    else:
        expected = eplb_ext.rebalance_experts(w, 96, 96 // R, None, None, "deepseek")[0]
    assert torch.equal(ours, expected)


def test_window_of_steps_and_dtypes():
    w = torch.from_numpy(tie_free_loads(5, 4, 32))
    out = plugin.EplbExtPolicy.rebalance_experts(w, 40, 4, 2, 8)
    window = torch.stack([w // 2, w - w // 2])  # [S, L, E] summing to w
    assert torch.equal(plugin.EplbExtPolicy.rebalance_experts(window, 40, 4, 2, 8), out)
    assert torch.equal(plugin.EplbExtPolicy.rebalance_experts(w.float(), 40, 4, 2, 8), out)
    with pytest.raises(ValueError, match="num_ranks=3 must be positive and divide num_replicas=40"):
        plugin.EplbExtPolicy.rebalance_experts(w, 40, 4, 2, 3)


def test_identical_whatever_the_threads():
    w = torch.from_numpy(tie_free_loads(6, 20, 64)) // 1000  # many ties
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(plugin.EplbExtPolicy.rebalance_experts(w, 80, 8, 2, 16))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])


def test_no_cuda_work():
    initialized = torch.cuda.is_initialized()
    out = plugin.EplbExtPolicy.rebalance_experts(torch.ones(2, 16, dtype=torch.int64), 24, 4, 2, 4,
                                                 torch.arange(24).repeat(2, 1) % 16)
    assert out.device.type == "cpu"
    assert torch.cuda.is_initialized() == initialized


# --------------------------------------------------------------------------
# the previous placement
# --------------------------------------------------------------------------


def moves(new, old, num_ranks):
    """(GPU, expert) pairs held in ``new`` and not in ``old``, summed over layers."""
    L, P = new.shape
    k = P // num_ranks
    return sum(len(set(new[l, g * k:(g + 1) * k].tolist()) - set(old[l, g * k:(g + 1) * k].tolist()))
               for l in range(L) for g in range(num_ranks))


def test_previous_kwargs_helper():
    old = torch.arange(24).repeat(2, 1) % 16
    kwargs = plugin._previous_kwargs(old.int(), 2, 24, 16)
    assert kwargs["previous_physical_to_logical_map"].dtype == torch.int64
    assert torch.equal(kwargs["previous_physical_to_logical_map"], old)
    assert plugin._previous_kwargs(None, 2, 24, 16) == {}
    assert plugin._previous_kwargs(old[:, :20], 2, 24, 16) == {}  # other slots: other GPUs
    assert plugin._previous_kwargs(old[:1], 2, 24, 16) == {}
    assert plugin._previous_kwargs(old + 10, 2, 24, 16) == {}  # experts beyond E
    assert plugin._previous_kwargs(old - 2, 2, 24, 16) == {}


def test_bad_inputs_raise_value_or_type_errors():
    with pytest.raises(ValueError, match=r"weight must be \[L, E\] or \[S, L, E\]"):
        plugin.EplbExtPolicy.rebalance_experts(torch.ones(8), 8, None, None, 2)
    w, old = torch.randint(1, 100, (1, 4)), torch.tensor([[0, 1, 2, 3]])
    with pytest.raises(TypeError, match="old_global_expert_indices has dtype torch.float32"):
        plugin.EplbExtPolicy.rebalance_experts(w, 4, None, None, 2, old.float() + 0.7)
    for odd in (old.to_sparse(), old.to("meta")):
        with pytest.raises(ValueError, match="old_global_expert_indices must be a dense tensor"):
            plugin.EplbExtPolicy.rebalance_experts(w, 4, None, None, 2, odd)
    new = np.array([[0, 1, 2, 3], [3, 2, 1, 0]])
    for other in (new[:1], new[0]):
        with pytest.raises(ValueError, match="maps of one shape"):
            plugin.EplbExtPolicy.preserve_intragpu_slots(new, 2, other)


def test_previous_of_another_shape_is_ignored():
    w = torch.from_numpy(tie_free_loads(7, 3, 32))
    plain = plugin.EplbExtPolicy.rebalance_experts(w, 48, 4, 2, 8)
    assert torch.equal(plugin.EplbExtPolicy.rebalance_experts(w, 48, 4, 2, 8, torch.zeros(3, 40, dtype=torch.int64)), plain)


def test_own_previous_output_gives_zero_moves():
    w = torch.from_numpy(tie_free_loads(8, 4, 64))
    first = plugin.EplbExtPolicy.rebalance_experts(w, 80, 8, 2, 8)
    again = plugin.EplbExtPolicy.rebalance_experts(w, 80, 8, 2, 8, first)
    assert moves(again.numpy(), first.numpy(), 8) == 0


def test_previous_never_adds_moves():
    for seed in range(5):
        w = torch.from_numpy(tie_free_loads(20 + seed, 4, 64))
        drift = torch.from_numpy(tie_free_loads(40 + seed, 4, 64))
        old = plugin.EplbExtPolicy.rebalance_experts(w, 80, 8, 2, 8)
        old[:, ::7] = -1  # empty slots are allowed
        without = plugin.EplbExtPolicy.rebalance_experts(drift, 80, 8, 2, 8)
        with_old = plugin.EplbExtPolicy.rebalance_experts(drift, 80, 8, 2, 8, old)
        assert moves(with_old.numpy(), old.numpy(), 8) <= moves(without.numpy(), old.numpy(), 8)
        w64 = drift.numpy().astype(np.float64)
        assert np.allclose(balancedness(w64, with_old.numpy(), 8), balancedness(w64, without.numpy(), 8))


@pytest.mark.parametrize("setting,M", [("29", 29), ("10%", 8), ("0", 0), (" 2.5% ", 2)])
def test_max_moves_setting_searches_from_the_previous_map(monkeypatch, setting, M):
    # 80 slots: 10% is 8 moves, 2.5% is 2.
    monkeypatch.setenv(integrations.MAX_MOVES_ENV, setting)
    assert integrations.max_moves_setting(80) == M
    for seed in range(3):
        old = plugin.EplbExtPolicy.rebalance_experts(torch.from_numpy(tie_free_loads(60 + seed, 4, 64)), 80, 8, 2, 8)
        drift = torch.from_numpy(tie_free_loads(70 + seed, 4, 64))
        out = plugin.EplbExtPolicy.rebalance_experts(drift, 80, 8, 2, 8, old)
        direct = eplb_ext.rebalance_experts(drift, 80, 10, 8, 2, "deepseek_hierarchical", fixed_width=True,
                                            previous_physical_to_logical_map=old, max_moves=M)[0]
        assert torch.equal(out, direct)
        per_layer = [moves(out[l:l + 1].numpy(), old[l:l + 1].numpy(), 8) for l in range(4)]
        assert max(per_layer) <= M
        if M == 0:
            assert torch.equal(out, old)
        # Without a previous map the setting changes nothing.
        plain = plugin.EplbExtPolicy.rebalance_experts(drift, 80, 8, 2, 8)
        monkeypatch.delenv(integrations.MAX_MOVES_ENV)
        assert torch.equal(plain, plugin.EplbExtPolicy.rebalance_experts(drift, 80, 8, 2, 8))
        monkeypatch.setenv(integrations.MAX_MOVES_ENV, setting)


def test_max_moves_setting_unset_relabels(monkeypatch):
    for value in (None, "", "  "):
        if value is None:
            monkeypatch.delenv(integrations.MAX_MOVES_ENV, raising=False)
        else:
            monkeypatch.setenv(integrations.MAX_MOVES_ENV, value)
        assert integrations.max_moves_setting(80) is None
    old = plugin.EplbExtPolicy.rebalance_experts(torch.from_numpy(tie_free_loads(5, 4, 64)), 80, 8, 2, 8)
    drift = torch.from_numpy(tie_free_loads(6, 4, 64))
    direct = eplb_ext.rebalance_experts(drift, 80, 10, 8, 2, "deepseek_hierarchical", fixed_width=True,
                                        previous_physical_to_logical_map=old)[0]
    assert torch.equal(plugin.EplbExtPolicy.rebalance_experts(drift, 80, 8, 2, 8, old), direct)


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "1e2", "150%", "-5%", "nan%", "inf%", "%"])
def test_bad_max_moves_setting_raises(monkeypatch, value):
    monkeypatch.setenv(integrations.MAX_MOVES_ENV, value)
    with pytest.raises(ValueError, match=f"EPLB_EXT_MAX_MOVES={value!r}: expected moves per layer"):
        integrations.max_moves_setting(80)
    w, old = torch.randint(1, 100, (1, 4)), torch.tensor([[0, 1, 2, 3]])
    with pytest.raises(ValueError, match="EPLB_EXT_MAX_MOVES"):
        plugin.EplbExtPolicy.rebalance_experts(w, 4, None, None, 2, old)


# --------------------------------------------------------------------------
# register() and vLLM's policy registry
# --------------------------------------------------------------------------


class FakeAbstract(abc.ABC):
    @classmethod
    @abc.abstractmethod
    def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks,
                          old_global_expert_indices=None):
        raise NotImplementedError


class FakeDefault(FakeAbstract):
    @classmethod
    def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks,
                          old_global_expert_indices=None):
        return "vllm's own"


@pytest.fixture(autouse=True)
def clean_state():
    integrations._LOGGED.clear()
    yield
    plugin._ORIGINAL.clear()
    integrations._LOGGED.clear()


@pytest.fixture
def fake_vllm(monkeypatch):
    for name in ("vllm", "vllm.distributed", "vllm.distributed.eplb"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    policy = types.ModuleType(plugin.POLICY_MODULE)
    policy.EPLB_POLICIES = {"default": FakeDefault, "flashlb": object}
    abstract = types.ModuleType(plugin.POLICY_MODULE + ".abstract")
    abstract.AbstractEplbPolicy = FakeAbstract
    policy.abstract = abstract
    monkeypatch.setitem(sys.modules, plugin.POLICY_MODULE, policy)
    monkeypatch.setitem(sys.modules, abstract.__name__, abstract)
    return policy


def _messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == plugin.logger.name]


def test_register_needs_the_variable(fake_vllm, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=plugin.logger.name)
    for value in (None, "0", "yes"):
        if value is None:
            monkeypatch.delenv(plugin.ENV, raising=False)
        else:
            monkeypatch.setenv(plugin.ENV, value)
        assert plugin.register() is False
    assert fake_vllm.EPLB_POLICIES["default"] is FakeDefault
    assert len(_messages(caplog)) == 1 and "EPLB_EXT_VLLM=1" in _messages(caplog)[0]


def test_register_replaces_the_default_policy(fake_vllm, monkeypatch, caplog):
    monkeypatch.setenv(plugin.ENV, "1")
    monkeypatch.delenv(integrations.MAX_MOVES_ENV, raising=False)
    caplog.set_level(logging.INFO, logger=plugin.logger.name)
    registry = fake_vllm.EPLB_POLICIES
    assert plugin.register() is True and plugin.register() is True
    assert registry is fake_vllm.EPLB_POLICIES and registry["default"] is plugin.EplbExtPolicy
    assert registry["flashlb"] is object
    assert len(_messages(caplog)) == 1 and "default EPLB policy is now eplb_ext's" in _messages(caplog)[0]
    # What vLLM's EPLB state then calls (positional, CPU load, previous map).
    w = torch.from_numpy(tie_free_loads(9, 3, 32))
    out = registry["default"].rebalance_experts(w, 48, 4, 2, 8, torch.arange(48).repeat(3, 1) % 32)
    assert out.dtype == torch.int64 and out.device.type == "cpu" and tuple(out.shape) == (3, 48)
    assert plugin.unregister() is True and registry["default"] is FakeDefault


def test_register_checks_and_logs_the_max_moves_setting(fake_vllm, monkeypatch, caplog):
    monkeypatch.setenv(plugin.ENV, "1")
    monkeypatch.setenv(integrations.MAX_MOVES_ENV, "ten")
    with pytest.raises(ValueError, match="EPLB_EXT_MAX_MOVES='ten'"):
        plugin.register()
    assert fake_vllm.EPLB_POLICIES["default"] is FakeDefault  # nothing patched
    monkeypatch.setenv(integrations.MAX_MOVES_ENV, "10%")
    caplog.set_level(logging.INFO, logger=plugin.logger.name)
    assert plugin.register() is True
    assert any("at most 10% moves per layer" in m for m in _messages(caplog))


def test_register_without_vllm(monkeypatch, caplog):
    monkeypatch.setenv(plugin.ENV, "1")
    monkeypatch.setitem(sys.modules, "vllm", None)
    caplog.set_level(logging.INFO, logger=plugin.logger.name)
    assert plugin.register() is False and plugin.register() is False
    assert len(_messages(caplog)) == 1 and "vLLM not patched: cannot import" in _messages(caplog)[0]


@pytest.mark.parametrize("change", ["no registry", "no default", "other signature"])
def test_register_with_unexpected_layout(fake_vllm, monkeypatch, caplog, change):
    monkeypatch.setenv(plugin.ENV, "1")
    if change == "no registry":
        del fake_vllm.EPLB_POLICIES
    elif change == "no default":
        del fake_vllm.EPLB_POLICIES["default"]
    else:
        fake_vllm.EPLB_POLICIES["default"] = types.SimpleNamespace(rebalance_experts=lambda context, state: None)
    before = dict(getattr(fake_vllm, "EPLB_POLICIES", {}))
    caplog.set_level(logging.INFO, logger=plugin.logger.name)
    assert plugin.register() is False and plugin.register() is False
    assert dict(getattr(fake_vllm, "EPLB_POLICIES", {})) == before
    assert len(_messages(caplog)) == 1 and "not laid out as expected" in _messages(caplog)[0]


def test_policy_subclasses_vllms_abstract_policy(fake_vllm):
    try:
        module = importlib.reload(plugin)
        assert issubclass(module.EplbExtPolicy, FakeAbstract)
        assert not inspect.isabstract(module.EplbExtPolicy)
        w = torch.from_numpy(tie_free_loads(10, 2, 32))
        assert torch.equal(module.EplbExtPolicy.rebalance_experts(w, 48, 4, 2, 8),
                           eplb_ext.rebalance_experts(w, 48, 6, 4, 2, "deepseek_hierarchical")[0])
    finally:
        sys.modules.pop(plugin.POLICY_MODULE + ".abstract")
        sys.modules[plugin.POLICY_MODULE] = None
        importlib.reload(plugin)
    assert plugin.EplbExtPolicy.__bases__ == (object,)


def test_entry_point_declared():
    target = declared_entry_point("vllm.general_plugins", "eplb_ext")
    assert target == "eplb_ext.integrations.vllm:register"
    module, _, attr = target.partition(":")
    assert getattr(importlib.import_module(module), attr) is plugin.register


def test_installed_entry_point_loads_register():
    """As the server loads plugins (only where this checkout is pip-installed)."""
    check_installed_entry_point("vllm.general_plugins", plugin.register)
