"""Two-class ensembles ("atom" and "Si, given an atom"): training data, loss, prediction, per-atom class and the CSV."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from elit_utils.ensemble import TrainingConfig, _member_loss, train_ensemble, two_class_masks, uncertainty_maps
from elit_utils.errors import BadImageError
from elit_utils.locate import locate_atoms
from elit_utils.simulate import dataset
from elit_utils.unet import UnetArchitecture

TINY = TrainingConfig(n_iterations=2, batch_size=2, swa_iterations=1)


def tiny_two_class_ensemble(folder, n_members=2):
    """A 2-iteration two-class ensemble of 4-filter U-Nets on four 64 px dopant-rich frames."""
    data = dataset("dopant_rich", n=4, seed=0, image_size_px=64, cache=False)
    return train_ensemble(data.images, two_class_masks(data), folder, n_members, 0.1, UnetArchitecture(nb_classes=2, nb_filters=4), TINY, progress=False)


def test_two_class_masks_are_atoms_and_si():
    data = dataset("dopant_rich", n=3, seed=1, image_size_px=64, cache=False)
    masks = two_class_masks(data)
    assert masks.shape == (3, 2, 64, 64) and masks.dtype == bool
    assert np.array_equal(masks[:, 0], data.atom_mask)
    assert np.array_equal(masks[:, 1], data.label_mask == 2)
    assert not (masks[:, 1] & ~masks[:, 0]).any()  # every Si pixel is an atom pixel


def test_masks_that_do_not_fit_the_architecture_are_refused(tmp_path):
    data = dataset("source", n=2, seed=0, image_size_px=32, cache=False)
    two = UnetArchitecture(nb_classes=2, nb_filters=4)
    with pytest.raises(BadImageError, match=r"2 classes needs masks \(n, 2, H, W\).*np.stack"):
        train_ensemble(data.images, data.atom_mask, tmp_path / "a", 1, 0.1, two, TINY, progress=False)
    with pytest.raises(BadImageError, match=r"nb_classes=2"):
        train_ensemble(data.images, two_class_masks(data), tmp_path / "b", 1, 0.1, UnetArchitecture(nb_filters=4), TINY, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before the folder is made


def test_loss_is_the_mean_of_per_class_losses_and_the_weight_applies_to_every_class():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 2, 8, 8, generator=generator)
    target = (torch.rand(2, 3, 2, 8, 8, generator=generator) > 0.7).float()
    _, per_member = _member_loss(logits, target, "bce")
    _, atom_only = _member_loss(logits[:, :, :1], target[:, :, :1], "bce")
    _, si_only = _member_loss(logits[:, :, 1:], target[:, :, 1:], "bce")
    assert torch.allclose(per_member, (atom_only + si_only) / 2)
    weight = torch.zeros(2, 3, 1, 8, 8)
    weight[..., :4] = 1  # only the left half counts, in both channels
    _, weighted = _member_loss(logits, target, "bce", weight)
    _, left = _member_loss(logits[..., :4], target[..., :4], "bce")
    assert torch.allclose(weighted, left)


def test_two_class_prediction_has_si_maps_and_atoms_their_class(tmp_path):
    ensemble = tiny_two_class_ensemble(tmp_path / "model")
    assert ensemble.n_classes == 2 and ensemble.record["architecture"]["nb_classes"] == 2
    frames = dataset("dopant_rich", n=2, seed=3, image_size_px=64, cache=False).images
    prediction = ensemble.predict(frames[0], sampling_A_per_px=0.1)
    assert prediction.class_members.shape == prediction.members.shape == (2, 64, 64)
    assert np.allclose(prediction.si_probability, prediction.class_members.mean(axis=0))
    assert not np.allclose(prediction.class_members, prediction.members)  # its own channel, not the atom map again
    stack = ensemble.predict(frames, sampling_A_per_px=0.12)  # resampled: the Si maps come back in the input's pixels
    assert stack.class_members.shape == stack.members.shape == (2, 2, 64, 64)
    assert np.array_equal(stack.frame(1).class_members, stack.class_members[:, 1])
    tiled = ensemble.predict(np.pad(frames[0], 20, mode="reflect"), tile_px=64, overlap_px=8)
    assert tiled.class_members.shape == tiled.members.shape == (2, 104, 104)


def test_one_class_prediction_has_no_class_maps(tmp_path):
    from tests.conftest import tiny_ensemble

    prediction = tiny_ensemble(tmp_path / "model", 2).predict(np.random.default_rng(0).random((32, 32)))
    assert prediction.class_members is None and prediction.si_probability is None
    assert locate_atoms(prediction, threshold=0.3).si_probability is None


def test_atoms_get_the_members_si_probability_and_its_spread(tmp_path):
    members = np.zeros((2, 20, 20), np.float32)
    members[:, 3:6, 3:6] = 0.9  # an atom both members call Si
    members[:, 12:15, 12:15] = 0.9  # an atom they disagree about
    si = np.zeros_like(members)
    si[:, 3:6, 3:6] = 0.8
    si[0, 12:15, 12:15], si[1, 12:15, 12:15] = 0.9, 0.1
    atoms = locate_atoms(uncertainty_maps(members, 0.1, class_members=si))
    assert atoms.si_probability.round(3).tolist() == [0.8, 0.5]
    assert atoms.si_uncertainty.round(3).tolist() == [0.0, 0.4]
    assert atoms.classes.tolist() == [1, 0]  # Si only where the mean Si probability exceeds 0.5
    assert atoms.select(np.array([False, True])).si_uncertainty.round(3).tolist() == [0.4]
    atoms.with_trust(np.pad(np.ones((10, 10), bool), ((10, 0), (10, 0)))).to_csv(tmp_path / "atoms.csv")
    lines = (tmp_path / "atoms.csv").read_text().splitlines()
    assert lines[0] == "row_px,col_px,y_A,x_A,class,uncertainty_mi_nats,entropy_nats,variance,vote_fraction,si_probability,si_uncertainty,trusted"
    assert [line.split(",")[4] for line in lines[1:]] == ["1", "0"]
    assert [line.split(",")[-1] for line in lines[1:]] == ["True", "False"]
    assert [line.split(",")[-3] for line in lines[1:]] == ["0.800", "0.500"]


def test_adapt_refuses_a_two_class_ensemble(tmp_path):
    from elit_utils import iterate
    from elit_utils.errors import BadValueError

    model = tiny_two_class_ensemble(tmp_path / "model")
    with pytest.raises(BadValueError, match="one-class"):
        iterate.adapt(model, np.zeros((1, 32, 32), np.float32), 0.1, tmp_path / "adapt", progress=False)
    assert not (tmp_path / "adapt").exists()


def test_si_marks_square_only_the_si_atoms_and_the_si_figure_sizes_atoms_by_their_spread():
    import matplotlib

    matplotlib.use("Agg")
    from elit_utils import viz

    rows, cols = np.array([5.0, 10.0, 20.0]), np.array([6.0, 12.0, 25.0])
    fig = viz.show_atoms_with_uncertainty(np.full((32, 32), 0.5), rows, cols, np.zeros(3), 0.1, is_si=np.array([False, True, True]))
    edge, squares = fig.axes[0].collections[-2:]
    assert np.array_equal(squares.get_offsets(), [[12.0, 10.0], [25.0, 20.0]]) and np.array_equal(edge.get_offsets(), squares.get_offsets())
    assert [text.get_text() for text in fig.axes[0].get_legend().get_texts()] == ["C: 1 atom", "Si (probability > 0.5): 2 atoms"]
    assert viz.show_atoms_with_uncertainty(np.zeros((32, 32)), rows, cols, np.zeros(3), 0.1).axes[0].get_legend() is None  # one class: no legend

    fig = viz.show_si_probability(
        np.zeros((32, 32)), rows, cols, np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.5, 0.1]), 0.1, true_si_px=np.array([[20.0, 25.0]])
    )
    discs, crosses = fig.axes[0].collections[-2:]
    sizes = discs.get_sizes()
    assert sizes[1] > sizes[2] > sizes[0]  # the larger the spread, the larger the disc
    colours = discs.get_facecolors()[:, :3]
    assert np.allclose(colours[0], matplotlib.colors.to_rgb(viz.ATOM_COLOURS[0])) and np.allclose(colours[2], matplotlib.colors.to_rgb(viz.ATOM_COLOURS[1]))
    assert np.array_equal(crosses.get_offsets(), [[25.0, 20.0]]) and "true Si" in [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
