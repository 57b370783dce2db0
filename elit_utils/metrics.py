"""Detection metrics: match found atoms to true atoms and score them.

Atoms are matched one-to-one by the Hungarian algorithm (minimum total distance)
among pairs closer than a tolerance in A; unmatched found atoms are false
positives, unmatched true atoms false negatives. :func:`class_scores` scores a
two-class prediction (C and Si) per class, with its confusion counts. Per-pixel IoU
is there too, for comparison with atomai's segmentation scores.

Example
-------
>>> true = np.array([[10.0, 10.0], [10.0, 30.0]])
>>> found = np.array([[10.5, 10.0], [40.0, 40.0]])
>>> scores = detection_scores(found, true, sampling_A_per_px=0.1, tolerance_A=0.5)
>>> scores.n_matched, scores.precision, scores.recall
(1, 0.5, 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist


@dataclass(frozen=True)
class DetectionScores:
    """How well found atoms match true atoms.

    Attributes
    ----------
    n_true, n_found, n_matched: counts of true, found and matched atoms.
    precision: matched / found (1 when nothing was found and nothing was there).
    recall: matched / true (1 when nothing was there).
    f1: harmonic mean of precision and recall.
    rmse_A: root-mean-square distance of matched pairs, in A (nan without matches).
    """

    n_true: int
    n_found: int
    n_matched: int
    precision: float
    recall: float
    f1: float
    rmse_A: float


def match_atoms(found_px: np.ndarray, true_px: np.ndarray, tolerance_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (found, true) of one-to-one matches closer than ``tolerance_px``.

    The matching minimises the total distance (Hungarian algorithm); pairs beyond
    the tolerance are never matched.

    >>> match_atoms(np.array([[0.0, 0.0], [0.0, 1.0]]), np.array([[0.0, 0.9]]), 0.5)
    (array([1]), array([0]))
    """
    found_px = np.asarray(found_px, float).reshape(-1, 2)
    true_px = np.asarray(true_px, float).reshape(-1, 2)
    if len(found_px) == 0 or len(true_px) == 0:
        return np.empty(0, int), np.empty(0, int)
    distance = cdist(found_px, true_px)
    too_far = distance > tolerance_px
    cost = np.where(too_far, tolerance_px * 1e3 + distance, distance)
    rows, cols = linear_sum_assignment(cost)
    keep = ~too_far[rows, cols]
    return rows[keep], cols[keep]


def away_from_edges(points_px: np.ndarray, frame_shape: tuple[int, int], border_px: float) -> np.ndarray:
    """Boolean mask of the points at least ``border_px`` inside the frame's outer pixel edges.

    >>> away_from_edges(np.array([[0.0, 5.0], [5.0, 5.0]]), (10, 10), 2.0).tolist()
    [False, True]
    """
    points_px = np.asarray(points_px, float).reshape(-1, 2)
    distance = np.minimum(points_px + 0.5, np.asarray(frame_shape) - 0.5 - points_px).min(axis=1)
    return distance >= border_px


def _scored_matches(
    found_px: np.ndarray, true_px: np.ndarray, sampling_A_per_px: float, tolerance_A: float, frame_shape: tuple[int, int] | None, border_A: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Matched pairs (found, true indices) that count, and which found and true atoms count."""
    if sampling_A_per_px <= 0:
        raise ValueError(f"sampling_A_per_px must be > 0, got {sampling_A_per_px}")
    found_px = np.asarray(found_px, float).reshape(-1, 2)
    true_px = np.asarray(true_px, float).reshape(-1, 2)
    found_idx, true_idx = match_atoms(found_px, true_px, tolerance_A / sampling_A_per_px)
    true_scored, found_inside = np.ones(len(true_px), bool), np.ones(len(found_px), bool)
    if border_A > 0:
        if frame_shape is None:
            raise ValueError("border_A needs frame_shape (H, W)")
        true_scored = away_from_edges(true_px, frame_shape, border_A / sampling_A_per_px)
        found_inside = away_from_edges(found_px, frame_shape, border_A / sampling_A_per_px)
    counted = true_scored[true_idx]
    found_scored = found_inside.copy()
    found_scored[found_idx] = counted  # a matched atom counts exactly when its true atom does
    return found_idx[counted], true_idx[counted], found_scored, true_scored


def judge_atoms(
    found_px: np.ndarray,
    true_px: np.ndarray,
    sampling_A_per_px: float,
    tolerance_A: float = 0.5,
    frame_shape: tuple[int, int] | None = None,
    border_A: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """For each found atom: does it count, and is it right? As :func:`detection_scores` judges them.

    >>> scored, right = judge_atoms(np.array([[20.0, 20.0], [30.0, 30.0], [20.0, 1.0]]), np.array([[20.0, 20.5]]), 0.1, frame_shape=(40, 40), border_A=0.5)
    >>> scored.tolist(), right.tolist()
    ([True, True, False], [True, False, False])
    """
    found_idx, _, found_scored, _ = _scored_matches(found_px, true_px, sampling_A_per_px, tolerance_A, frame_shape, border_A)
    right = np.zeros(len(found_scored), bool)
    right[found_idx] = True
    return found_scored, right


def detection_scores(
    found_px: np.ndarray,
    true_px: np.ndarray,
    sampling_A_per_px: float,
    tolerance_A: float = 0.5,
    frame_shape: tuple[int, int] | None = None,
    border_A: float = 0.0,
) -> DetectionScores:
    """Precision, recall, F1 and position RMSE (A) of found vs true atoms (row, col in px).

    With ``frame_shape`` and ``border_A``, the band of width ``border_A`` along the frame's
    edge is not scored: an atom cut by the edge is ambiguous (is a half blob an atom inside or
    outside?). All atoms are matched first; then a true atom is scored (found or missed) when it
    lies farther than ``border_A`` from the edge, and an unmatched found atom is a false positive
    when it does. So an atom found 0.03 A from a true atom is never an error just because the two
    lie on either side of the band's inner line.

    >>> detection_scores(np.empty((0, 2)), np.empty((0, 2)), 0.1).f1
    1.0
    >>> detection_scores(np.array([[20.0, 5.2]]), np.array([[20.0, 4.8]]), 0.1, frame_shape=(40, 40), border_A=0.5).f1
    1.0
    """
    found_px = np.asarray(found_px, float).reshape(-1, 2)
    true_px = np.asarray(true_px, float).reshape(-1, 2)
    found_idx, true_idx, found_scored, true_scored = _scored_matches(found_px, true_px, sampling_A_per_px, tolerance_A, frame_shape, border_A)
    n_matched, n_found, n_true = len(found_idx), int(found_scored.sum()), int(true_scored.sum())
    precision = n_matched / n_found if n_found else float(n_true == 0)
    recall = n_matched / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    errors_A = np.linalg.norm(found_px[found_idx] - true_px[true_idx], axis=1) * sampling_A_per_px
    rmse = float(np.sqrt(np.mean(errors_A**2))) if n_matched else float("nan")
    return DetectionScores(n_true, n_found, n_matched, float(precision), float(recall), float(f1), rmse)


#: Rows and columns of :attr:`ClassScores.confusion`: true (rows) and found (columns) class of an atom;
#: "none" is no atom: a found atom that matches no true one (row), a true atom nobody found (column).
CONFUSION_LABELS: tuple[str, str, str] = ("C", "Si", "none")


@dataclass(frozen=True)
class ClassScores:
    """How well a two-class prediction finds carbon, silicon and atoms of either element.

    Attributes
    ----------
    scores: :class:`DetectionScores` for ``"C"``, ``"Si"`` and ``"all"`` (atoms of either
        element, the class ignored: exactly what :func:`detection_scores` gives).
    confusion: (3, 3) int counts, rows the true class, columns the found class, both in the
        order of :data:`CONFUSION_LABELS` (C, Si, none): ``confusion[1, 0]`` is Si atoms found
        as C, ``confusion[2, 1]`` Si found where there is no atom, ``confusion[1, 2]`` Si
        atoms missed. ``confusion[2, 2]`` is always 0.
    """

    scores: dict[str, DetectionScores]
    confusion: np.ndarray


def _class_column(atoms: np.ndarray, what: str) -> np.ndarray:
    """The class column (0 C, 1 Si) of (k, 3) atoms, checked."""
    atoms = np.asarray(atoms, float)
    if atoms.size and (atoms.ndim != 2 or atoms.shape[1] != 3):
        raise ValueError(f"{what} atoms must be (k, 3): row px, col px, class (0 C, 1 Si); got shape {atoms.shape}")
    classes = atoms.reshape(-1, 3)[:, 2]
    unknown = sorted(set(classes.tolist()) - {0.0, 1.0})
    if unknown:
        raise ValueError(
            f"{what} atoms hold classes {unknown}; the class column must be 0 (C) or 1 (Si), as AtomTable.classes and SimulatedDataset.coordinates give it"
        )
    return classes.astype(int)


def _scores_from_counts(n_true: int, n_found: int, errors_A: np.ndarray) -> DetectionScores:
    """Precision, recall, F1 and RMSE from counts and the matched pairs' distances (A), as :func:`detection_scores` defines them."""
    n_matched = len(errors_A)
    precision = n_matched / n_found if n_found else float(n_true == 0)
    recall = n_matched / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    rmse = float(np.sqrt(np.mean(errors_A**2))) if n_matched else float("nan")
    return DetectionScores(int(n_true), int(n_found), n_matched, float(precision), float(recall), float(f1), rmse)


def class_scores(
    found: np.ndarray,
    true: np.ndarray,
    sampling_A_per_px: float,
    tolerance_A: float = 0.5,
    frame_shape: tuple[int, int] | None = None,
    border_A: float = 0.0,
) -> ClassScores:
    """Per-class precision, recall and F1 of a two-class prediction, and its confusion counts.

    ``found`` and ``true`` are (k, 3): row px, col px, class (0 C, 1 Si), as
    :attr:`~elit_utils.locate.AtomTable.classes` and
    :meth:`~elit_utils.simulate.SimulatedDataset.coordinates` give them. Atoms are matched once,
    whatever their class, exactly as :func:`detection_scores` matches them (``tolerance_A``,
    ``frame_shape`` and ``border_A`` mean the same); a found Si atom is then right when its
    match is a true Si atom. So a Si atom found as C counts as a missed Si and a wrong C.

    A frame without Si: when no Si is found either, Si precision, recall and F1 are all 1
    (nothing to find, nothing invented, as :func:`detection_scores` scores an empty frame);
    one Si found there makes Si precision and F1 0. Pool frames with
    :func:`pool_class_scores` to score the Si of many frames together.

    >>> true = np.array([[10.0, 10.0, 0], [10.0, 30.0, 1], [30.0, 30.0, 0]])
    >>> found = np.array([[10.2, 10.0, 0], [10.0, 30.0, 0], [40.0, 10.0, 1]])
    >>> scores = class_scores(found, true, sampling_A_per_px=0.1)
    >>> scores.scores["all"].f1, scores.scores["C"].precision, scores.scores["Si"].recall
    (0.6666666666666666, 0.5, 0.0)
    >>> scores.confusion.tolist()  # rows true C, Si, none; columns found C, Si, none
    [[1, 0, 1], [1, 0, 0], [0, 1, 0]]
    """
    found_classes, true_classes = _class_column(found, "found"), _class_column(true, "true")
    found_px, true_px = np.asarray(found, float).reshape(-1, 3)[:, :2], np.asarray(true, float).reshape(-1, 3)[:, :2]
    found_idx, true_idx, found_scored, true_scored = _scored_matches(found_px, true_px, sampling_A_per_px, tolerance_A, frame_shape, border_A)
    none = len(CONFUSION_LABELS) - 1
    confusion = np.zeros((3, 3), int)
    np.add.at(confusion, (true_classes[true_idx], found_classes[found_idx]), 1)
    missed, spurious = true_scored.copy(), found_scored.copy()
    missed[true_idx], spurious[found_idx] = False, False
    np.add.at(confusion, (true_classes[missed], none), 1)
    np.add.at(confusion, (none, found_classes[spurious]), 1)
    errors_A = np.linalg.norm(found_px[found_idx] - true_px[true_idx], axis=1) * sampling_A_per_px
    same_class = true_classes[true_idx] == found_classes[found_idx]
    scores = {
        name: _scores_from_counts(confusion[k].sum(), confusion[:, k].sum(), errors_A[same_class & (true_classes[true_idx] == k)])
        for k, name in enumerate(CONFUSION_LABELS[:none])
    }
    scores["all"] = _scores_from_counts(int(true_scored.sum()), int(found_scored.sum()), errors_A)
    return ClassScores(scores, confusion)


def pool_class_scores(per_frame: Sequence[ClassScores]) -> ClassScores:
    """Class scores of many frames: counts pooled (micro-average), as :func:`pool_scores` pools them.

    >>> frame = class_scores(np.array([[5.0, 5.0, 1]]), np.array([[5.0, 5.0, 1]]), 0.1)
    >>> no_si = class_scores(np.array([[5.0, 5.0, 1]]), np.array([[5.0, 5.0, 0]]), 0.1)
    >>> pooled = pool_class_scores([frame, no_si])
    >>> pooled.scores["Si"].precision, pooled.scores["Si"].recall, int(pooled.confusion[0, 1])
    (0.5, 1.0, 1)
    """
    if not per_frame:
        raise ValueError("pool_class_scores needs the scores of at least one frame")
    names = per_frame[0].scores.keys()
    return ClassScores({name: pool_scores([frame.scores[name] for frame in per_frame]) for name in names}, sum(frame.confusion for frame in per_frame))


def pixel_iou(predicted_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1 when both are empty).

    >>> pixel_iou(np.array([1, 1, 0], bool), np.array([1, 0, 0], bool))
    0.5
    """
    predicted_mask = np.asarray(predicted_mask, bool)
    true_mask = np.asarray(true_mask, bool)
    if predicted_mask.shape != true_mask.shape:
        raise ValueError(f"mask shapes differ: {predicted_mask.shape} vs {true_mask.shape}")
    union = np.logical_or(predicted_mask, true_mask).sum()
    return float(np.logical_and(predicted_mask, true_mask).sum() / union) if union else 1.0


def pooled_scores(
    found: list[np.ndarray],
    true: list[np.ndarray],
    sampling_A_per_px: float | Sequence[float],
    tolerance_A: float = 0.5,
    frame_shape: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
    border_A: float = 0.0,
) -> DetectionScores:
    """Scores over many frames, pooling the counts (micro-average) and the matched distances.

    ``sampling_A_per_px`` and ``frame_shape`` are one value for all frames or one per frame.

    >>> a = np.array([[5.0, 5.0]])
    >>> pooled_scores([a, a], [a, np.empty((0, 2))], 0.1).precision
    0.5
    """
    if len(found) != len(true):
        raise ValueError(f"{len(found)} frames of found atoms but {len(true)} of true atoms")
    samplings = sampling_A_per_px if isinstance(sampling_A_per_px, (list, tuple)) else [sampling_A_per_px] * len(found)
    shapes = frame_shape if frame_shape is not None and np.ndim(frame_shape[0]) == 1 else [frame_shape] * len(found)
    return pool_scores([detection_scores(f, t, s, tolerance_A, shape, border_A) for f, t, s, shape in zip(found, true, samplings, shapes)])


def pool_scores(per_frame: Sequence[DetectionScores]) -> DetectionScores:
    """Scores of many frames from each frame's scores: counts pooled (micro-average), RMSE over all matches.

    >>> one = DetectionScores(2, 2, 1, 0.5, 0.5, 0.5, 0.1)
    >>> pool_scores([one, one]).n_matched, pool_scores([one, one]).f1
    (2, 0.5)
    """
    n_found = sum(s.n_found for s in per_frame)
    n_true = sum(s.n_true for s in per_frame)
    n_matched = sum(s.n_matched for s in per_frame)
    precision = n_matched / n_found if n_found else float(n_true == 0)
    recall = n_matched / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    squared = sum(s.n_matched * s.rmse_A**2 for s in per_frame if s.n_matched)
    rmse = float(np.sqrt(squared / n_matched)) if n_matched else float("nan")
    return DetectionScores(n_true, n_found, n_matched, float(precision), float(recall), float(f1), rmse)


def found_in_region(
    found_px: np.ndarray, true_px: np.ndarray, region: np.ndarray, sampling_A_per_px: float, tolerance_A: float = 0.5, border_A: float = 0.0
) -> tuple[int, int]:
    """How many found atoms lie in ``region`` (an (H, W) bool mask) and how many of those are right.

    Atoms are judged as :func:`detection_scores` judges them (matched over the whole frame first),
    then counted by the pixel they lie on; right / found is the precision inside the region, e.g.
    inside clutter, where an ensemble may invent atoms.

    >>> region = np.zeros((40, 40), bool); region[:, 20:] = True
    >>> found_in_region(np.array([[10.0, 10.0], [10.0, 30.0], [30.0, 30.0]]), np.array([[10.0, 30.0]]), region, 0.1)
    (2, 1)
    """
    region = np.asarray(region, bool)
    if region.ndim != 2:
        raise ValueError(f"region must be an (H, W) mask, got shape {region.shape}")
    scored, right = judge_atoms(found_px, true_px, sampling_A_per_px, tolerance_A, region.shape, border_A)
    pixel = np.clip(np.round(np.asarray(found_px, float).reshape(-1, 2)).astype(int), 0, np.array(region.shape) - 1)
    inside = scored & region[pixel[:, 0], pixel[:, 1]]
    return int(inside.sum()), int((inside & right).sum())
