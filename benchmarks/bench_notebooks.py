"""How long each notebook takes, alone: cold (empty cache) and warm (its own cache), vs a class period's budget.

A workshop student opens one notebook in a fresh Colab runtime: nothing is cached, so the
notebook trains whatever it needs. This runs each notebook the same way, one at a time, in
its own empty folder with an empty cache (cold), then once more on the cache it left (warm),
and prints a table beside the 5-minute budget. Timings depend on the machine: the table's
header names the CPU and its core count.

Usage: ``python benchmarks/bench_notebooks.py [--profile quick] [--only 02 04] [--budget-s 300] [--smoke]``

``--smoke``: notebook 01 alone, cold only, in the smoke profile (the other notebooks run in
the smoke profile under nbval in ``make test`` anyway): checks that the script runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RUN_NOTEBOOK = """
import sys, nbformat
from nbclient import NotebookClient
from elit_utils.reproduce import kernel_config  # the kernel on an encrypted or local transport: no TCP warning
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": "."}}, config=kernel_config()).execute()
nbformat.write(nb, sys.argv[1])
"""


def machine() -> str:
    """The CPU model and core count (from lscpu where available)."""
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


def run_once(notebook: Path, folder: Path, cache: Path, profile: str) -> float:
    """Execute ``notebook`` in ``folder`` with ``cache`` (the executed copy stays there); return the wall time in seconds."""
    copy = folder / notebook.name
    copy.write_bytes(notebook.read_bytes())
    env = {**os.environ, "ELIT_PROFILE": profile, "ELIT_CACHE": str(cache), "ELIT_RESULTS": str(folder / "results"), "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", RUN_NOTEBOOK, copy.name], cwd=folder, env=env, check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", help="run profile (default: quick)")
    parser.add_argument("--only", nargs="*", default=None, help="notebook number prefixes to run (default: all)")
    parser.add_argument("--budget-s", type=float, default=300.0, help="the budget per notebook, cold (default: 300 s)")
    parser.add_argument("--no-warm", action="store_true", help="skip the warm run")
    parser.add_argument("--keep", default=None, help="copy each cold-run executed notebook (outputs, per-cell timing) into this folder")
    parser.add_argument("--smoke", action="store_true", help="notebook 01 only, cold, smoke profile: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.profile, args.only, args.no_warm = "smoke", ["01"], True
    notebooks = [p for p in sorted((REPO / "notebooks").glob("[0-9]*.ipynb")) if not args.only or p.name.startswith(tuple(args.only))]
    print(f"profile {args.profile}; machine: {machine()}")
    print("| notebook | cold (s) | warm (s) | budget (s) | cold within budget |\n| --- | ---: | ---: | ---: | --- |", flush=True)
    failures = 0
    for notebook in notebooks:
        with tempfile.TemporaryDirectory(prefix="elit-bench-") as work:
            folder, cache = Path(work), Path(work) / "cache"
            cold = run_once(notebook, folder, cache, args.profile)
            if args.keep:
                Path(args.keep).mkdir(parents=True, exist_ok=True)
                (Path(args.keep) / notebook.name).write_bytes((folder / notebook.name).read_bytes())
            warm = float("nan") if args.no_warm else run_once(notebook, folder, cache, args.profile)
        within = cold <= args.budget_s
        failures += not within
        print(f"| {notebook.stem} | {cold:.0f} | {warm:.0f} | {args.budget_s:.0f} | {'yes' if within else 'NO'} |", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
