"""What the CPU benchmark scripts share: importing the package from this
checkout when it is not installed, the machine header, the JSON file, and
competing processes that make the machine busy."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, Optional

try:
    import eplb_ext  # noqa: F401  (an installed copy, or one on PYTHONPATH)
except ImportError:
    # An in-place build (python setup.py build_ext --inplace) of this checkout.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import eplb_ext  # noqa: F401

from eplb_ext.demo import format_machine, machine_info  # noqa: E402


def load_average() -> Optional[float]:
    """1-minute load average (other work on the machine skews timings)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


@contextlib.contextmanager
def busy(n: int) -> Iterator[None]:
    """Runs ``n`` CPU-bound processes (each spins one core) while the block
    runs, then stops them: a serving host is rarely idle, and a call that
    spreads over every core must then share them."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(n, 0))]
    try:
        if procs:
            time.sleep(1.0)  # let the scheduler see them before timing starts
            print(f"busy: {n} competing CPU-bound processes running; "
                  f"1-min load average now {load_average()}", flush=True)
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
        if procs:
            print(f"busy: stopped {n} competing processes; 1-min load average {load_average()}", flush=True)


class Run:
    """Machine details and wall time of one benchmark run, printed at the
    start and stored with the results."""

    def __init__(self, what: str, **settings: object):
        self.info: Dict[str, object] = dict(benchmark=what, machine=machine_info(), settings=settings,
                                            load_average_start=load_average())
        self.start = time.perf_counter()
        print(format_machine(self.info["machine"]))
        print(f"{what}: " + ", ".join(f"{k} {v}" for k, v in settings.items())
              + f"; 1-min load average at start {self.info['load_average_start']}\n", flush=True)

    def finish(self, rows, json_path: Optional[str]) -> None:
        self.info.update(load_average_end=load_average(), elapsed_s=round(time.perf_counter() - self.start, 1),
                         rows=rows)
        print(f"\nfinished in {self.info['elapsed_s']} s; 1-min load average at end {self.info['load_average_end']}")
        if json_path:
            with open(json_path, "w") as f:
                json.dump(self.info, f, indent=2)
            print(f"wrote {json_path}")
