"""Every notebook: the shared skeleton, no outputs committed, and a run alone in an empty folder."""

import json
import shutil

import nbformat
import pytest

from elit_utils.config import REPO_URL

from .conftest import NOTEBOOKS


def test_there_are_notebooks():
    assert NOTEBOOKS, "no numbered notebooks found in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_follows_the_skeleton(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0].source
    assert "colab-badge.svg" in first and f"{REPO_URL.removeprefix('https://github.com/')}/blob/main/notebooks/{path.name}" in first
    assert first.count("\n# ") >= 1 and "## Overview" in first and "## Prerequisites" in first and "Run time" in first
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "profile = None" in tagged[0].source
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "elit_utils.setup(seed=seed, profile=profile)" in code
    assert f"git+{REPO_URL}" in code, "the Colab install cell must use elit_utils.config.REPO_URL"
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for heading in ("## What we found", "## Try it yourself", "## What's next", "## References"):
        assert heading in markdown
    assert "record_metrics(" in code
    assert "../" not in code.replace("../shared", ""), "no repository-relative paths in notebook code"
    assert max(len(c.source.splitlines()) for c in nb.cells if c.cell_type == "code") <= 16


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_alone_in_an_empty_folder(path, tmp_path, monkeypatch):
    """As in Colab: the notebook file alone, the package installed, no repository around it."""
    import papermill

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(path, alone / path.name)
    monkeypatch.setenv("ELIT_CACHE", str(tmp_path / "user-cache"))
    monkeypatch.setenv("ELIT_RESULTS", str(alone / "results"))
    monkeypatch.chdir(alone)
    papermill.execute_notebook(str(alone / path.name), str(alone / "executed.ipynb"), parameters={"profile": "smoke"}, cwd=str(alone), progress_bar=False)
    assert (tmp_path / "user-cache").is_dir()
    assert json.loads((alone / "results" / "metrics.json").read_text())
