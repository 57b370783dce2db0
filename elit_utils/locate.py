"""Atoms from probability maps: threshold, connected components, sub-pixel centroids,
per-atom uncertainty, and the members-vote alternative.

Example
-------
>>> probability = np.zeros((20, 20)); probability[4:7, 4:7] = 0.9; probability[12:15, 10:13] = 0.8
>>> find_atoms(probability).round(1).tolist()
[[5.0, 5.0], [13.0, 11.0]]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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
    si_probability: a two-class ensemble's probability that the atom is Si: each member's mean
        probability of "Si, given an atom" over the footprint, averaged over members (None: one class).
    si_uncertainty: the standard deviation over members of that per-member probability (None: one class).
    trusted: whether the atom's pixel lies outside the frame's trust regions' mask (None: not checked).
    """

    rows_px: np.ndarray
    cols_px: np.ndarray
    sampling_A_per_px: float | None
    mutual_information: np.ndarray
    entropy: np.ndarray
    variance: np.ndarray
    vote_fraction: np.ndarray
    member_peaks: np.ndarray | None = None
    si_probability: np.ndarray | None = None
    si_uncertainty: np.ndarray | None = None
    trusted: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows_px)

    def select(self, keep: np.ndarray) -> AtomTable:
        """The atoms where ``keep`` (a boolean mask or indices) holds, as a table of their own."""
        peaks = None if self.member_peaks is None else self.member_peaks[:, keep]
        columns = (self.rows_px, self.cols_px, self.mutual_information, self.entropy, self.variance, self.vote_fraction)
        rows, cols, information, entropy, variance, votes = (column[keep] for column in columns)
        si, si_std, trusted = (None if column is None else column[keep] for column in (self.si_probability, self.si_uncertainty, self.trusted))
        return AtomTable(rows, cols, self.sampling_A_per_px, information, entropy, variance, votes, peaks, si, si_std, trusted)

    @property
    def classes(self) -> np.ndarray:
        """Each atom's class: 0 (C, or "atom" for a one-class ensemble), 1 (Si: ``si_probability`` > 0.5).

        >>> AtomTable(*[np.zeros(2)] * 2, 0.1, *[np.zeros(2)] * 4, si_probability=np.array([0.2, 0.7])).classes.tolist()
        [0, 1]
        """
        if self.si_probability is None:
            return np.zeros(len(self), int)
        return (self.si_probability > 0.5).astype(int)

    def with_trust(self, untrusted: np.ndarray) -> AtomTable:
        """This table with ``trusted`` filled from a frame's "do not trust" mask (H, W, bool):
        False where the pixel nearest the atom's centre lies in the mask.

        >>> table = AtomTable(np.array([1.2, 6.0]), np.array([1.0, 6.4]), 0.1, *[np.zeros(2)] * 4)
        >>> mask = np.zeros((8, 8), bool); mask[5:, 5:] = True
        >>> table.with_trust(mask).trusted.tolist()
        [True, False]
        """
        untrusted = np.asarray(untrusted, bool)
        rows = np.clip(np.rint(self.rows_px).astype(int), 0, untrusted.shape[0] - 1)
        cols = np.clip(np.rint(self.cols_px).astype(int), 0, untrusted.shape[1] - 1)
        return replace(self, trusted=~untrusted[rows, cols])

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
        """Write one row per atom: row, col (px), y_A, x_A, class, uncertainty (MI), entropy, variance, vote fraction;
        then, for a two-class ensemble, si_probability and si_uncertainty, and, where trust was checked, trusted.

        The class is 0 (C; "atom" for a one-class ensemble, trained as in the paper) or 1 (Si).
        The file is written atomically.

        >>> import tempfile; from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "atoms.csv"
        >>> AtomTable(*[np.zeros(1)] * 2, None, *[np.zeros(1)] * 4, si_probability=np.array([0.9]), si_uncertainty=np.zeros(1)).to_csv(path)
        >>> print(path.read_text())
        row_px,col_px,y_A,x_A,class,uncertainty_mi_nats,entropy_nats,variance,vote_fraction,si_probability,si_uncertainty
        0.000,0.000,,,1,0.00000,0.00000,0.00000,0.000,0.900,0.000
        <BLANKLINE>
        """
        from .cache import atomic_path

        s = self.sampling_A_per_px
        header = "row_px,col_px,y_A,x_A,class,uncertainty_mi_nats,entropy_nats,variance,vote_fraction"
        extra = [(name, column) for name, column in (("si_probability", self.si_probability), ("si_uncertainty", self.si_uncertainty)) if column is not None]
        lines = [header + "".join(f",{name}" for name, _ in extra) + (",trusted" if self.trusted is not None else "")]
        columns = (self.rows_px, self.cols_px, self.classes, self.mutual_information, self.entropy, self.variance, self.vote_fraction)
        for index, (r, c, k, mi, h, var, vote) in enumerate(zip(*columns)):
            y, x = (f"{r * s:.3f}", f"{c * s:.3f}") if s else ("", "")
            line = f"{r:.3f},{c:.3f},{y},{x},{k},{mi:.5f},{h:.5f},{var:.5f},{vote:.3f}" + "".join(f",{column[index]:.3f}" for _, column in extra)
            lines.append(line + (f",{bool(self.trusted[index])}" if self.trusted is not None else ""))
        with atomic_path(path) as tmp:
            tmp.write_text("\n".join(lines) + "\n")


def locate_atoms(prediction: object, threshold: float = 0.5, min_area_px: int = 1, min_prominence: float = MIN_PROMINENCE) -> AtomTable:
    """Atoms from an ensemble prediction of one frame (``mean``, ``members``, ``mutual_information``, ``entropy``, ``variance``).

    Centres come from the mean map (:func:`find_atoms`); each atom's uncertainty
    is averaged over its footprint (:func:`atom_regions`). A two-class prediction (``class_members``,
    each member's probability of "Si, given an atom") gives each atom its Si probability and its
    spread over members (:func:`si_per_atom`).

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
    class_members = getattr(prediction, "class_members", None)
    si, si_std = (None, None) if class_members is None else si_per_atom(np.asarray(class_members), regions, kept)
    votes = (peaks > threshold).mean(axis=0)
    return AtomTable(centres[:, 0], centres[:, 1], prediction.sampling_A_per_px, information, entropy, variance, votes, peaks, si, si_std)


def si_per_atom(class_members: np.ndarray, regions: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each atom's probability of Si and its uncertainty, from members' maps of "Si, given an atom" (N, H, W).

    Each member's probability is averaged over the atom's footprint (``regions`` labels them,
    ``index`` the atoms wanted); returns the mean over members and the standard deviation over
    members (members' disagreement about the element), each (k atoms,).

    >>> maps = np.zeros((2, 6, 6)); maps[0, :3, :3] = 0.9; maps[1, :3, :3] = 0.5
    >>> regions = np.zeros((6, 6), int); regions[:3, :3] = 1
    >>> [values.round(2).tolist() for values in si_per_atom(maps, regions, np.array([1]))]
    [[0.7], [0.2]]
    """
    per_member = np.array([ndimage.mean(member, regions, index) for member in class_members], float).reshape(len(class_members), -1)
    return per_member.mean(axis=0), per_member.std(axis=0)


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
