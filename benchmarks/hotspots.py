"""Source-level hot spots of the slowest kernels, with Nsight Compute:

    python benchmarks/hotspots.py --ncu NCU --out DIR [--kernels REGEX] [--top N]

Profiles the launches of the kernels matching REGEX (default: the migrate,
vec chunk and deepseek kernels) among benchmarks/profile_gpu.py's calls, with the
per-instruction warp-state samples of the SourceCounters section; exports
the report's source page as CSV (DIR/hotspots.csv: CUDA source lines beside
SASS where the build has line tables, EPLB_EXT_LINEINFO=1, else SASS only)
and prints the N rows holding the most samples, per kernel. The CSV's layout
is Nsight Compute's; the parser only needs a header row that names a
sampling column. Exit status: 0 when the CSV was written and parsed.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Tuple

HERE = Path(__file__).resolve().parent
DEFAULT_KERNELS = "migrate_kernel|vec_chunk_kernel|deepseek_kernel"


def _number(cell: str) -> Optional[float]:
    try:
        return float(cell.replace(",", ""))
    except ValueError:
        return None


def top_rows(text: str, n: int) -> List[Tuple[str, List[str], List[List[str]]]]:
    """(title, header, the n rows with the most samples) per table in text.
    A table starts at a row with a cell naming "Sampling" (the first such
    column, "All Samples" preferred, is the key; a cell that is not a number
    counts 0); rows of another width, or outside a table, are titles (the
    kernel a table belongs to)."""
    tables = []
    title, header, key, rows = "", None, -1, []

    def close():
        if header is not None:
            ranked = sorted(rows, key=lambda r: -(_number(r[key]) or 0.0))
            tables.append((title, header, ranked[:n]))

    for row in csv.reader(io.StringIO(text)):
        if not row:
            continue
        sampling = [i for i, c in enumerate(row) if "Sampling" in c]
        if sampling:
            close()
            every = [i for i in sampling if "All" in row[i]]
            header, key, rows = row, (every or sampling)[0], []
        elif header is not None and len(row) == len(header):
            rows.append(row)
        else:
            close()
            header, rows = None, []
            title = " ".join(c for c in row if c).strip()
    close()
    return tables


def show(tables, width: int = 110) -> str:
    lines = []
    for title, header, rows in tables:
        lines.append(f"== {title or 'kernel'}")
        lines.append(" | ".join(h[:24] for h in header))
        for r in rows:
            lines.append(" | ".join(c.strip()[:width] for c in r))
    return "\n".join(lines)


def run(cmd: List[str], timeout: float) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ncu", required=True, help="the Nsight Compute CLI")
    ap.add_argument("--out", required=True, type=Path, help="folder for hotspots.ncu-rep and hotspots.csv")
    ap.add_argument("--kernels", default=DEFAULT_KERNELS, help="regular expression of kernel names")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rep = args.out / "hotspots.ncu-rep"
    prof = run([args.ncu, "--profile-from-start", "off", "--kernel-name", f"regex:{args.kernels}",
                "--section", "SourceCounters", "--import-source", "yes", "-f", "-o", str(rep.with_suffix("")),
                args.python, str(HERE / "profile_gpu.py")], timeout=600)
    print(prof.stdout[-3000:], prof.stderr[-3000:], sep="\n")
    if prof.returncode != 0 or not rep.exists():
        print(f"profiling failed (rc {prof.returncode})")
        return 1
    for view in ("cuda,sass", "sass"):
        page = run([args.ncu, "--import", str(rep), "--page", "source", "--csv", "--print-source", view],
                   timeout=300)
        if page.returncode == 0 and "Sampling" in page.stdout:
            break
        print(f"--print-source {view}: rc {page.returncode}: {page.stderr[-1500:]}")
    else:
        return 1
    (args.out / "hotspots.csv").write_text(page.stdout)
    tables = top_rows(page.stdout, args.top)
    print(show(tables))
    return 0 if tables else 1


if __name__ == "__main__":
    sys.exit(main())
