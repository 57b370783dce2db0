"""Shared test settings: a temporary cache and results folder, and the smoke profile."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9]*.ipynb"))
EXPERIMENTAL = REPO.parent / "shared" / "data" / "experimental"


@pytest.fixture(autouse=True)
def isolated_run(tmp_path, monkeypatch):
    """Each test gets its own cache and results folder and the smoke profile."""
    monkeypatch.setenv("ELIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ELIT_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("ELIT_PROFILE", "smoke")
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


needs_experimental = pytest.mark.skipif(not EXPERIMENTAL.is_dir(), reason="shared experimental images not present")
