"""eplb_ext inside inference servers.

``eplb_ext.integrations.sglang.register()`` makes SGLang's EPLB dispatcher
run on eplb_ext; ``eplb_ext.integrations.vllm.register()`` (with
``EPLB_EXT_VLLM=1``) puts ``EplbExtPolicy`` in place of vLLM's default EPLB
policy. Both are entry points the servers load by themselves, and both do
nothing, saying so once in the log, where the server is absent or laid out
differently from what they patch. With ``EPLB_EXT_MAX_MOVES`` set, both
search from the placement the server serves, at most that many moves per
layer (``max_moves_setting``).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Optional, Set

_LOGGED: Set[str] = set()
MAX_MOVES_ENV = "EPLB_EXT_MAX_MOVES"


def log_once(logger: logging.Logger, level: int, message: str) -> None:
    """Logs ``message`` the first time it is seen in this process: a server
    calls the registration hooks in every process and may call them again."""
    if message in _LOGGED:
        return
    _LOGGED.add(message)
    logger.log(level, message)


def max_moves_setting(num_replicas: int) -> Optional[int]:
    """``EPLB_EXT_MAX_MOVES`` as moves per layer for ``num_replicas`` slots:
    None when unset or empty (no search); an integer >= 0 as it is; a
    percentage in [0, 100] (``"10%"``) of ``num_replicas``, rounded to the
    nearest integer. Raises ValueError for anything else."""
    raw = os.environ.get(MAX_MOVES_ENV, "").strip()
    if not raw:
        return None
    try:
        if raw.endswith("%"):
            share = float(raw[:-1])
            if not 0.0 <= share <= 100.0:  # also false for nan
                raise ValueError
            return int(math.floor(share * num_replicas / 100.0 + 0.5))
        moves = int(raw)
        if moves < 0:
            raise ValueError
        return moves
    except ValueError:
        raise ValueError(
            f"{MAX_MOVES_ENV}={raw!r}: expected moves per layer, an integer >= 0 (e.g. 29), or a share of "
            "the slots, a percentage in [0, 100] (e.g. 10%)"
        ) from None


def log_max_moves(logger: logging.Logger) -> None:
    """Logs ``EPLB_EXT_MAX_MOVES`` once when it is set."""
    raw = os.environ.get(MAX_MOVES_ENV, "").strip()
    if raw:
        log_once(logger, logging.INFO, f"eplb_ext: rebalances search from the served placement, at most {raw} "
                 f"moves per layer ({MAX_MOVES_ENV})")
