"""Atoms from probability maps: threshold, connected components, sub-pixel centroids,
per-atom uncertainty, and the members-vote alternative.

Written for a live microscope's per-frame latency: on a 512x512 frame of the quick ensemble
(1005 atoms, AMD EPYC, 2 cores) :func:`locate_atoms` takes 21-24 ms where the same results from
``skimage.morphology.h_maxima`` on the whole image and ``scipy.ndimage``'s labelled statistics
(each call argsorts the whole image) took 214 ms. :func:`atom_regions` runs the h-maxima only on
the few clusters whose split is not plain (134 ms -> 16 ms at thresholds 0.3 to 0.7; from 0.8,
where every top is faint, or with ``min_prominence=0.5``, it is one whole-image call again), and
the per-atom means, centroids and maxima group the footprints' pixels once (:class:`_Footprints`).

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


#: Map values closer than this (times the map's largest magnitude, at least 1) may be equal up to
#: floating-point rounding: such near-ties leave the fast path of :func:`atom_regions`.
_NEAR_TIE = 1e-12
_EIGHT_NEIGHBOURS = np.ones((3, 3), bool)
#: What one call of h_maxima costs, in pixels of its cost per pixel (0.2 ms a call, 0.5 us a pixel on
#: the 512x512 frame): cluster by cluster runs only while it costs less than one whole-image call.
_CALL_COST_PX = 400


def atom_regions(probability: np.ndarray, threshold: float = 0.5, min_prominence: float = MIN_PROMINENCE) -> tuple[np.ndarray, int]:
    """Label image of the atoms' footprints, and their number.

    A footprint is a connected region where ``probability > threshold``. When two atoms
    lie so close (or so blurred) that their blobs touch above the threshold, the region
    holds two peaks with a dip between them: it is split along the valley (watershed from
    every peak that stands at least ``min_prominence`` above the saddle joining it to a
    higher one, the pixels ``skimage.morphology.h_maxima`` marks). Noise ripples on a blob's
    top are lower than ``min_prominence`` and do not split it; ``min_prominence=1`` never splits.

    The labels are those of ``scipy.ndimage.label`` of the regions when no region splits; otherwise
    the peaks (4-connected, numbered in raster order) label their parts and regions without a
    peak follow in the order of their region label. The h-maxima are those of the whole image,
    computed only where they can split a region (:func:`_prominent_peaks`).

    >>> probability = np.zeros((9, 16)); probability[3:6, 2:7] = 0.9; probability[3:6, 9:14] = 0.9
    >>> probability[4, 7:9] = 0.6  # a bridge between two blobs
    >>> atom_regions(probability)[1], atom_regions(probability, min_prominence=1.0)[1]
    (2, 1)
    """
    from skimage.segmentation import watershed

    if not min_prominence > 0:
        raise ValueError(f"min_prominence must be a positive dip in probability (1 never splits), got {min_prominence}")
    if not np.isfinite(probability).all():
        raise ValueError("the probability map contains NaN or inf")
    mask = probability > threshold
    regions, count = ndimage.label(mask)
    if count == 0 or min_prominence >= 1:
        return regions, count
    # the highest pixel outside the regions: the threshold, or just above it in a float32 map (compared in float32)
    outside = float(probability[~mask].max(initial=threshold))
    peaks = _prominent_peaks(probability.astype(np.float64), mask, max(threshold, outside), min_prominence)
    markers, n_peaks = ndimage.label(peaks)
    unmarked = np.setdiff1d(np.arange(1, count + 1), regions[peaks])  # faint regions keep their highest pixel
    if n_peaks + len(unmarked) == count:  # nothing to split
        return regions, count
    for k, position in enumerate(ndimage.maximum_position(probability, regions, unmarked)):
        markers[position] = n_peaks + 1 + k
    # The whole image's watershed, not each split region's: skimage breaks ties between equal pixels
    # (plateaus of saturated probability 1 are common) by the layout of its heap, which every marker shapes.
    return watershed(-probability, markers, mask=mask), n_peaks + len(unmarked)


def _prominent_peaks(probability: np.ndarray, mask: np.ndarray, threshold: float, min_prominence: float) -> np.ndarray:
    """The pixels ``skimage.morphology.h_maxima(probability, min_prominence)`` marks inside ``mask``
    (float64 ``probability``; no pixel outside ``mask`` is above ``threshold``), computed cluster by
    cluster instead of on the whole image.

    h_maxima marks a pixel when the grey reconstruction (8-connected) of ``probability - h`` under
    ``probability`` lies ``h`` below it there. The reconstruction at a pixel of a cluster (an
    8-connected part of the mask) is the highest, over paths, of the lowest value along a path from
    a higher seed; a path that leaves the cluster crosses a pixel at most ``threshold``. So:

    - a pixel the reconstruction of the cluster alone (the rest set lower than everything) leaves
      unmarked is unmarked on the whole image too (more paths only raise the reconstruction);
    - a marked pixel at least ``threshold + h`` high is marked on the whole image too (its
      reconstruction, ``probability - h`` or more, already beats every path from outside);
    - a cluster whose only regional maximum is a plateau (candidates ``probability ==
      maximum_filter(probability, 3)`` forming one 8-connected blob, which is constant-valued)
      at least ``threshold + h`` high, and no near-tie between neighbours, has that plateau, and
      nothing else, marked: no reconstruction needed. Most atoms are such clusters.

    Only a marked pixel lower than ``threshold + h`` (a faint peak) depends on the landscape below
    the threshold: for those, the window is grown until the 8-connected component above
    ``probability - h`` of the faint pixels lies inside it; paths leaving that component cannot
    raise the reconstruction there, so h_maxima of the window marks them as on the whole image.
    When the clusters' calls would cost more than one call on the whole image (high thresholds,
    where every top is faint; wide low landscapes), that one call it is.

    >>> probability = np.zeros((7, 12)); probability[2:5, 1:4] = 0.9; probability[3, 8] = 0.6
    >>> int(_prominent_peaks(probability, probability > 0.5, 0.5, 0.2).sum())  # the 3x3 plateau and the faint pixel
    10
    """
    from skimage.morphology import h_maxima

    if min_prominence > np.ptp(probability):  # h_maxima marks nothing then
        return np.zeros(mask.shape, bool)
    near_tie = _NEAR_TIE * max(1.0, float(np.abs(probability).max()))
    clusters, n_clusters = ndimage.label(mask, _EIGHT_NEIGHBOURS)
    rise = ndimage.maximum_filter(probability, 3) - probability  # 0 where no neighbour is higher
    candidates = mask & (rise == 0)
    blobs, n_blobs = ndimage.label(candidates, _EIGHT_NEIGHBOURS)
    cluster_of_blob = np.zeros(n_blobs + 1, clusters.dtype)
    cluster_of_blob[blobs[candidates]] = clusters[candidates]
    top = np.zeros(n_clusters + 1)  # the value of the cluster's last blob: its top where it has one blob
    top[clusters[candidates]] = probability[candidates]
    simple = np.bincount(cluster_of_blob[1:], minlength=n_clusters + 1) == 1
    simple &= top - min_prominence > threshold + near_tie
    simple[clusters[mask & (rise > 0) & (rise <= near_tie)]] = False
    simple[0] = False
    peaks = candidates & simple[clusters]
    left = np.flatnonzero(~simple[1:]) + 1
    budget_px = probability.size - _CALL_COST_PX * len(left)  # what the windows may cost
    boxes = ndimage.find_objects(clusters)
    for cluster in left:
        found = _cluster_peaks(probability, clusters, cluster, boxes[cluster - 1], threshold, min_prominence, near_tie, budget_px)
        if found is None:  # cluster by cluster would cost more than h_maxima of the whole image once
            return h_maxima(probability, min_prominence).astype(bool) & mask
        window, marked = found
        peaks[window] |= marked
        budget_px -= marked.size
    return peaks


def _cluster_peaks(
    probability: np.ndarray,
    clusters: np.ndarray,
    cluster: int,
    box: tuple[slice, slice],
    threshold: float,
    min_prominence: float,
    near_tie: float,
    budget_px: int,
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """A window around one cluster and the pixels h_maxima of the whole image marks in the cluster
    (see :func:`_prominent_peaks`); None when a window would exceed ``budget_px`` pixels."""
    from skimage.morphology import h_maxima

    window = _grown(box, 1, probability.shape)
    if _area_px(window) > budget_px:
        return None
    inside = clusters[window] == cluster
    alone = np.where(inside, probability[window], threshold - min_prominence - 1.0)
    marked = h_maxima(alone, min_prominence).astype(bool) & inside
    faint = marked & (probability[window] < threshold + min_prominence + near_tie)
    if not faint.any():
        return window, marked
    level = probability[window][faint].min() - min_prominence - near_tie  # below every faint pixel's probability - h
    margin = 4
    while True:
        window = _grown(box, margin, probability.shape)
        if _area_px(window) > budget_px:
            return None
        above, _ = ndimage.label(probability[window] > level, _EIGHT_NEIGHBOURS)
        component = above == above[clusters[window] == cluster][0]
        if not _touches_inner_edge(component, window, probability.shape):
            break
        margin *= 2
    return window, h_maxima(probability[window], min_prominence).astype(bool) & (clusters[window] == cluster)


def _grown(box: tuple[slice, slice], margin: int, shape: tuple[int, ...]) -> tuple[slice, slice]:
    """``box`` grown by ``margin`` px on every side, clipped to an image of ``shape``."""
    return tuple(slice(max(side.start - margin, 0), min(side.stop + margin, size)) for side, size in zip(box, shape))


def _area_px(window: tuple[slice, slice]) -> int:
    """The number of pixels in ``window`` (slices with start and stop)."""
    return (window[0].stop - window[0].start) * (window[1].stop - window[1].start)


def _touches_inner_edge(component: np.ndarray, window: tuple[slice, slice], shape: tuple[int, ...]) -> bool:
    """Whether ``component`` (a mask over ``window``) reaches an edge of the window that is not an edge of the image."""
    (rows, cols), (height, width) = window, shape
    edges = ((rows.start > 0, component[0]), (rows.stop < height, component[-1]), (cols.start > 0, component[:, 0]), (cols.stop < width, component[:, -1]))
    return any(inner and edge.any() for inner, edge in edges)


@dataclass(frozen=True)
class _Footprints:
    """The pixels of chosen atoms' footprints, grouped atom by atom, for per-atom sums, means and
    maxima of any map with numpy's bincount and reduceat (``scipy.ndimage``'s labelled maxima
    argsort the whole image on every call).

    >>> regions = np.array([[1, 1, 0], [0, 2, 2]])
    >>> footprints = _Footprints.of(regions, np.array([2, 1]))
    >>> footprints.means(np.array([[1.0, 3.0, 9.0], [9.0, 4.0, 6.0]])).tolist()
    [5.0, 2.0]
    """

    pixels: np.ndarray  # flat indices, grouped by atom in the order asked, raster order within each atom
    atoms: np.ndarray  # the atom (0..k-1) each of those pixels belongs to
    starts: np.ndarray  # where each atom's pixels begin in ``pixels``
    areas_px: np.ndarray  # each atom's number of pixels
    width_px: int

    @classmethod
    def of(cls, regions: np.ndarray, index: np.ndarray) -> _Footprints:
        """The footprints labelled ``index`` (k labels) in ``regions`` (H, W), in that order."""
        index = np.asarray(index, int).reshape(-1)
        slot = np.full(max(int(regions.max(initial=0)), int(index.max(initial=0))) + 1, -1)
        slot[index] = np.arange(len(index))
        pixels = np.flatnonzero(regions)
        atoms = slot[regions.ravel()[pixels]]
        pixels, atoms = pixels[atoms >= 0], atoms[atoms >= 0]
        areas_px = np.bincount(atoms, minlength=len(index))
        if (areas_px == 0).any():
            raise ValueError(f"no pixel of the label image is labelled {index[areas_px == 0].tolist()}: ask only for labels of footprints it holds")
        order = np.argsort(atoms, kind="stable")
        return cls(pixels[order], atoms[order], np.cumsum(areas_px) - areas_px, areas_px, regions.shape[1])

    def sums(self, image: np.ndarray) -> np.ndarray:
        """Each atom's sum of ``image`` (H, W) over its footprint, (k,)."""
        return np.bincount(self.atoms, weights=np.ravel(image)[self.pixels], minlength=len(self.areas_px))

    def means(self, image: np.ndarray) -> np.ndarray:
        """Each atom's mean of ``image`` (H, W) over its footprint, (k,)."""
        return self.sums(image) / self.areas_px

    def maxima(self, images: np.ndarray) -> np.ndarray:
        """Each image's highest value in each footprint, (N images, k atoms), from images (N, H, W)."""
        flat = np.asarray(images).reshape(len(images), -1)
        if not len(self.starts):
            return np.empty((len(flat), 0))
        return np.maximum.reduceat(flat[:, self.pixels], self.starts, axis=1).astype(float)

    def centroids(self, weights: np.ndarray) -> np.ndarray:
        """Each footprint's ``weights``-weighted centroid (row, col in px), (k, 2)."""
        rows, cols = np.divmod(self.pixels, self.width_px)
        values = np.ravel(weights)[self.pixels]
        total = np.bincount(self.atoms, weights=values, minlength=len(self.areas_px))
        return np.column_stack([np.bincount(self.atoms, weights=values * axis.astype(float), minlength=len(self.areas_px)) / total for axis in (rows, cols)])


def _kept_footprints(probability: np.ndarray, threshold: float, min_area_px: int, min_prominence: float) -> _Footprints:
    """The footprints (:func:`atom_regions`) at least ``min_area_px`` large."""
    regions, count = atom_regions(probability, threshold, min_prominence)
    areas_px = np.bincount(regions.ravel(), minlength=count + 1)[1:]
    return _Footprints.of(regions, np.flatnonzero(areas_px >= min_area_px) + 1)


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
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
    return _kept_footprints(probability, threshold, min_area_px, min_prominence).centroids(probability)


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
    spread over members (the standard deviation of the members' footprint means). Each member's
    highest probability in the footprint is its ``member_peaks`` entry; a member "votes" for an
    atom when that peak exceeds the threshold.

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
    footprints = _kept_footprints(mean, threshold, min_area_px, min_prominence)
    centres = footprints.centroids(mean)
    information, entropy, variance = (footprints.means(values) for values in (prediction.mutual_information, prediction.entropy, prediction.variance))
    peaks = footprints.maxima(members)
    class_members = getattr(prediction, "class_members", None)
    si, si_std = (None, None) if class_members is None else _si_mean_and_spread(np.asarray(class_members), footprints)
    votes = (peaks > threshold).mean(axis=0)
    return AtomTable(centres[:, 0], centres[:, 1], prediction.sampling_A_per_px, information, entropy, variance, votes, peaks, si, si_std)


def _si_mean_and_spread(class_members: np.ndarray, footprints: _Footprints) -> tuple[np.ndarray, np.ndarray]:
    """Each atom's probability of Si and its uncertainty, from members' maps of "Si, given an atom" (N, H, W).

    Each member's probability is averaged over the atom's footprint; returns the mean over members
    and the standard deviation over members (members' disagreement about the element), each (k atoms,).

    >>> maps = np.zeros((2, 6, 6)); maps[0, :3, :3] = 0.9; maps[1, :3, :3] = 0.5
    >>> regions = np.zeros((6, 6), int); regions[:3, :3] = 1
    >>> [values.round(2).tolist() for values in _si_mean_and_spread(maps, _Footprints.of(regions, np.array([1])))]
    [[0.7], [0.2]]
    """
    per_member = np.array([footprints.means(member) for member in class_members], float).reshape(len(class_members), -1)
    return per_member.mean(axis=0), per_member.std(axis=0)


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
