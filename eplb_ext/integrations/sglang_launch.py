"""Starts an SGLang server with eplb_ext, for SGLang releases that do not
load ``sglang.srt.plugins`` entry points:

    python -m eplb_ext.integrations.sglang_launch --model-path ... --enable-eplb ...

takes the arguments of ``python -m sglang.launch_server``. The module
registers eplb_ext when it is imported: SGLang starts its workers with
multiprocessing's "spawn" method, and a spawned worker imports the main
module of its parent again, so every worker registers too.
"""

from __future__ import annotations

import runpy
import sys

from .sglang import register

register()


def main() -> None:
    sys.argv[0] = "sglang.launch_server"
    # alter_sys=False keeps this module as __main__, which spawned workers
    # re-import (and so register) before they run.
    runpy.run_module("sglang.launch_server", run_name="__main__", alter_sys=False)


if __name__ == "__main__":
    main()
