"""The reproduction report: key numbers in ``results/metrics.json``, figures, summary.

Each notebook records its key numbers with :func:`record_metrics` and saves its
figures with :func:`save_figure`. Every number is stored with the profile and the
configuration hash that produced it. :func:`write_summary` turns the JSON into a
readable ``summary.md`` with the figures linked.

The results folder is ``$ELIT_RESULTS`` when set (``make reproduce`` and
``make test`` set it), else ``results/`` of the repository checkout, else
``./results``.

Example
-------
>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> path = record_metrics("demo", {"f1": 0.98}, profile="smoke", config={"n": 1}, results=folder)
>>> load_metrics(folder)["demo"]["values"]["f1"]
0.98
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .cache import atomic_path, repository_root, write_json_atomic
from .config import RESULTS_ENV, config_hash, get_profile, to_jsonable
from .errors import BadValueError

METRICS_FILE = "metrics.json"
SUMMARY_FILE = "summary.md"
FIGURES_DIR = "figures"


def results_dir(results: str | Path | None = None) -> Path:
    """The folder that receives metrics and figures (created if missing).

    >>> import tempfile
    >>> results_dir(tempfile.mkdtemp()).is_dir()
    True
    """
    if results is not None:
        folder = Path(results)
    elif os.environ.get(RESULTS_ENV):
        folder = Path(os.environ[RESULTS_ENV])
    elif (root := repository_root()) is not None:
        folder = root / "results"
    else:
        folder = Path.cwd() / "results"
    folder = folder.expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def load_metrics(results: str | Path | None = None) -> dict[str, Any]:
    """The recorded metrics, ``{}`` when none were recorded yet.

    >>> import tempfile
    >>> load_metrics(tempfile.mkdtemp())
    {}
    """
    path = results_dir(results) / METRICS_FILE
    if not path.exists():
        return {}
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadValueError(f"{path} is not valid JSON ({error}); move it aside and rerun.") from error
    if not isinstance(metrics, dict):
        raise BadValueError(f"{path} holds a JSON {type(metrics).__name__}, not the sections of a metrics file; move it aside and rerun.")
    return metrics


@contextlib.contextmanager
def metrics_lock(results: str | Path | None = None) -> Iterator[None]:
    """Hold the lock of ``metrics.json`` (a hidden ``.metrics.json.lock`` beside it, ``fcntl.flock``).

    Processes that record metrics at the same time take turns, so none loses another's
    section. Where ``fcntl`` does not exist (Windows) the lock is a no-op.

    >>> import tempfile
    >>> with metrics_lock(tempfile.mkdtemp()):
    ...     pass
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(results_dir(results) / f".{METRICS_FILE}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def record_metrics(
    section: str,
    values: dict[str, Any],
    profile: str | None = None,
    config: Any = None,
    results: str | Path | None = None,
) -> Path:
    """Store ``values`` under ``section`` in ``metrics.json``, tagged with profile and config hash.

    Other sections are kept; the file is rewritten atomically, under :func:`metrics_lock`,
    so notebooks that record at the same time never lose each other's sections.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = record_metrics("simulate", {"atoms_per_image": 140}, profile="quick", results=folder)
    >>> load_metrics(folder)["simulate"]["profile"]
    'quick'
    """
    entry = {
        "profile": get_profile(profile).name,
        "config_hash": config_hash(config if config is not None else values),
        "values": to_jsonable(values),
    }
    path = results_dir(results) / METRICS_FILE
    with metrics_lock(results):
        metrics = load_metrics(results)
        metrics[section] = entry
        write_json_atomic(path, metrics)
    return path


def save_figure(figure: Any, name: str, results: str | Path | None = None, formats: tuple[str, ...] = ("png",)) -> None:
    """Save a matplotlib figure as ``figures/<name>.png`` (and other formats) atomically.

    It returns nothing, so that a notebook cell ending with it shows only the figure.

    >>> import tempfile, matplotlib, pathlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> folder = tempfile.mkdtemp()
    >>> save_figure(plt.figure(), "demo", results=folder, formats=("png", "svg"))
    >>> sorted(p.name for p in (pathlib.Path(folder) / "figures").iterdir())
    ['demo.png', 'demo.svg']
    """
    folder = results_dir(results) / FIGURES_DIR
    for fmt in formats:
        with atomic_path(folder / f"{name}.{fmt}") as tmp:
            figure.savefig(tmp, format=fmt, dpi=120, bbox_inches="tight")


def _format_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        if len(value) > 12:
            return f"{len(value)} entries (see {METRICS_FILE})"
        return ", ".join(f"{k}: {_format_value(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ", ".join(_format_value(v) for v in value[:12]) + (", ..." if len(value) > 12 else "") + "]"
    return str(value)


def markdown_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> Any:
    """A markdown table displayed by the code that holds its values (``IPython.display.Markdown``).

    A notebook's "What we found" and its "paper vs ELIT Lab" box are tables made here from
    measured or configured values, so the text can never disagree with the run. Columns after
    holding only numbers (units after a number allowed, "0.981", "12 s"; or "n/a") are right-aligned.

    >>> table = markdown_table([("held-out F1, ensemble", "0.981")], header=("finding", "measured"))
    >>> table.data.splitlines()[1:3]
    ['| --- | ---: |', '| held-out F1, ensemble | 0.981 |']
    """
    from IPython.display import Markdown

    for row in rows:
        if len(row) != len(header):
            raise BadValueError(f"markdown_table: row {tuple(row)!r} has {len(row)} cells but the header has {len(header)}.")
    numeric = [all(re.match(r"[-+]?[\d.]+(e[-+]?\d+)?( |%|x|$)|(n/a|—|-)?$", str(row[column]).strip()) for row in rows) for column in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "".join(" ---: |" if is_number else " --- |" for is_number in numeric)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return Markdown("\n".join(lines))


#: Sections of metrics.json by notebook: (notebook number, title, headline keys).
SECTIONS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "01_simulate": ("01", "Simulating STEM images", ("frames_256px_per_second", "cc_bond_median_A", "recorded_over_expected_counts")),
    "02_ensemble": ("02", "Training an ensemble", ("ensemble_f1", "ensemble_rmse_A", "member_f1")),
    "ood": ("03", "Out of distribution", ("median_member_statement", "atom_error_auroc")),
    "calibration_and_shift": ("04", "Calibration and shift detection", ("ece_source", "ece_shifted", "shift_score_auroc", "source_frames_flagged_fraction")),
    "iterate": (
        "05",
        "Iterative training",
        ("target_domain", "f1_per_round", "uncertainty_per_round", "final_f1_uncertainty_masked", "final_f1_paper_threshold", "final_f1_single_network"),
    ),
    "uncertainty": ("06", "Seeing uncertainty", ("atom_entropy_limit_nats", "kept_precision_on_fresh_frames", "kept_fraction_on_fresh_frames")),
    "clutter": ("07", "Clutter and trust", ("precision_inside_clutter", "precision_outside_clutter", "study_findings")),
    "distributed": ("08", "Many machines", ("same_weights", "largest_probability_difference")),
    "stream": (
        "09",
        "An automated experiment",
        (
            "frames_where_static_fails",
            "triggered_median_f1_where_static_fails_adapted",
            "triggered_compute_over_always_retrain",
            "triggered_false_trigger_rate",
        ),
    ),
    "classes": ("10", "Carbon or silicon", ("si_f1", "c_f1", "all_f1", "g_si_2nm")),
}


def _section_order(name: str) -> tuple[str, str]:
    number = SECTIONS[name][0] if name in SECTIONS else name[:2] if name[:2].isdigit() else "99"
    return number, name


def write_summary(results: str | Path | None = None) -> Path:
    """Write ``summary.md``: the headline numbers of every notebook on one page, then one
    section per notebook with all its numbers and its figures shown inline.

    Each number carries the profile and configuration hash that produced it.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = record_metrics("demo", {"f1": 0.5}, profile="smoke", results=folder)
    >>> "| f1 | 0.5 |" in write_summary(folder).read_text()
    True
    """
    folder = results_dir(results)
    metrics = load_metrics(folder)
    figures = sorted((folder / FIGURES_DIR).glob("*.png"))
    lines = ["# ELIT Lab: reproduction summary", ""]
    if not metrics:
        lines.append("No notebook has recorded metrics yet.")
    headlines = [
        (name, key) for name in sorted(metrics, key=_section_order) for key in SECTIONS.get(name, ("", "", ()))[2] if key in metrics[name].get("values", {})
    ]
    if headlines:
        lines += ["## Headlines", "", "| notebook | quantity | value | profile | configuration |", "| --- | --- | --- | --- | --- |"]
        for name, key in headlines:
            entry, (number, title, _) = metrics[name], SECTIONS[name]
            value = _format_value(entry["values"][key])
            lines.append(f"| {number} {title} | {key} | {value} | {entry.get('profile')} | `{entry.get('config_hash')}` |")
        lines.append("")
    shown: set[Path] = set()
    for name in sorted(metrics, key=_section_order):
        entry = metrics[name]
        number, title, _ = SECTIONS.get(name, (_section_order(name)[0], "", ()))
        lines += [f"## {name}" + (f": notebook {number}, {title}" if title else ""), ""]
        lines += [f"Profile `{entry.get('profile')}`, configuration hash `{entry.get('config_hash')}`.", "", "| quantity | value |", "| --- | --- |"]
        lines += [f"| {key} | {_format_value(value)} |" for key, value in entry.get("values", {}).items()]
        lines.append("")
        mine = [fig for fig in figures if fig.stem.startswith(number + "_") and fig not in shown]
        lines += [f"![{fig.stem}]({FIGURES_DIR}/{fig.name})" for fig in mine] + ([""] if mine else [])
        shown.update(mine)
    rest = [fig for fig in figures if fig not in shown]
    if rest:
        lines += ["## Other figures", ""] + [f"- [{fig.stem}]({FIGURES_DIR}/{fig.name})" for fig in rest] + [""]
    path = folder / SUMMARY_FILE
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
    return path
