"""eplb_ext inside inference servers.

``eplb_ext.integrations.sglang.register()`` makes SGLang's EPLB dispatcher
run on eplb_ext; ``eplb_ext.integrations.vllm.register()`` (with
``EPLB_EXT_VLLM=1``) puts ``EplbExtPolicy`` in place of vLLM's default EPLB
policy. Both are entry points the servers load by themselves, and both do
nothing, saying so once in the log, where the server is absent or laid out
differently from what they patch.
"""

from __future__ import annotations

import logging
from typing import Set

_LOGGED: Set[str] = set()


def log_once(logger: logging.Logger, level: int, message: str) -> None:
    """Logs ``message`` the first time it is seen in this process: a server
    calls the registration hooks in every process and may call them again."""
    if message in _LOGGED:
        return
    _LOGGED.add(message)
    logger.log(level, message)
