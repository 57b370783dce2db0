"""Run every notebook headless (papermill) and collect the reproduction report.

``elit reproduce`` and ``make reproduce`` call :func:`reproduce`: each notebook
in ``notebooks/`` runs in order with the chosen profile, its executed copy goes to
``<out>/notebooks/``, its figures to ``<out>/figures/`` and its key numbers to
``<out>/metrics.json``; ``<out>/summary.md`` is written at the end.

A previous ``metrics.json`` in ``<out>`` is kept as ``metrics.previous.json``
rather than silently replaced.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from .cache import repository_root
from .config import PROFILE_ENV, RESULTS_ENV, get_profile
from .report import METRICS_FILE, record_metrics, results_dir, write_summary


def default_notebook_dir() -> Path:
    """The repository's ``notebooks/`` folder; raises when the package runs without a checkout."""
    root = repository_root()
    if root is None or not (root / "notebooks").is_dir():
        raise FileNotFoundError(
            "No notebooks folder found next to the installed package; pass --notebooks DIR (the notebooks/ folder of an ELIT Lab checkout)."
        )
    return root / "notebooks"


def reproduce(
    profile: str | None = None,
    out: str | Path = "results",
    notebook_dir: str | Path | None = None,
    log_output: bool = False,
) -> Path:
    """Execute every notebook of ``notebook_dir`` with ``profile``; return ``summary.md``'s path.

    Example (shell): ``elit reproduce --profile smoke --out results``.
    """
    import papermill

    chosen = get_profile(profile)
    notebooks = sorted(Path(notebook_dir or default_notebook_dir()).glob("[0-9]*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"No numbered notebooks (NN_name.ipynb) in {notebook_dir}.")
    folder = results_dir(Path(out).resolve())
    previous = folder / METRICS_FILE
    if previous.exists():
        shutil.move(previous, folder / "metrics.previous.json")
        print(f"Kept the previous {METRICS_FILE} as metrics.previous.json")
    os.environ[PROFILE_ENV] = chosen.name
    os.environ[RESULTS_ENV] = str(folder)
    (folder / "notebooks").mkdir(exist_ok=True)
    seconds: dict[str, float] = {}
    for notebook in notebooks:
        print(f"[{chosen.name}] running {notebook.name} ...", flush=True)
        start = time.perf_counter()
        papermill.execute_notebook(
            str(notebook),
            str(folder / "notebooks" / notebook.name),
            parameters={"profile": chosen.name},
            cwd=str(notebook.parent),
            log_output=log_output,
            progress_bar=False,
        )
        seconds[notebook.stem] = round(time.perf_counter() - start, 1)
        print(f"[{chosen.name}] {notebook.name} done in {seconds[notebook.stem]:.1f} s", flush=True)
    record_metrics("reproduce", {"notebook_seconds": seconds}, profile=chosen.name, results=folder)
    summary = write_summary(folder)
    print(f"Wrote {folder / METRICS_FILE} and {summary}")
    return summary
