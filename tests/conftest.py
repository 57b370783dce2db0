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


def tiny_ensemble(folder: Path, n_members: int, **training: object) -> object:
    """A 2-iteration ensemble of 4-filter U-Nets on four 32 px source frames: fast, for bookkeeping tests."""
    from elit_utils.ensemble import TrainingConfig, train_ensemble
    from elit_utils.simulate import dataset
    from elit_utils.unet import UnetArchitecture

    train = dataset("source", n=4, seed=0, image_size_px=32, cache=False)
    config = TrainingConfig(n_iterations=2, batch_size=2, swa_iterations=1, **training)
    return train_ensemble(train.images, train.atom_mask, folder, n_members, 0.1, UnetArchitecture(nb_filters=4), config, progress=False)
