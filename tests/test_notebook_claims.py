"""Each notebook, run in the smoke profile, says only what it measured.

nbval (``make test``) checks that every notebook runs; here each one runs once more, in
an empty cache shared by the notebooks in order, and its executed copy is read back:

* every number its prose states is printed by its run (tests/notebook_text.py says which
  numbers are prose), so no sentence can drift from what the code measures;
* every figure is followed by a sentence on what to see in it, not by the next heading;
* its own assertions of what it found (in the notebook's cells) held, since it ran.
"""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from elit_utils.report import load_metrics
from elit_utils.reproduce import kernel_config

from .conftest import NOTEBOOKS
from .notebook_text import printed_numbers, stated_numbers


@pytest.fixture(scope="session")
def shared_run_folders(tmp_path_factory):
    """One cache and one results folder for the whole sequence, as a class running 01 to the end has."""
    return tmp_path_factory.mktemp("notebook-cache"), tmp_path_factory.mktemp("notebook-results")


@pytest.fixture(scope="module", params=NOTEBOOKS, ids=lambda p: p.name)
def executed(request, shared_run_folders):
    """The notebook, executed in the smoke profile from its own folder."""
    cache, results = shared_run_folders
    notebook = nbformat.read(request.param, as_version=4)
    settings = {"ELIT_PROFILE": "smoke", "ELIT_CACHE": str(cache), "ELIT_RESULTS": str(results), "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in settings.items():
            patch.setenv(name, value)
        folder = {"metadata": {"path": str(request.param.parent)}}
        client = NotebookClient(notebook, timeout=900, kernel_name="python3", resources=folder, config=kernel_config())
        client.execute()
    notebook.metadata["elit_test_file"] = request.param.name
    return notebook


def _printed_text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("display_data", "execute_result"):
            parts.extend(str(output.data[kind]) for kind in ("text/markdown", "text/plain", "text/html") if kind in output.data)
    return "\n".join(parts)


def test_every_number_in_the_prose_is_printed_by_the_run(executed):
    printed = printed_numbers("\n".join(_printed_text(cell) for cell in executed.cells if cell.cell_type == "code"))
    unprinted = {}
    for index, cell in enumerate(executed.cells):
        if cell.cell_type == "markdown":
            missing = [number for number in stated_numbers(cell.source) if number not in printed]
            if missing:
                unprinted[index] = missing
    assert not unprinted, f"markdown cells state numbers the run never prints (cell index: numbers): {unprinted}"


def test_every_figure_is_followed_by_what_to_see_in_it(executed):
    cells = executed.cells
    bare = []
    for index, cell in enumerate(cells[:-1]):
        has_figure = cell.cell_type == "code" and any("image/png" in output.get("data", {}) for output in cell.get("outputs", []))
        following = cells[index + 1]
        explained = following.cell_type == "markdown" and following.source.strip() and not following.source.lstrip().startswith("#")
        if has_figure and not explained:
            bare.append(index)
    assert not bare, f"figures (code cells {bare}) are not followed by a sentence on what to see in them"


def test_the_notebook_checks_what_it_found(executed):
    code = "\n".join(cell.source for cell in executed.cells if cell.cell_type == "code")
    assert "\nassert " in "\n" + code or "\n    assert " in code, "a notebook asserts its qualitative findings, so a run that contradicts them fails"


def test_the_smoke_ensemble_learns(executed, shared_run_folders):
    """The smoke profile trains in seconds yet learns (held-out source F1 >= 0.9), so the notebooks' assertions mean something in CI."""
    if not executed.metadata["elit_test_file"].startswith("02_"):
        pytest.skip("notebook 02 trains and scores the ensemble")
    f1 = load_metrics(shared_run_folders[1])["02_ensemble"]["values"]["ensemble_f1"]
    assert f1 >= 0.9, f"the smoke ensemble's held-out source F1 is {f1:.3f}"
