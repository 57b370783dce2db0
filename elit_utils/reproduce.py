"""Run every notebook headless (papermill) and collect the reproduction report.

``elit reproduce`` and ``make reproduce`` call :func:`reproduce`: each notebook
in ``notebooks/`` runs in order with the chosen profile, its executed copy goes to
``<out>/notebooks/``, its figures to ``<out>/figures/`` and its key numbers to
``<out>/metrics.json``; ``<out>/summary.md`` is written at the end. It prints one
line per notebook with its run time, e.g. ``[quick] 02_training_an_ensemble.ipynb  184.2 s``.

A previous ``metrics.json`` in ``<out>`` is never lost: it is kept as
``metrics.<YYYYmmdd-HHMMSS>.json``, stamped with the time it was last written, so
every earlier run's numbers stay beside the new ones.

The notebooks' kernels talk to papermill over CurveZMQ-encrypted TCP (or, where
the installed libraries cannot, over a private Unix socket), not plain-text TCP.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .cache import repository_root
from .config import PROFILE_ENV, RESULTS_ENV, get_profile
from .errors import BadValueError, ElitError
from .report import METRICS_FILE, metrics_lock, record_metrics, results_dir, write_summary


class NotebookFailedError(ElitError, RuntimeError):
    """A notebook raised while ``elit reproduce`` ran it; the message names it and the error."""


def default_notebook_dir() -> Path:
    """The repository's ``notebooks/`` folder; raises when the package runs without a checkout."""
    root = repository_root()
    if root is None or not (root / "notebooks").is_dir():
        raise FileNotFoundError(
            "No notebooks folder found next to the installed package; pass --notebooks DIR (the notebooks/ folder of an ELIT Lab checkout)."
        )
    return root / "notebooks"


def kernel_config() -> object:
    """Kernel-manager settings that keep the notebooks' traffic private, as a traitlets ``Config``.

    ipykernel (7.4 and later) warns "Kernel is running over TCP without encryption ...
    susceptible to eavesdropping" whenever its transport is TCP and it was given no CurveZMQ
    keys, even on the loopback interface. jupyter_client (8.10 and later) provisions those keys
    itself when asked (``transport_encryption='auto'``, for kernels whose kernelspec declares
    ``supported_encryption: curve``, as ipykernel's does); older versions, or a pyzmq without
    CurveZMQ, get the IPC transport (a Unix socket in the user's runtime folder) instead.

    >>> sorted(kernel_config().KernelManager.keys())[0] in ("transport", "transport_encryption")
    True
    """
    import zmq
    from jupyter_client.manager import KernelManager
    from traitlets.config import Config

    if zmq.has("curve") and "transport_encryption" in KernelManager.class_trait_names():
        return Config({"KernelManager": {"transport_encryption": "auto"}})
    if os.name == "posix":
        return Config({"KernelManager": {"transport": "ipc"}})
    return Config({"KernelManager": {}})


def keep_previous_metrics(folder: Path) -> Path | None:
    """Move ``folder/metrics.json`` aside as ``metrics.<YYYYmmdd-HHMMSS>.json`` (its last write); return the new path.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "metrics.json").write_text("{}")
    >>> kept = keep_previous_metrics(folder)
    >>> kept.name.startswith("metrics.") and kept.suffix == ".json" and not (folder / "metrics.json").exists()
    True
    """
    previous = folder / METRICS_FILE
    with metrics_lock(folder):
        if not previous.exists():
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(previous.stat().st_mtime))
        kept = folder / f"metrics.{stamp}.json"
        count = 1
        while kept.exists():  # never replace an earlier copy, even one of the same second
            kept = folder / f"metrics.{stamp}-{count}.json"
            count += 1
        os.replace(previous, kept)
    return kept


def _failure(notebook: Path, executed: Path, error: Exception) -> NotebookFailedError:
    """One line: which notebook failed, with what, and where its executed copy is."""
    kind = getattr(error, "ename", type(error).__name__)
    value = getattr(error, "evalue", str(error))
    detail = " ".join(f"{kind}: {value}".split())
    return NotebookFailedError(f"{notebook.name} failed ({detail}); its executed copy with the traceback is {executed}")


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
    folder_of_notebooks = Path(notebook_dir) if notebook_dir is not None else default_notebook_dir()
    if not folder_of_notebooks.is_dir():
        raise BadValueError(f"--notebooks {folder_of_notebooks}: no such folder; pass the notebooks/ folder of an ELIT Lab checkout.")
    notebooks = sorted(folder_of_notebooks.glob("[0-9]*.ipynb"))
    if not notebooks:
        raise BadValueError(f"No numbered notebooks (NN_name.ipynb) in {folder_of_notebooks}.")
    folder = results_dir(Path(out).resolve())
    kept = keep_previous_metrics(folder)
    if kept is not None:
        print(f"Kept the previous {METRICS_FILE} as {kept.name}")
    os.environ[PROFILE_ENV] = chosen.name
    os.environ[RESULTS_ENV] = str(folder)
    (folder / "notebooks").mkdir(exist_ok=True)
    config = kernel_config()
    seconds: dict[str, float] = {}
    for notebook in notebooks:
        executed = folder / "notebooks" / notebook.name
        start = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(notebook),
                str(executed),
                parameters={"profile": chosen.name},
                cwd=str(notebook.parent),
                log_output=log_output,
                progress_bar=False,
                config=config,
            )
        except papermill.PapermillExecutionError as error:
            raise _failure(notebook, executed, error) from error
        seconds[notebook.stem] = round(time.perf_counter() - start, 1)
        print(f"[{chosen.name}] {notebook.name}  {seconds[notebook.stem]:.1f} s", flush=True)
    record_metrics("reproduce", {"notebook_seconds": seconds}, profile=chosen.name, results=folder)
    summary = write_summary(folder)
    print(f"Wrote {folder / METRICS_FILE} and {summary}")
    return summary
