"""eplb_ext as vLLM's EPLB policy.

``EplbExtPolicy`` has the interface of vLLM's EPLB policies
(``vllm/distributed/eplb/policy``): the classmethod ``rebalance_experts``
returning the CPU int64 ``physical_to_logical_map [L, num_replicas]``, and
the classmethods of vLLM's default policy (``balanced_packing``,
``replicate_experts``, ``rebalance_experts_hierarchical``,
``preserve_intragpu_slots``, numpy in and out). Every EP rank calls the
policy by itself, so the placement must be the same on every host: eplb_ext's
tie rule and float32 arithmetic make it so, where an unstable sort does not.

``register()`` is the ``vllm.general_plugins`` entry point, which vLLM calls
in every process; with ``EPLB_EXT_VLLM=1`` it puts ``EplbExtPolicy`` in place
of vLLM's ``"default"`` policy, else it does nothing. The policy computes on
the CPU only (vLLM's async EPLB calls it on a worker thread, where it must
not launch CUDA work). With ``EPLB_EXT_MAX_MOVES`` set (moves per layer,
``29``, or a share of the slots, ``10%``), a rebalance that has vLLM's
previous map searches from it with at most that many moves per layer
(``max_moves``) instead of relabeling a fresh placement.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import algorithms
from .. import deepseek as ds
from .._validate import has_integer_dtype, unreadable
from ..build_info import __version__
from . import log_max_moves, log_once, max_moves_setting

# Under "vllm": vLLM configures handlers for its own logger tree only, so
# this is where its log shows what the plugin did.
logger = logging.getLogger("vllm.eplb_ext")

ENV = "EPLB_EXT_VLLM"
POLICY_MODULE = "vllm.distributed.eplb.policy"
PARAMETERS = ("weight", "num_replicas", "num_groups", "num_nodes", "num_ranks")
_ORIGINAL: Dict[str, type] = {}



def _bases() -> Tuple[type, ...]:
    try:
        from vllm.distributed.eplb.policy.abstract import AbstractEplbPolicy
    except Exception:  # vLLM absent (or failing to import): the policy stands alone
        return ()
    return (AbstractEplbPolicy,)


def _previous_kwargs(old: Optional[Tensor], num_layers: int, num_replicas: int, num_experts: int) -> dict:
    """The keyword that hands vLLM's previous map to eplb_ext, or {} when
    there is none to use: no map, another shape (the GPUs are not the same),
    entries outside [-1, E)."""
    if old is None:
        return {}
    old = torch.as_tensor(old)
    odd = unreadable(old)
    if odd is not None:
        raise ValueError(f"old_global_expert_indices must be a dense tensor with values, got {odd}")
    if not has_integer_dtype(old):
        raise TypeError(f"old_global_expert_indices has dtype {old.dtype}; expert ids must be integers")
    old = old.detach().to("cpu", torch.int64)
    if tuple(old.shape) != (num_layers, num_replicas):
        log_once(logger, logging.INFO, f"eplb_ext: previous placement of shape {tuple(old.shape)} is not "
                 f"[{num_layers}, {num_replicas}]; placing without it")
        return {}
    if old.numel() and (int(old.min()) < -1 or int(old.max()) >= num_experts):
        log_once(logger, logging.WARNING, f"eplb_ext: previous placement holds experts outside [-1, {num_experts}); "
                 "placing without it")
        return {}
    return {"previous_physical_to_logical_map": old}


class EplbExtPolicy(*_bases()):
    """vLLM's EPLB policy interface on eplb_ext (see the module docstring)."""

    @classmethod
    def rebalance_experts(
        cls,
        weight: Tensor,
        num_replicas: int,
        num_groups: int,
        num_nodes: int,
        num_ranks: int,
        old_global_expert_indices: Optional[Tensor] = None,
    ) -> Tensor:
        """Places ``weight`` (load ``[L, E]``, or ``[S, L, E]`` summed over
        S, any integer or floating dtype, on the CPU; another device is
        copied to the CPU) into ``num_replicas`` slots on ``num_ranks`` GPUs.

        Hierarchical (``deepseek_hierarchical``) when ``num_groups > 0`` and
        ``num_nodes`` divides ``num_groups`` and ``num_ranks`` and
        ``num_groups`` divides E; else global (``deepseek``). With
        ``old_global_expert_indices`` (the previous ``[L, num_replicas]`` map,
        -1 for empty slots) of the same shape, the placement is relabeled to
        move the fewest experts, or, with ``EPLB_EXT_MAX_MOVES`` set, searched
        from the previous map with at most that many moves per layer.

        Returns the CPU int64 ``physical_to_logical_map [L, num_replicas]``.
        """
        tokens = weight.detach().cpu() if isinstance(weight, Tensor) else torch.as_tensor(weight)
        if num_ranks <= 0 or num_replicas % num_ranks != 0:
            raise ValueError(f"num_ranks={num_ranks} must be positive and divide num_replicas={num_replicas}")
        if tokens.dim() not in (2, 3):
            raise ValueError(f"weight must be [L, E] or [S, L, E], got shape {tuple(tokens.shape)}")
        L, E = tokens.shape[-2], tokens.shape[-1]
        hierarchical = (
            num_groups is not None and num_nodes is not None and num_groups > 0 and num_nodes > 0
            and num_groups % num_nodes == 0 and E % num_groups == 0 and num_ranks % num_nodes == 0
        )
        groups, nodes, name = (num_groups, num_nodes, "deepseek_hierarchical") if hierarchical else (None, None, "deepseek")
        kwargs = _previous_kwargs(old_global_expert_indices, L, num_replicas, E)
        max_moves = max_moves_setting(num_replicas)
        if kwargs and max_moves is not None:
            kwargs["max_moves"] = max_moves
        phy2log, _, _ = algorithms.rebalance_experts(
            tokens, num_replicas, num_replicas // num_ranks, groups, nodes, name, fixed_width=True, **kwargs
        )
        return phy2log

    # vLLM's default policy's building blocks, numpy in and out.

    @classmethod
    def balanced_packing(cls, weight: np.ndarray, num_packs: int) -> Tuple[np.ndarray, np.ndarray]:
        """``weight [X, n]`` -> int64 ``(pack_index [X, n], rank_in_pack [X, n])``."""
        pack, rank = ds.balanced_packing(torch.from_numpy(np.ascontiguousarray(weight)), num_packs)
        return pack.numpy(), rank.numpy()

    @classmethod
    def replicate_experts(cls, weight: np.ndarray, num_phy: int) -> Tuple[np.ndarray, np.ndarray]:
        """``weight [X, num_log]`` -> int64 ``(phy2log [X, num_phy], logcnt [X, num_log])``."""
        phy2log, _, logcnt = ds.replicate_experts(torch.from_numpy(np.ascontiguousarray(weight)), num_phy)
        return phy2log.numpy(), logcnt.numpy()

    @classmethod
    def rebalance_experts_hierarchical(
        cls, weight: np.ndarray, num_physical_experts: int, num_groups: int, num_nodes: int, num_gpus: int
    ) -> np.ndarray:
        """``weight [L, E]`` -> int64 ``phy2log [L, num_physical_experts]``."""
        tokens = torch.from_numpy(np.ascontiguousarray(weight))
        return ds.rebalance_experts_hierarchical(tokens, num_physical_experts, num_groups, num_nodes, num_gpus)[0].numpy()

    @classmethod
    def preserve_intragpu_slots(cls, phy2log: np.ndarray, num_ranks: int, old_phy2log: np.ndarray) -> np.ndarray:
        """Reorders the slots inside each GPU of ``phy2log [L, P]`` so that an
        expert the GPU also held in ``old_phy2log`` keeps its old slot: each
        old slot, in order, takes the first unused new slot of the GPU with
        its expert; the other experts fill the free slots in order. Unchanged
        when ``num_ranks`` does not divide P. Returns a new int64 array."""
        new, old = np.asarray(phy2log), np.asarray(old_phy2log)
        if new.ndim != 2 or old.shape != new.shape:
            raise ValueError(f"phy2log and old_phy2log must be [L, P] maps of one shape, got {new.shape} and "
                             f"{old.shape}")
        L, P = new.shape
        if num_ranks <= 0 or P % num_ranks != 0:
            return new
        k = P // num_ranks
        out = new.astype(np.int64, copy=True)
        for layer in range(L):
            for start in range(0, P, k):
                fresh = new[layer, start : start + k].tolist()
                kept = [None] * k
                used = [False] * k
                for slot, expert in enumerate(old[layer, start : start + k].tolist()):
                    for j, candidate in enumerate(fresh):
                        if not used[j] and candidate == expert:
                            kept[slot], used[j] = candidate, True
                            break
                rest = iter(e for e, u in zip(fresh, used) if not u)
                out[layer, start : start + k] = [e if e is not None else next(rest) for e in kept]
        return out


def register() -> bool:
    """With ``EPLB_EXT_VLLM=1``, makes ``EplbExtPolicy`` vLLM's ``"default"``
    EPLB policy. Returns True when it is (also when it already was); False,
    with one log line, without the variable, without vLLM, or when vLLM's
    policy registry is not laid out as expected (nothing is changed then).
    Raises ValueError for a bad ``EPLB_EXT_MAX_MOVES``, so that a wrong
    setting stops the server at start rather than at its first rebalance."""
    if os.environ.get(ENV) != "1":
        log_once(logger, logging.INFO, f"eplb_ext: vLLM keeps its own EPLB policy ({ENV}=1 selects eplb_ext's)")
        return False
    max_moves_setting(100)  # raises for a bad value
    try:
        module = importlib.import_module(POLICY_MODULE)
    except Exception as exc:
        log_once(logger, logging.WARNING,
                 f"eplb_ext: vLLM not patched: cannot import {POLICY_MODULE} ({type(exc).__name__}: {exc})")
        return False
    policies = getattr(module, "EPLB_POLICIES", None)
    default = policies.get("default") if isinstance(policies, dict) else None
    if default is EplbExtPolicy:
        return True
    problem = _layout_problem(policies, default)
    if problem is not None:
        log_once(logger, logging.WARNING, f"eplb_ext: vLLM not patched: {POLICY_MODULE} is not laid out as expected: {problem}")
        return False
    _ORIGINAL["default"] = default
    policies["default"] = EplbExtPolicy  # in place: vLLM's EPLB state looks policies up in this dict
    log_once(logger, logging.INFO, f"eplb_ext {__version__}: vLLM's default EPLB policy is now eplb_ext's")
    log_max_moves(logger)
    return True


def _layout_problem(policies, default) -> Optional[str]:
    if not isinstance(policies, dict):
        return "it has no EPLB_POLICIES dict"
    if default is None:
        return "EPLB_POLICIES has no 'default' policy"
    method = getattr(default, "rebalance_experts", None)
    try:
        names = tuple(inspect.signature(method).parameters)
    except (TypeError, ValueError):
        return "the default policy has no readable rebalance_experts"
    if names[: len(PARAMETERS)] != PARAMETERS:
        return f"the default policy's rebalance_experts takes {names}, expected {PARAMETERS} first"
    return None


def unregister() -> bool:
    """Puts vLLM's own default policy back; False if it was not replaced."""
    original = _ORIGINAL.pop("default", None)
    if original is None:
        return False
    importlib.import_module(POLICY_MODULE).EPLB_POLICIES["default"] = original
    return True
