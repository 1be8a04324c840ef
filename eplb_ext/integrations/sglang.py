"""eplb_ext as SGLang's EPLB algorithms.

``register()`` replaces ``sglang.srt.eplb.eplb_algorithms.rebalance_experts``
with ``rebalance_experts`` below: the same signature, SGLang's own
``EplbAlgorithm`` members accepted by name, and for the two
``elasticity_aware`` variants the active ranks read from SGLang's elastic-EP
state manager, as SGLang does (all GPUs alive when there is none). SGLang
loads ``register`` from the ``sglang.srt.plugins`` entry point in every
process; on releases without plugins, start the server with
``python -m eplb_ext.integrations.sglang_launch`` instead of
``python -m sglang.launch_server``.

The loads SGLang passes stay on their device (a CUDA tensor gives CUDA
outputs). Algorithms eplb_ext does not know are left to SGLang's own code.
With ``EPLB_EXT_MAX_MOVES`` set (moves per layer, ``29``, or a share of the
slots, ``10%``), a rebalance searches from the placement SGLang serves (its
global expert-location metadata) with at most that many moves per layer;
unset, the placement is SGLang's algorithm's, as without eplb_ext.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from .. import algorithms
from ..build_info import __version__
from . import log_max_moves, log_once, max_moves_setting

logger = logging.getLogger(__name__)

TARGET = "sglang.srt.eplb.eplb_algorithms"
STATE_MODULE = "sglang.srt.elastic_ep.elastic_ep"
LOCATION_MODULE = "sglang.srt.eplb.expert_location"
PARAMETERS = (
    "tokens_per_expert",
    "num_physical_experts",
    "num_local_physical_experts",
    "num_groups",
    "num_nodes",
    "algorithm",
)
_ORIGINAL: Dict[str, Callable] = {}


def active_ranks() -> Optional[Tensor]:
    """SGLang's active ranks (``[ep_size]`` int tensor, 1 = alive), from
    ``ElasticEPStateManager.instance()`` or, on older releases,
    ``get_elastic_ep_state()``; None (all alive) without elastic EP."""
    try:
        module = importlib.import_module(STATE_MODULE)
    except ImportError:
        return None
    manager = getattr(module, "ElasticEPStateManager", None)
    if manager is not None and callable(getattr(manager, "instance", None)):
        state = manager.instance()
    elif callable(getattr(module, "get_elastic_ep_state", None)):
        state = module.get_elastic_ep_state()
    else:
        log_once(logger, logging.WARNING, f"eplb_ext: {STATE_MODULE} has no elastic-EP state manager; "
                 "elasticity_aware places on every GPU")
        return None
    return None if state is None else getattr(state, "active_ranks", None)


def served_placement(tokens_per_expert: Tensor, num_physical_experts: int) -> Optional[Tensor]:
    """The placement SGLang serves: ``physical_to_logical_map [L, P]`` of
    its global expert-location metadata, on the loads' device. None when
    there is none yet (the first placement, at start) or its shape does not
    fit the call (logged once)."""
    try:
        module = importlib.import_module(LOCATION_MODULE)
    except ImportError:
        return None
    get = getattr(module, "get_global_expert_location_metadata", None)
    metadata = get() if callable(get) else None
    served = getattr(metadata, "physical_to_logical_map", None)
    if not isinstance(served, Tensor):
        return None
    expected = (tokens_per_expert.shape[-2], num_physical_experts)
    if tuple(served.shape) != expected:
        log_once(logger, logging.INFO, f"eplb_ext: SGLang's served placement has shape {tuple(served.shape)}, "
                 f"not {list(expected)}; placing without it")
        return None
    return served.to(device=tokens_per_expert.device, dtype=torch.int64)


def rebalance_experts(
    tokens_per_expert: Tensor,
    num_physical_experts: int,
    num_local_physical_experts: int,
    num_groups: Optional[int],
    num_nodes: int,
    algorithm,
) -> Tuple[Tensor, Tensor, Tensor]:
    """SGLang's dispatcher on eplb_ext: ``tokens_per_expert [S, L, E]`` on any
    device; ``algorithm`` an ``EplbAlgorithm`` of SGLang or of eplb_ext, or a
    name. Returns ``(physical_to_logical_map [L, P], logical_to_physical_map
    [L, E, X], logical_count [L, E])`` on the loads' device, with the dtypes
    and widths of ``eplb_ext.rebalance_experts``. With ``EPLB_EXT_MAX_MOVES``
    set and a served placement (``served_placement``), searched from it with
    at most that many moves per layer."""
    name = algorithm if isinstance(algorithm, str) else getattr(algorithm, "name", None)
    known = name == "auto" or name in algorithms.EplbAlgorithm.__members__
    if not known and TARGET in _ORIGINAL:
        log_once(logger, logging.WARNING, f"eplb_ext: algorithm {name!r} is not eplb_ext's; SGLang's own code places it")
        return _ORIGINAL[TARGET](tokens_per_expert, num_physical_experts, num_local_physical_experts,
                                 num_groups, num_nodes, algorithm)
    algo = algorithms.compute_algorithm(name if known else algorithm, num_groups, num_nodes)
    previous = {}
    max_moves = max_moves_setting(num_physical_experts)
    if max_moves is not None:
        served = served_placement(tokens_per_expert, num_physical_experts)
        if served is not None:
            previous = dict(previous_physical_to_logical_map=served, max_moves=max_moves)
    return algorithms.rebalance_experts(
        tokens_per_expert,
        num_physical_experts,
        num_local_physical_experts,
        num_groups,
        num_nodes,
        algo,
        active_ranks=active_ranks() if algo.elastic else None,
        **previous,
    )


def _layout_problem(module) -> Optional[str]:
    """Why ``module`` is not the dispatcher module this patch expects, or None."""
    original = getattr(module, "rebalance_experts", None)
    if not callable(original):
        return "it has no rebalance_experts function"
    if not hasattr(module, "EplbAlgorithm"):
        return "it has no EplbAlgorithm"
    try:
        names = tuple(inspect.signature(original).parameters)
    except (TypeError, ValueError):
        return "the signature of its rebalance_experts cannot be read"
    if names != PARAMETERS:
        return f"its rebalance_experts takes {names}, expected {PARAMETERS}"
    return None


def register() -> bool:
    """Makes SGLang's ``eplb_algorithms.rebalance_experts`` the eplb_ext one.

    Returns True when SGLang now uses eplb_ext (also when it already did);
    False, with one log line, when SGLang is not importable or its module
    layout is not the expected one, in which case nothing is changed.
    Raises ValueError for a bad ``EPLB_EXT_MAX_MOVES``, so that a wrong
    setting stops the server at start rather than at its first rebalance.
    """
    max_moves_setting(100)  # raises for a bad value
    try:
        module = importlib.import_module(TARGET)
    except Exception as exc:  # SGLang absent, or failing to import here
        log_once(logger, logging.WARNING,
                 f"eplb_ext: SGLang not patched: cannot import {TARGET} ({type(exc).__name__}: {exc})")
        return False
    if module.__dict__.get("rebalance_experts") is rebalance_experts:
        return True
    problem = _layout_problem(module)
    if problem is not None:
        log_once(logger, logging.WARNING, f"eplb_ext: SGLang not patched: {TARGET} is not laid out as expected: {problem}")
        return False
    _ORIGINAL[TARGET] = module.rebalance_experts
    module.rebalance_experts = rebalance_experts
    log_once(logger, logging.INFO, f"eplb_ext {__version__}: SGLang's EPLB ({TARGET}.rebalance_experts) now runs on eplb_ext")
    log_max_moves(logger)
    return True


def unregister() -> bool:
    """Puts SGLang's own ``rebalance_experts`` back; False if it was not patched."""
    original = _ORIGINAL.pop(TARGET, None)
    if original is None:
        return False
    module = importlib.import_module(TARGET)
    module.rebalance_experts = original
    return True
