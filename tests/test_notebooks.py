"""Every notebook: the shared skeleton, the Colab install cell, no outputs committed.

Running each notebook alone and cold, from the built wheel in a fresh environment, is
`make test-colab` (.ci/colab_standin.py); nbval runs them all in the checkout.
"""

import json
import re

import nbformat
import pytest

from elit_utils.config import INSTALL_SPEC, REPO_URL

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
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for heading in ("## What we found", "## Try it yourself", "## What's next", "## References"):
        assert heading in markdown
    assert "record_metrics(" in code
    assert "../" not in code.replace("../shared", ""), "no repository-relative paths in notebook code"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_fits_a_class_sitting(path):
    """At most 30 cells, 1,000 words of prose (before the references, code blocks aside) and 15 lines per code cell."""
    nb = nbformat.read(path, as_version=4)
    assert len(nb.cells) <= 30
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown").split("## References")[0]
    prose = re.sub(r"^\s*(```|~~~).*?^\s*\1", " ", prose, flags=re.M | re.S)  # code in solutions is not prose
    assert len(re.findall(r"[A-Za-z0-9]+(?:['’][a-z]+)?", prose)) <= 1000
    longest = max((len(c.source.splitlines()), i) for i, c in enumerate(nb.cells) if c.cell_type == "code")
    assert longest[0] <= 15, f"code cell {longest[1]} has {longest[0]} lines"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exercises_come_with_hidden_solutions(path):
    """Each exercise under "Try it yourself" has a solution the reader opens (a <details> block)."""
    nb = nbformat.read(path, as_version=4)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    exercises = markdown.split("## Try it yourself")[1].split("\n## ")[0]
    n_exercises = len(re.findall(r"^\d+\. ", exercises, re.M))
    assert n_exercises >= 1 and exercises.count("<details>") >= n_exercises and exercises.count("</details>") == exercises.count("<details>")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = json.loads(path.read_text())
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_installs_this_release_in_colab_only(path):
    nb = nbformat.read(path, as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    lines = [line.strip() for line in first_code.source.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert lines == ["import sys", 'if "google.colab" in sys.modules:', f'%pip install -q "{INSTALL_SPEC}"']
    assert sum(INSTALL_SPEC in c.source for c in nb.cells) == 1, "one install cell, one spec"
