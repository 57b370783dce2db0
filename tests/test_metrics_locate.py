import numpy as np
import pytest

from elit_utils import simulate
from elit_utils.locate import find_atoms
from elit_utils.metrics import detection_scores, detection_scores_per_class, match_atoms, pixel_iou


def test_perfect_detection():
    true = np.array([[10.0, 10.0], [20.0, 25.0], [30.0, 5.0]])
    scores = detection_scores(true + 0.3, true, sampling_A_per_px=0.1, tolerance_A=0.5)
    assert (scores.precision, scores.recall, scores.f1) == (1.0, 1.0, 1.0)
    assert scores.rmse_A == pytest.approx(0.3 * np.sqrt(2) * 0.1)


def test_false_positive_and_false_negative():
    true = np.array([[10.0, 10.0], [20.0, 20.0], [30.0, 30.0], [40.0, 40.0]])
    found = np.array([[10.0, 11.0], [20.0, 20.0], [50.0, 50.0]])
    scores = detection_scores(found, true, sampling_A_per_px=0.1, tolerance_A=0.5)
    assert (scores.n_matched, scores.n_found, scores.n_true) == (2, 3, 4)
    assert scores.precision == pytest.approx(2 / 3) and scores.recall == pytest.approx(0.5)
    assert scores.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))


def test_tolerance_is_in_angstrom():
    true, found = np.array([[0.0, 0.0]]), np.array([[0.0, 4.0]])  # 4 px apart
    assert detection_scores(found, true, sampling_A_per_px=0.1, tolerance_A=0.5).n_matched == 1  # 0.4 A
    assert detection_scores(found, true, sampling_A_per_px=0.2, tolerance_A=0.5).n_matched == 0  # 0.8 A


def test_hungarian_beats_greedy_matching():
    # greedy (nearest first) would pair found[0]-true[1] and leave true[0] unmatched
    true = np.array([[0.0, 0.0], [0.0, 2.0]])
    found = np.array([[0.0, 1.2], [0.0, 3.5]])
    found_idx, true_idx = match_atoms(found, true, tolerance_px=2.0)
    assert sorted(zip(found_idx.tolist(), true_idx.tolist())) == [(0, 0), (1, 1)]


def test_empty_cases():
    empty = np.empty((0, 2))
    some = np.array([[1.0, 1.0]])
    assert detection_scores(empty, some, 0.1).recall == 0.0 and detection_scores(empty, some, 0.1).f1 == 0.0
    assert detection_scores(some, empty, 0.1).precision == 0.0
    assert np.isnan(detection_scores(empty, empty, 0.1).rmse_A)
    with pytest.raises(ValueError, match="sampling"):
        detection_scores(some, some, 0.0)


def test_per_class_scores_do_not_match_across_classes():
    true = np.array([[5.0, 5.0, 0], [20.0, 20.0, 1]])
    found = np.array([[5.0, 5.0, 1], [20.0, 20.0, 1]])  # the C atom called Si
    scores = detection_scores_per_class(found, true, 0.1)
    assert scores["C"].recall == 0.0 and scores["Si"].precision == 0.5 and scores["Si"].recall == 1.0


def test_pixel_iou():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    a[:2] = True
    b[1:3] = True
    assert pixel_iou(a, b) == pytest.approx(4 / 12)
    with pytest.raises(ValueError, match="shapes differ"):
        pixel_iou(a, b[:2])


def test_find_atoms_recovers_simulated_labels_from_their_masks():
    data = simulate.dataset("dopant_rich", n=2, seed=0, image_size_px=128, cache=False)
    for index in range(len(data)):
        found = find_atoms(data.atom_mask[index].astype(float), threshold=0.5)
        scores = detection_scores(found, data.coordinates(index)[:, :2], data.conditions.sampling_A_per_px, tolerance_A=0.5)
        assert scores.f1 == 1.0 and scores.rmse_A < 0.1


def test_find_atoms_drops_speckle_and_rejects_bad_input():
    probability = np.zeros((16, 16))
    probability[3:6, 3:6] = 0.9
    probability[12, 12] = 0.9  # a one-pixel speckle
    assert len(find_atoms(probability, min_area_px=1)) == 2
    assert len(find_atoms(probability, min_area_px=3)) == 1
    with pytest.raises(ValueError, match="2D"):
        find_atoms(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        find_atoms(np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="threshold"):
        find_atoms(probability, threshold=1.5)
