import numpy as np
import pytest

from elit_utils import simulate
from elit_utils.locate import find_atoms
from elit_utils.metrics import class_scores, detection_scores, match_atoms, pixel_iou, pool_class_scores


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
    scores = class_scores(found, true, 0.1)
    assert scores.scores["C"].recall == 0.0 and scores.scores["Si"].precision == 0.5 and scores.scores["Si"].recall == 1.0
    assert scores.scores["all"].f1 == 1.0  # both atoms found, whatever their class
    assert scores.confusion.tolist() == [[0, 1, 0], [0, 1, 0], [0, 0, 0]]


def test_class_scores_count_every_kind_of_error_once():
    true = np.array([[10.0, 10.0, 0], [10.0, 20.0, 0], [20.0, 10.0, 1], [20.0, 20.0, 1], [30.0, 30.0, 0], [30.0, 10.0, 1]])
    found = np.array(
        [
            [10.1, 10.0, 0],  # C found as C
            [10.0, 20.3, 1],  # C found as Si
            [20.0, 10.0, 0],  # Si found as C
            [19.8, 20.0, 1],  # Si found as Si
            [5.0, 35.0, 1],  # Si where there is no atom
            [35.0, 5.0, 0],  # C where there is no atom
        ]
    )  # true (30, 30) C and (30, 10) Si are missed
    scores = class_scores(found, true, sampling_A_per_px=0.1, tolerance_A=0.5)
    assert scores.confusion.tolist() == [[1, 1, 1], [1, 1, 1], [1, 1, 0]]
    for k, name in enumerate(("C", "Si")):
        counts = scores.scores[name]
        assert (counts.n_true, counts.n_found, counts.n_matched) == (scores.confusion[k].sum(), scores.confusion[:, k].sum(), scores.confusion[k, k])
        assert counts.precision == pytest.approx(1 / 3) and counts.recall == pytest.approx(1 / 3)
    assert scores.scores["Si"].rmse_A == pytest.approx(0.02)  # only the Si-as-Si pair
    assert scores.scores["all"] == detection_scores(found[:, :2], true[:, :2], 0.1, 0.5)


def test_class_scores_agree_with_detection_scores_at_the_border():
    true = np.array([[20.0, 2.0, 1], [20.0, 20.0, 0], [30.0, 30.0, 1]])
    found = np.array([[20.0, 3.0, 1], [20.0, 20.0, 0], [38.0, 1.0, 1]])  # the first and last lie in the unscored band
    kwargs = dict(sampling_A_per_px=0.1, tolerance_A=0.5, frame_shape=(40, 40), border_A=0.5)
    scores = class_scores(found, true, **kwargs)
    assert scores.scores["all"] == detection_scores(found[:, :2], true[:, :2], **kwargs)
    assert scores.confusion.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]  # only the C pair and the missed Si at (30, 30) count


def test_si_of_a_frame_without_si_is_perfect_when_none_is_found_and_zero_when_one_is():
    true = np.array([[10.0, 10.0, 0], [10.0, 20.0, 0]])
    right = class_scores(true.copy(), true, 0.1)
    assert (right.scores["Si"].precision, right.scores["Si"].recall, right.scores["Si"].f1) == (1.0, 1.0, 1.0)
    invented = class_scores(np.array([[10.0, 10.0, 0], [10.0, 20.0, 1]]), true, 0.1)
    assert (invented.scores["Si"].precision, invented.scores["Si"].f1) == (0.0, 0.0)
    assert invented.scores["C"].recall == 0.5 and invented.scores["all"].f1 == 1.0


def test_pooled_class_scores_sum_the_counts_of_the_frames():
    si_frame = class_scores(np.array([[5.0, 5.0, 1], [5.0, 15.0, 0]]), np.array([[5.0, 5.0, 1], [5.0, 15.0, 1]]), 0.1)
    carbon_frame = class_scores(np.array([[5.0, 5.0, 0]]), np.array([[5.0, 5.0, 0]]), 0.1)
    pooled = pool_class_scores([si_frame, carbon_frame])
    assert np.array_equal(pooled.confusion, si_frame.confusion + carbon_frame.confusion)
    assert (pooled.scores["Si"].precision, pooled.scores["Si"].recall) == (1.0, 0.5)  # the frame without Si adds nothing to Si
    assert pooled.scores["C"].n_found == 2 and pooled.scores["C"].precision == 0.5
    with pytest.raises(ValueError, match="at least one frame"):
        pool_class_scores([])


def test_class_scores_refuse_unknown_classes_and_shapes():
    with pytest.raises(ValueError, match=r"found atoms hold classes \[2.0\].*0 \(C\) or 1 \(Si\)"):
        class_scores(np.array([[5.0, 5.0, 2]]), np.array([[5.0, 5.0, 1]]), 0.1)
    with pytest.raises(ValueError, match=r"true atoms must be \(k, 3\)"):
        class_scores(np.array([[5.0, 5.0, 1]]), np.array([[5.0, 5.0]]), 0.1)
    assert class_scores(np.empty((0, 3)), np.empty((0, 3)), 0.1).confusion.sum() == 0


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
        # masks also hold the cut discs of atoms just outside the frame: score away from the edges
        scores = detection_scores(found, data.coordinates(index)[:, :2], data.conditions.sampling_A_per_px, 0.5, frame_shape=(128, 128), border_A=0.5)
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


def test_touching_blobs_are_split_but_a_noisy_blob_is_not():
    rows, cols = np.mgrid[0:40, 0:60]
    blob = lambda r, c: np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * 4.0**2))  # noqa: E731
    pair = np.clip(blob(20, 24) + blob(20, 36), 0, 1)  # 1.2 A apart at 0.1 A/px: the blobs touch above 0.5
    assert len(find_atoms(pair, min_prominence=1.0)) == 1
    centres = find_atoms(pair)
    assert len(centres) == 2 and np.allclose(np.sort(centres[:, 1]), [24, 36], atol=1.0)  # within 0.1 A; the valley pulls both inwards a little
    ripple = blob(20, 30) * (1 + 0.03 * np.random.default_rng(0).standard_normal((40, 60)))
    assert len(find_atoms(ripple)) == 1


def test_border_leaves_out_atoms_cut_by_the_edge():
    true = np.array([[20.0, 20.0], [20.0, 0.2]])
    found = np.array([[20.0, 20.0], [20.0, 1.5], [39.6, 20.0]])  # a half blob at each edge
    plain = detection_scores(found, true, 0.1)
    assert plain.n_found == 3 and plain.n_true == 2
    bordered = detection_scores(found, true, 0.1, frame_shape=(40, 40), border_A=0.5)
    assert (bordered.n_found, bordered.n_true, bordered.f1) == (1, 1, 1.0)
    with pytest.raises(ValueError, match="frame_shape"):
        detection_scores(found, true, 0.1, border_A=0.5)


def test_border_never_splits_a_found_atom_from_its_true_atom():
    """A true atom just inside the band's line and its found atom just outside (or the reverse) is a hit, not a miss and a false positive."""
    true = np.array([[20.0, 5.0], [20.0, 20.0], [4.3, 30.0]])
    found = np.array([[20.0, 4.2], [20.0, 20.0], [5.3, 30.0], [30.0, 30.0]])  # the last one is wrong
    scores = detection_scores(found, true, 0.1, frame_shape=(40, 40), border_A=0.5)
    assert (scores.n_true, scores.n_matched, scores.n_found) == (2, 2, 3)
    assert scores.recall == 1.0 and scores.precision == pytest.approx(2 / 3)


def _members_with_atoms(n_members, extra_for_first=True):
    members = np.zeros((n_members, 24, 24))
    members[:, 4:7, 4:7] = 0.95  # every member finds this atom
    if extra_for_first:
        members[0, 15:18, 15:18] = 0.95  # only member 0 finds this one
    return members


def test_locate_atoms_gives_votes_and_uncertainty_per_atom():
    from types import SimpleNamespace

    from elit_utils.ensemble import uncertainty_maps
    from elit_utils.locate import locate_atoms

    prediction = uncertainty_maps(_members_with_atoms(4), 0.1)
    table = locate_atoms(prediction, threshold=0.2)
    order = np.argsort(table.rows_px)
    assert table.vote_fraction[order].tolist() == [1.0, 0.25]
    assert table.mutual_information[order][0] < 1e-3 < table.mutual_information[order][1]
    with pytest.raises(ValueError, match="one frame"):
        locate_atoms(SimpleNamespace(mean=np.zeros((2, 8, 8)), members=np.zeros((3, 2, 8, 8))))


def test_atom_table_csv(tmp_path):
    from elit_utils.ensemble import uncertainty_maps
    from elit_utils.locate import locate_atoms

    table = locate_atoms(uncertainty_maps(_members_with_atoms(2, extra_for_first=False), 0.1))
    table.to_csv(tmp_path / "atoms.csv")
    lines = (tmp_path / "atoms.csv").read_text().splitlines()
    assert lines[0] == "row_px,col_px,y_A,x_A,class,uncertainty_mi_nats,entropy_nats,variance,vote_fraction"
    assert lines[1].startswith("5.000,5.000,0.500,0.500,0,")
    np.testing.assert_allclose(table.coordinates_A, table.coordinates_px * 0.1)


@pytest.mark.parametrize("n_members", [3, 5])
def test_vote_locate_keeps_atoms_for_small_ensembles_where_atomai_drops_them(n_members):
    from atomai.utils import cluster_coord

    from elit_utils.locate import vote_locate

    members = _members_with_atoms(n_members)
    centres, votes = vote_locate(members, min_vote_fraction=0.5)
    assert centres.round(1).tolist() == [[5.0, 5.0]] and votes.tolist() == [1.0]
    # atomai's clustering (DBSCAN min_samples=10) discards an atom that all n < 10 members found
    per_member = {k: np.column_stack([find_atoms(m), np.zeros(len(find_atoms(m)))]) for k, m in enumerate(members)}
    atomai_result = cluster_coord(per_member, eps=3.0)
    assert len(atomai_result[1]) == 0
