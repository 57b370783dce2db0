"""Atoms from probability maps: threshold, connected components, sub-pixel centroids,
per-atom uncertainty, and the members-vote alternative.

Example
-------
>>> probability = np.zeros((20, 20)); probability[4:7, 4:7] = 0.9; probability[12:15, 10:13] = 0.8
>>> find_atoms(probability).round(1).tolist()
[[5.0, 5.0], [13.0, 11.0]]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

#: The smallest dip (in probability) between two peaks for them to be two atoms, not one.
MIN_PROMINENCE = 0.2


def atom_regions(probability: np.ndarray, threshold: float = 0.5, min_prominence: float = MIN_PROMINENCE) -> tuple[np.ndarray, int]:
    """Label image of the atoms' footprints, and their number.

    A footprint is a connected region where ``probability > threshold``. When two atoms
    lie so close (or so blurred) that their blobs touch above the threshold, the region
    holds two peaks with a dip between them: it is split along the valley (watershed from
    every peak that stands at least ``min_prominence`` above the saddle joining it to a
    higher one, ``skimage.morphology.h_maxima``). Noise ripples on a blob's top are lower
    than ``min_prominence`` and do not split it; ``min_prominence=1`` never splits.

    >>> probability = np.zeros((9, 16)); probability[3:6, 2:7] = 0.9; probability[3:6, 9:14] = 0.9
    >>> probability[4, 7:9] = 0.6  # a bridge between two blobs
    >>> atom_regions(probability)[1], atom_regions(probability, min_prominence=1.0)[1]
    (2, 1)
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    mask = probability > threshold
    regions, count = ndimage.label(mask)
    if count == 0 or min_prominence >= 1:
        return regions, count
    peaks = h_maxima(probability.astype(np.float64), min_prominence).astype(bool) & mask
    markers, n_peaks = ndimage.label(peaks)
    unmarked = np.setdiff1d(np.arange(1, count + 1), regions[peaks])  # faint regions keep their highest pixel
    for k, position in enumerate(ndimage.maximum_position(probability, regions, unmarked)):
        markers[position] = n_peaks + 1 + k
    if n_peaks + len(unmarked) == count:  # nothing to split
        return regions, count
    return watershed(-probability, markers, mask=mask), n_peaks + len(unmarked)


def _kept_regions(probability: np.ndarray, threshold: float, min_area_px: int, min_prominence: float) -> tuple[np.ndarray, np.ndarray]:
    """Atom footprints (label image) and the labels of those at least ``min_area_px`` large."""
    regions, count = atom_regions(probability, threshold, min_prominence)
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(np.ones_like(probability), regions, index)
    return regions, index[areas >= min_area_px]


def find_atoms(probability: np.ndarray, threshold: float = 0.5, min_area_px: int = 1, min_prominence: float = MIN_PROMINENCE) -> np.ndarray:
    """Centres (row, col in px) of the atoms' footprints (:func:`atom_regions`) in a probability map.

    Each centre is the probability-weighted centroid of its footprint, so it is
    sub-pixel. Footprints smaller than ``min_area_px`` pixels are dropped (speckle).

    >>> find_atoms(np.zeros((8, 8))).shape
    (0, 2)
    """
    probability = np.asarray(probability, float)
    if probability.ndim != 2:
        raise ValueError(f"find_atoms expects one 2D probability map, got shape {probability.shape}")
    if not np.isfinite(probability).all():
        raise ValueError("the probability map contains NaN or inf")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
    regions, kept = _kept_regions(probability, threshold, min_area_px, min_prominence)
    return np.array(ndimage.center_of_mass(probability, regions, kept), float).reshape(-1, 2)


@dataclass(frozen=True)
class AtomTable:
    """Atoms found in one frame, each with its own uncertainty.

    Attributes
    ----------
    rows_px, cols_px: sub-pixel centres in the image's pixels.
    sampling_A_per_px: pixel size (None when unknown: then no A columns).
    mutual_information: mean mutual information (nats) in the atom's footprint: members' disagreement
        (epistemic uncertainty, the out-of-distribution signal).
    entropy: mean predictive entropy (nats) in the footprint: total uncertainty, epistemic plus
        aleatoric (the better detector of a wrong atom).
    variance: mean variance of the members' probabilities in the footprint.
    vote_fraction: fraction of members whose own map exceeds the threshold in the footprint.
    member_peaks: each member's highest probability in the footprint, (N members, k atoms).
    """

    rows_px: np.ndarray
    cols_px: np.ndarray
    sampling_A_per_px: float | None
    mutual_information: np.ndarray
    entropy: np.ndarray
    variance: np.ndarray
    vote_fraction: np.ndarray
    member_peaks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows_px)

    def select(self, keep: np.ndarray) -> AtomTable:
        """The atoms where ``keep`` (a boolean mask or indices) holds, as a table of their own."""
        peaks = None if self.member_peaks is None else self.member_peaks[:, keep]
        columns = (self.rows_px, self.cols_px, self.mutual_information, self.entropy, self.variance, self.vote_fraction)
        rows, cols, information, entropy, variance, votes = (column[keep] for column in columns)
        return AtomTable(rows, cols, self.sampling_A_per_px, information, entropy, variance, votes, peaks)

    @property
    def coordinates_px(self) -> np.ndarray:
        """(k, 2) row, col in px."""
        return np.column_stack([self.rows_px, self.cols_px])

    @property
    def coordinates_A(self) -> np.ndarray:
        """(k, 2) y, x in A from the frame's top-left pixel centre (needs the pixel size)."""
        if self.sampling_A_per_px is None:
            raise ValueError("this frame's pixel size is unknown, so there are no coordinates in A; predict with sampling_A_per_px")
        return self.coordinates_px * self.sampling_A_per_px

    def to_csv(self, path: str | Path) -> None:
        """Write one row per atom: row, col (px), y_A, x_A, class, uncertainty (MI), variance, vote fraction.

        The class is 0 ("atom"): the networks are trained, as in the paper, on one class.
        The file is written atomically.
        """
        from .cache import atomic_path

        s = self.sampling_A_per_px
        lines = ["row_px,col_px,y_A,x_A,class,uncertainty_mi_nats,entropy_nats,variance,vote_fraction"]
        for r, c, mi, h, var, vote in zip(self.rows_px, self.cols_px, self.mutual_information, self.entropy, self.variance, self.vote_fraction):
            y, x = (f"{r * s:.3f}", f"{c * s:.3f}") if s else ("", "")
            lines.append(f"{r:.3f},{c:.3f},{y},{x},0,{mi:.5f},{h:.5f},{var:.5f},{vote:.3f}")
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join(lines) + "\n")


def locate_atoms(prediction: object, threshold: float = 0.5, min_area_px: int = 1, min_prominence: float = MIN_PROMINENCE) -> AtomTable:
    """Atoms from an ensemble prediction of one frame (``mean``, ``members``, ``mutual_information``, ``entropy``, ``variance``).

    Centres come from the mean map (:func:`find_atoms`); each atom's uncertainty
    is averaged over its footprint (:func:`atom_regions`).

    >>> from types import SimpleNamespace
    >>> members = np.zeros((2, 12, 12)); members[:, 3:6, 3:6] = 0.9; members[0, 8:11, 8:11] = 0.9
    >>> mean = members.mean(0)
    >>> zeros = np.zeros_like(mean)
    >>> p = SimpleNamespace(mean=mean, members=members, mutual_information=zeros, entropy=zeros, variance=members.var(0), sampling_A_per_px=0.1)
    >>> locate_atoms(p, threshold=0.4).vote_fraction.tolist()
    [1.0, 0.5]
    """
    mean = np.asarray(prediction.mean, float)
    members = np.asarray(prediction.members)
    if mean.ndim != 2 or members.shape[1:] != mean.shape:
        raise ValueError(f"locate_atoms expects one frame: mean (H, W) and members (N, H, W), got {mean.shape} and {members.shape}")
    regions, kept = _kept_regions(mean, threshold, min_area_px, min_prominence)
    centres = np.array(ndimage.center_of_mass(mean, regions, kept), float).reshape(-1, 2)
    information = np.asarray(ndimage.mean(prediction.mutual_information, regions, kept)).reshape(-1)
    entropy = np.asarray(ndimage.mean(prediction.entropy, regions, kept)).reshape(-1)
    variance = np.asarray(ndimage.mean(prediction.variance, regions, kept)).reshape(-1)
    peaks = member_peaks(members, regions, kept)
    return AtomTable(centres[:, 0], centres[:, 1], prediction.sampling_A_per_px, information, entropy, variance, (peaks > threshold).mean(axis=0), peaks)


def member_peaks(members: np.ndarray, regions: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Each member's highest probability inside each atom's footprint, (N members, k atoms).

    ``regions`` labels the footprints (as from ``scipy.ndimage.label``) and ``index`` lists the
    labels of the atoms wanted. A member "votes" for an atom when its peak exceeds the threshold.

    >>> members = np.zeros((2, 6, 6)); members[0, 1, 1] = 0.9; members[1, 1, 1] = 0.2
    >>> regions = np.zeros((6, 6), int); regions[0:3, 0:3] = 1
    >>> member_peaks(members, regions, np.array([1])).tolist()
    [[0.9], [0.2]]
    """
    return np.array([ndimage.maximum(member, regions, index) for member in members], float).reshape(len(members), -1)


def vote_locate(member_probabilities: np.ndarray, threshold: float = 0.5, eps_px: float = 3.0, min_vote_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """The members-vote approach: each member finds its atoms; atoms of different members closer
    than ``eps_px`` are one atom, kept when at least ``min_vote_fraction`` of the members found it.

    Returns (k, 2) mean centres and (k,) vote fractions. Unlike atomai's ``ensemble_locate``,
    which clusters with DBSCAN ``min_samples=10`` and so returns no atoms at all for
    ensembles of fewer than 10 members, the vote here is a fraction of the ensemble.

    >>> members = np.zeros((3, 16, 16)); members[:, 4:7, 4:7] = 0.9; members[0, 10:13, 10:13] = 0.9
    >>> centres, votes = vote_locate(members, min_vote_fraction=0.5)
    >>> centres.round(1).tolist(), votes.round(2).tolist()
    ([[5.0, 5.0]], [1.0])
    """
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    members = np.asarray(member_probabilities)
    if members.ndim != 3:
        raise ValueError(f"vote_locate expects member maps (N, H, W), got shape {members.shape}")
    found = [find_atoms(m, threshold) for m in members]
    owners = np.concatenate([np.full(len(f), i) for i, f in enumerate(found)]).astype(int)
    points = np.concatenate(found) if owners.size else np.empty((0, 2))
    if not len(points):
        return np.empty((0, 2)), np.empty(0)
    graph = cKDTree(points).sparse_distance_matrix(cKDTree(points), eps_px)
    _, labels = connected_components(graph, directed=False)
    centres, votes = [], []
    for label in np.unique(labels):
        chosen = labels == label
        votes.append(len(np.unique(owners[chosen])) / len(members))
        centres.append(points[chosen].mean(axis=0))
    centres, votes = np.array(centres), np.array(votes)
    keep = votes >= min_vote_fraction
    return centres[keep], votes[keep]
