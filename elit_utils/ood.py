"""Out-of-distribution tests: sweep one imaging condition away from the source domain.

For each point of a sweep we simulate frames with ground truth, let the ensemble
predict, and record detection scores of every member and of the ensemble mean,
the uncertainty, and whether that uncertainty flags the errors:

* :func:`auroc`: how well a score ranks positives above negatives (0.5 = chance);
* :func:`expected_calibration_error` and :func:`reliability_curve`: do the
  per-pixel probabilities mean what they say?
* :func:`risk_coverage`: precision of the atoms kept when only the most certain
  fraction is kept;
* a frame's *shift score* (:class:`ShiftDetector`: its distance from source frames in the
  members' feature space), which an automated microscope can threshold to decide "this frame
  is out of distribution"; its mean mutual information is the alternative;
* a frame's *error estimate* (:class:`FrameErrorMonitor`: the share of its atoms more uncertain
  than almost any source atom), which says "this frame's atoms are doubtful" rather than
  "this frame is different".

:func:`cached_sweeps` runs (or reads back from the cache) the sweeps of notebooks 03 and 04,
and :func:`sweep_table` shows them as a table.

:func:`classical_atoms` is the training-free reference: Gaussian smoothing and
local maxima (scikit-image), tuned once on the source domain.

Example
-------
>>> auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1]))
1.0
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import ERROR_MONITOR_FILE, SHIFT_DETECTOR_FILE
from .errors import BadModelFolderError, BadValueError
from .io import MIN_SIDE_PX
from .locate import find_atoms, locate_atoms
from .metrics import DetectionScores, detection_scores, judge_atoms, match_atoms, pool_scores, pooled_scores
from .simulate import DOMAINS, Domain, dataset

#: The sweeps: axis name -> (what it changes, values from the source setting outwards, unit).
SWEEP_AXES: dict[str, tuple[str, tuple[float, ...], str]] = {
    "dose": ("conditions.dose_e_per_A2", (3e5, 1e5, 5e4, 2e4, 1e4), "e/Å²"),
    "sampling": ("conditions.sampling_A_per_px", (0.1, 0.13, 0.16, 0.2, 0.25), "Å/px"),
    "defocus": ("conditions.defocus_A", (0.0, 30.0, 50.0, 70.0, 90.0), "Å"),
    "astigmatism": ("conditions.astigmatism_A", (0.0, 15.0, 30.0, 45.0, 60.0), "Å"),
    "drift": ("scan", (0.0, 0.75, 1.5, 2.25, 3.0), "px jitter (and Å drift)"),
    "contamination": ("contamination", (0.0, 0.15, 0.3, 0.45, 0.6), "coverage"),
    "dopants": ("sample.dopant_density_per_nm2", (0.1, 0.5, 1.0, 2.0, 3.0), "Si per nm²"),
    "experiment_like": ("towards experiment_like", (0.0, 0.25, 0.5, 0.75, 1.0), "fraction of the way"),
}

#: What each sweep axis does to the microscope or the specimen, in plain words.
SWEEP_AXIS_MEANINGS: dict[str, str] = {
    "dose": "electrons per unit area: fewer electrons, noisier frames",
    "sampling": "pixel size: larger pixels, coarser frames (resampled to the training pixel size)",
    "defocus": "the probe focused above or below the sheet: wider, blurrier probe",
    "astigmatism": "a probe stretched in one direction (two-fold astigmatism)",
    "drift": "scan lines shifted at random and the specimen drifting during the scan",
    "contamination": "patches of amorphous carbon over the sheet, and a brighter background",
    "dopants": "density of Si atoms, brighter than carbon",
    "experiment_like": "every condition at once, moved towards the experiment-like domain",
}


def _interpolate(start: object, end: object, fraction: float) -> object:
    """Dataclass fields moved ``fraction`` of the way from ``start`` to ``end`` (numbers only)."""
    changes = {}
    for item in dataclasses.fields(start):
        a, b = getattr(start, item.name), getattr(end, item.name)
        if a == b or item.name in ("image_size_px",):
            continue
        if isinstance(a, tuple):
            changes[item.name] = tuple(x + fraction * (y - x) for x, y in zip(a, b))
        elif isinstance(a, (int, float)) and not isinstance(a, bool) and a is not None and b is not None:
            changes[item.name] = type(a)(a + fraction * (b - a)) if isinstance(a, float) else a
        elif fraction >= 0.5:
            changes[item.name] = b
    return dataclasses.replace(start, **changes)


def shifted_domain(axis: str, value: float, source: Domain | None = None) -> Domain:
    """The source domain with one condition set to ``value`` along ``axis``.

    >>> shifted_domain("dose", 1e4).conditions.dose_e_per_A2
    10000.0
    >>> shifted_domain("experiment_like", 1.0).conditions.sampling_A_per_px
    0.08
    """
    if axis not in SWEEP_AXES:
        raise ValueError(f"Unknown sweep axis {axis!r}; choose one of: {', '.join(SWEEP_AXES)}")
    base = source or DOMAINS["source"]
    target, _, _ = SWEEP_AXES[axis]
    conditions, sample = base.conditions, base.sample
    if target.startswith("conditions."):
        conditions = dataclasses.replace(conditions, **{target.split(".")[1]: value})
    elif target.startswith("sample."):
        sample = dataclasses.replace(sample, **{target.split(".")[1]: value})
    elif target == "scan":
        conditions = dataclasses.replace(conditions, scan_jitter_px=value, drift_A_per_frame=(value, 1.5 * value))
    elif target == "contamination":
        conditions = dataclasses.replace(conditions, contamination_coverage=value, background_fraction=conditions.background_fraction + 3 * value)
    else:
        experiment = DOMAINS["experiment_like"]
        conditions = _interpolate(conditions, experiment.conditions, value)
        sample = _interpolate(sample, experiment.sample, value)
    return Domain(f"{axis}={value:g}", f"source with {axis} = {value:g} {SWEEP_AXES[axis][2]}", conditions, sample)


# --------------------------------------------------------------------------- scores


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random negative.

    Ties count one half (the Mann-Whitney statistic). nan when one class is absent.

    >>> auroc(np.array([0.5, 0.5]), np.array([0, 1]))
    0.5
    """
    scores = np.asarray(scores, float).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):  # average ranks over ties
        ranks[order[start:end]] = (start + end + 1) / 2
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def reliability_curve(probabilities: np.ndarray, outcomes: np.ndarray, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per probability bin: mean predicted probability, observed frequency, and count.

    >>> p, f, n = reliability_curve(np.array([0.05, 0.95]), np.array([0, 1]), n_bins=2)
    >>> p.tolist(), f.tolist(), n.tolist()
    ([0.05, 0.95], [0.0, 1.0], [1, 1])
    """
    probabilities = np.asarray(probabilities, float).ravel()
    outcomes = np.asarray(outcomes, float).ravel()
    bins = np.clip((probabilities * n_bins).astype(int), 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        mean_p = np.bincount(bins, probabilities, n_bins) / counts
        frequency = np.bincount(bins, outcomes, n_bins) / counts
    keep = counts > 0
    return mean_p[keep], frequency[keep], counts[keep]


def expected_calibration_error(probabilities: np.ndarray, outcomes: np.ndarray, n_bins: int = 10) -> float:
    """Count-weighted mean |predicted probability - observed frequency| over probability bins.

    >>> round(expected_calibration_error(np.full(10, 0.7), np.r_[np.ones(7), np.zeros(3)]), 12)
    0.0
    """
    mean_p, frequency, counts = reliability_curve(probabilities, outcomes, n_bins)
    return float(np.sum(counts * np.abs(mean_p - frequency)) / counts.sum())


def risk_coverage(uncertainty: np.ndarray, correct: np.ndarray, coverages: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Precision of the atoms kept when keeping only the most certain fraction (coverage).

    >>> cov, precision = risk_coverage(np.array([0.1, 0.2, 0.9]), np.array([1, 1, 0]), np.array([2 / 3, 1.0]))
    >>> precision.round(3).tolist()
    [1.0, 0.667]
    """
    uncertainty = np.asarray(uncertainty, float)
    correct = np.asarray(correct, float)
    coverages = np.linspace(0.1, 1.0, 10) if coverages is None else np.asarray(coverages, float)
    order = np.argsort(uncertainty, kind="mergesort")
    precision = []
    for coverage in coverages:
        kept = order[: max(1, round(coverage * len(order)))]
        precision.append(correct[kept].mean() if len(kept) and len(order) else np.nan)
    return coverages, np.array(precision)


def threshold_for_precision(uncertainty: np.ndarray, correct: np.ndarray, target_precision: float) -> float:
    """The largest uncertainty limit at which the atoms kept (uncertainty <= limit) reach ``target_precision``.

    Returns -inf when even the single most certain atom is wrong (no limit works).

    >>> threshold_for_precision(np.array([0.1, 0.2, 0.3, 0.4]), np.array([1, 1, 0, 1]), 0.75)
    0.4
    >>> threshold_for_precision(np.array([0.1, 0.2, 0.3, 0.4]), np.array([1, 1, 0, 1]), 0.9)
    0.2
    """
    uncertainty = np.asarray(uncertainty, float)
    order = np.argsort(uncertainty, kind="mergesort")
    precision = np.cumsum(np.asarray(correct, float)[order]) / np.arange(1, len(order) + 1)
    good = np.flatnonzero(precision >= target_precision)
    return float(uncertainty[order[good[-1]]]) if len(good) else -np.inf


#: Kinds of atomic site whose uncertainty :func:`site_uncertainty` compares.
SITE_KINDS = ("C in the lattice", "C, under-coordinated", "Si dopant", "near the frame edge")


def site_kinds(true_atoms: np.ndarray, sampling_A_per_px: float, frame_shape: tuple[int, int], edge_A: float = 2.0, bond_A: float = 1.8) -> np.ndarray:
    """The kind of each true atom (row px, col px, class 0 = C / 1 = Si), one of :data:`SITE_KINDS`.

    An atom within ``edge_A`` of the frame edge is "near the frame edge" (its neighbours may be
    outside the frame); else Si is a dopant; else C with fewer than three neighbours within
    ``bond_A`` is under-coordinated (edges of holes, defects).

    >>> atoms = np.array([[50, 50, 0], [50, 64.2, 0], [37.7, 42.9, 0], [62.3, 42.9, 1], [1, 1, 0]])
    >>> site_kinds(atoms, 0.1, (100, 100)).tolist()
    ['C in the lattice', 'C, under-coordinated', 'C, under-coordinated', 'Si dopant', 'near the frame edge']
    """
    from scipy.spatial import cKDTree

    atoms = np.asarray(true_atoms, float).reshape(-1, 3)
    positions_A = atoms[:, :2] * sampling_A_per_px
    neighbours = np.array([len(n) - 1 for n in cKDTree(positions_A).query_ball_point(positions_A, bond_A)]) if len(atoms) else np.empty(0)
    edge_distance_A = np.minimum(atoms[:, :2], np.array(frame_shape) - 1 - atoms[:, :2]).min(axis=1) * sampling_A_per_px
    kinds = np.where(neighbours < 3, SITE_KINDS[1], SITE_KINDS[0]).astype(object)
    kinds[atoms[:, 2] == 1] = SITE_KINDS[2]
    kinds[edge_distance_A < edge_A] = SITE_KINDS[3]
    return kinds.astype(str)


def site_uncertainty(prediction: object, true_atoms: np.ndarray, tolerance_A: float = 0.5) -> dict[str, np.ndarray]:
    """Per true atom of one frame: its site kind, whether the ensemble found it, and the found atom's entropy and MI (nan if missed).

    ``prediction`` is a one-frame ensemble prediction with its pixel size; ``true_atoms`` (k, 3) row, col, class.
    """
    sampling = prediction.sampling_A_per_px
    table = locate_atoms(prediction)
    found_index, true_index = match_atoms(table.coordinates_px, np.asarray(true_atoms)[:, :2], tolerance_A / sampling)
    entropy, information = np.full(len(true_atoms), np.nan), np.full(len(true_atoms), np.nan)
    entropy[true_index] = table.entropy[found_index]
    information[true_index] = table.mutual_information[found_index]
    return {"kind": site_kinds(true_atoms, sampling, prediction.mean.shape), "found": ~np.isnan(entropy), "entropy": entropy, "mutual_information": information}


def summarise_sites(sites: list[dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Per site kind, over frames of :func:`site_uncertainty`: atoms, fraction found, median entropy and MI of those found.

    >>> site = {"kind": np.array(["Si dopant"]), "found": np.array([True]), "entropy": np.array([0.4]), "mutual_information": np.array([0.1])}
    >>> summarise_sites([site])["Si dopant"]
    {'atoms': 1, 'found': 1.0, 'median_entropy_nats': 0.4, 'median_mi_nats': 0.1}
    """
    merged = {key: np.concatenate([s[key] for s in sites]) for key in ("kind", "found", "entropy", "mutual_information")}
    table = {}
    for kind in SITE_KINDS:
        chosen = merged["kind"] == kind
        hits = chosen & merged["found"]
        table[kind] = {
            "atoms": int(chosen.sum()),
            "found": float(merged["found"][chosen].mean()) if chosen.any() else float("nan"),
            "median_entropy_nats": float(np.median(merged["entropy"][hits])) if hits.any() else float("nan"),
            "median_mi_nats": float(np.median(merged["mutual_information"][hits])) if hits.any() else float("nan"),
        }
    return table


# --------------------------------------------------------------------------- shift detection

#: The share of fresh source frames a :class:`ShiftDetector` flags by default (its false alarms).
FALSE_ALARM_RATE = 0.05


@dataclass(frozen=True)
class ShiftDetector:
    """Is a frame like the source data? Its distance from source frames in the members' feature space.

    The score of a frame is the Mahalanobis distance of its features (:meth:`Ensemble.features
    <elit_utils.ensemble.Ensemble.features>`: every member's bottleneck, averaged over the frame)
    from the mean of reference source frames, with their covariance shrunk towards a diagonal by
    the Ledoit-Wolf rule (there are fewer frames than features). This is the feature-space
    detector of Lee et al. (NeurIPS 2018). We use it, rather than the frame's mean mutual
    information, because it sees the input itself: MI rises only where the members disagree, and
    is blind to shifts the pipeline normalises away (a coarser pixel, resampled, looks *cleaner*
    to the networks and gives lower MI) and to shifts every member misreads alike.

    ``limit``: frames scoring above it are flagged as out of distribution. It is set so that a
    share ``false_alarm_rate`` of fresh source frames is flagged: the reference frames are split
    into folds, each fold is scored by a detector fitted on the others (so its scores are those of
    unseen frames), and the limit is the ``1 - false_alarm_rate`` quantile of those scores.

    ``members``: the members whose features it was fitted on (seed -> sha256 of the weights
    file); a detector is valid for exactly those members (:meth:`check`), and loading one beside
    an ensemble that has changed since is refused.

    >>> rng = np.random.default_rng(0)
    >>> detector = ShiftDetector.fit(rng.normal(size=(40, 3)))
    >>> bool(detector.score(np.array([[0.0, 0.0, 0.0]]))[0] < detector.limit < detector.score(np.array([[6.0, 6.0, 6.0]]))[0])
    True
    """

    mean: np.ndarray
    precision_matrix: np.ndarray
    limit: float
    members: dict[str, str] | None = None

    @staticmethod
    def _moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.covariance import LedoitWolf

        fitted = LedoitWolf().fit(features)
        return fitted.location_, fitted.precision_

    @classmethod
    def fit(
        cls, reference_features: np.ndarray, false_alarm_rate: float = FALSE_ALARM_RATE, n_folds: int = 8, members: dict[str, str] | None = None
    ) -> ShiftDetector:
        """Fit on source frames' features, (n frames, features); needs at least 4 frames.

        ``members`` (seed -> weights sha256, :func:`member_fingerprint`) records which members made the features.
        """
        features = np.asarray(reference_features, float)
        if features.ndim != 2 or len(features) < 4:
            raise BadValueError(f"ShiftDetector.fit needs features of at least 4 reference frames (n, features), got shape {features.shape}")
        if not np.isfinite(features).all():
            raise BadValueError("the reference features contain NaN or inf; check the reference frames")
        if not 0 < false_alarm_rate < 1:
            raise BadValueError(f"false_alarm_rate must lie strictly between 0 and 1, got {false_alarm_rate}")
        held_out = []
        for fold in np.array_split(np.arange(len(features)), min(n_folds, len(features))):
            mean, precision = cls._moments(np.delete(features, fold, axis=0))
            held_out.append(_mahalanobis(features[fold], mean, precision))
        mean, precision = cls._moments(features)
        return cls(mean, precision, float(np.quantile(np.concatenate(held_out), 1 - false_alarm_rate)), members)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Distance of each frame from the source frames (unitless: the larger, the less like them)."""
        features = np.atleast_2d(np.asarray(features, float))
        if features.shape[1] != len(self.mean):
            raise BadModelFolderError(
                f"features have {features.shape[1]} values per frame, the detector was fitted on {len(self.mean)}: it belongs to another ensemble; "
                "refit it (delete it and rerun elit train, or ensure_shift_detector)."
            )
        return _mahalanobis(features, self.mean, self.precision_matrix)

    def flags(self, features: np.ndarray) -> np.ndarray:
        """True for each frame whose score exceeds the limit: out of distribution."""
        return self.score(features) > self.limit

    def check(self, ensemble: object, path: str | Path | None = None) -> None:
        """Refuse (:class:`~elit_utils.errors.BadModelFolderError`) when this detector was fitted on other members than ``ensemble``'s.

        A detector that records no members (fitted before detectors recorded them) passes.
        """
        if self.members is not None:
            _check_members(self.members, member_fingerprint(ensemble), Path(path) if path else Path(ensemble.folder) / SHIFT_DETECTOR_FILE)

    def save(self, path: str | Path) -> None:
        """Write the detector as safetensors (atomically), e.g. beside the ensemble it belongs to."""
        import json

        from safetensors.numpy import save_file

        from .cache import atomic_path

        metadata = {"limit": repr(self.limit), "features": "fp32"}
        if self.members is not None:
            metadata["members"] = json.dumps(self.members, sort_keys=True)
        with atomic_path(path) as tmp:
            save_file({"mean": self.mean, "precision_matrix": self.precision_matrix}, str(tmp), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path, ensemble: object | None = None) -> ShiftDetector:
        """Read a detector written by :meth:`save` (no unpickling), checked against its members.

        With ``ensemble``, the detector must have been fitted on exactly its members; without,
        on the members that the ``ensemble.json`` beside it lists (when that records them). A
        stale or unreadable detector raises a :class:`~elit_utils.errors.BadModelFolderError`
        that says how to refit it.

        >>> import tempfile; from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / SHIFT_DETECTOR_FILE
        >>> ShiftDetector(np.zeros(2), np.eye(2), 3.0, {"0": "ab"}).save(path)
        >>> ShiftDetector.load(path).limit
        3.0
        """
        path = Path(path)
        detector = _read_detector(path)
        if detector.members is None:
            print(f"note: {path} does not record the members it was fitted on (an older ELIT Lab); refit it ({_refit(path)}) to be sure it fits.")
        elif ensemble is not None:
            detector.check(ensemble, path)
        else:
            recorded = _recorded_members(path.parent)
            if recorded is not None:
                _check_members(detector.members, recorded, path)
        return detector


def _mahalanobis(features: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    centred = features - mean
    return np.sqrt(np.einsum("ij,jk,ik->i", centred, precision, centred).clip(0, None))


def _refit(path: Path) -> str:
    return f"delete it and rerun elit train --out {path.parent}"


def _read_detector(path: Path) -> ShiftDetector:
    """The detector stored at ``path``, unchecked; a :class:`BadModelFolderError` naming the file when it is none."""
    import json

    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as stored:
            metadata = stored.metadata() or {}
            if "limit" not in metadata or set(stored.keys()) != {"mean", "precision_matrix"}:
                raise BadModelFolderError(f"{path} is not a shift detector written by ShiftDetector.save; {_refit(path)} to fit one.")
            mean, precision = stored.get_tensor("mean"), stored.get_tensor("precision_matrix")
        members = json.loads(metadata["members"]) if "members" in metadata else None
        limit = float(metadata["limit"])
    except (SafetensorError, OSError, ValueError) as error:
        if isinstance(error, BadModelFolderError):
            raise
        raise BadModelFolderError(f"{path} is not a readable shift detector ({str(error).splitlines()[0][:100]}); {_refit(path)} to refit it.") from error
    if mean.ndim != 1 or precision.shape != (len(mean), len(mean)) or not np.isfinite(limit) or not isinstance(members, (dict, type(None))):
        raise BadModelFolderError(f"{path} is not a consistent shift detector (shapes {mean.shape}, {precision.shape}); {_refit(path)} to refit it.")
    return ShiftDetector(mean, precision, limit, members)


def member_fingerprint(ensemble: object) -> dict[str, str]:
    """The members of a loaded ensemble as a shift detector records them: seed -> sha256 of the weights file.

    >>> class Loaded:
    ...     weights_sha256 = {1: "b", 0: "a"}
    >>> member_fingerprint(Loaded())
    {'0': 'a', '1': 'b'}
    """
    return {str(seed): sha for seed, sha in sorted(ensemble.weights_sha256.items())}


def _recorded_members(folder: Path) -> dict[str, str] | None:
    """The members that ``folder/ensemble.json`` lists with their weights' sha256, when it lists all of them (else None)."""
    from .ensemble import read_record

    try:
        record = read_record(folder)
    except BadModelFolderError:
        return None  # no readable record beside the detector: loading the ensemble will say what is wrong
    if record["format_version"] < 2 or set(record["members"]) != {str(seed) for seed in record["seeds"]}:
        return None
    return {key: record["members"][key]["weights_sha256"] for key in sorted(record["members"], key=int)}


def _check_members(fitted: dict[str, str], current: dict[str, str], path: Path) -> None:
    if fitted == current:
        return
    seeds = sorted(map(int, fitted))
    now = sorted(map(int, current))
    changed = "other members" if seeds != now else "members whose weights have changed since"
    raise BadModelFolderError(
        f"{path} was fitted on {changed} (seeds {', '.join(map(str, seeds))}; the ensemble now has {', '.join(map(str, now))}): "
        f"it is stale; {_refit(path)} to refit it."
    )


def fit_shift_detector(
    ensemble: object, n_images: int, seed: int, image_size_px: int, domain: str = "source", false_alarm_rate: float = FALSE_ALARM_RATE
) -> ShiftDetector:
    """A :class:`ShiftDetector` fitted on ``n_images`` fresh simulated frames of the training ``domain``, recording the members it was fitted on.

    Its limit flags a share ``false_alarm_rate`` of fresh frames of that domain."""
    data = dataset(domain, n=n_images, seed=seed, image_size_px=image_size_px, cache=False)
    features = ensemble.features(data.images, sampling_A_per_px=data.conditions.sampling_A_per_px)
    return ShiftDetector.fit(features, false_alarm_rate, members=member_fingerprint(ensemble))


def ensure_shift_detector(ensemble: object, n_images: int, seed: int, image_size_px: int, domain: str = "source") -> tuple[ShiftDetector, bool]:
    """The shift detector of ``ensemble``'s folder, refitted (and saved) when it is missing,
    unreadable or stale (fitted on other members); returns it and whether it was (re)fitted.

    What ``elit train`` calls after training, so that a resized or repaired ensemble never keeps
    a detector of its old members.
    """
    path = Path(ensemble.folder) / SHIFT_DETECTOR_FILE
    if path.exists():
        try:
            detector = _read_detector(path)
            if detector.members == member_fingerprint(ensemble):
                return detector, False
        except BadModelFolderError:
            pass  # unreadable: fitted afresh below
    detector = fit_shift_detector(ensemble, n_images, seed, image_size_px, domain)
    detector.save(path)
    return detector, True


# --------------------------------------------------------------------------- baseline


@dataclass(frozen=True)
class ClassicalFinder:
    """Training-free atom finding: Gaussian smoothing, then local maxima above a relative threshold.

    Lengths are in A, so one tuning works at any pixel size.
    """

    smoothing_A: float = 0.3
    min_distance_A: float = 0.6
    threshold_rel: float = 0.3


def classical_atoms(image: np.ndarray, sampling_A_per_px: float, finder: ClassicalFinder) -> np.ndarray:
    """Atom centres (row, col px) by the classical method.

    >>> image = np.zeros((32, 32)); image[10, 12] = image[22, 20] = 1.0
    >>> classical_atoms(image, 0.1, ClassicalFinder(smoothing_A=0.2)).tolist()
    [[10.0, 12.0], [22.0, 20.0]]
    """
    from scipy.ndimage import gaussian_filter
    from skimage.feature import peak_local_max

    from .io import normalize_image

    smooth = gaussian_filter(normalize_image(image), finder.smoothing_A / sampling_A_per_px)
    peaks = peak_local_max(
        smooth, min_distance=max(1, round(finder.min_distance_A / sampling_A_per_px)), threshold_rel=finder.threshold_rel, exclude_border=False
    )
    return np.asarray(sorted(map(tuple, peaks)), float).reshape(-1, 2)


def tune_classical(images: np.ndarray, truth: list[np.ndarray], sampling_A_per_px: float, score_kwargs: dict) -> tuple[ClassicalFinder, float]:
    """Grid-search the classical finder on (source-domain) frames; return it and its F1."""
    best, best_f1 = ClassicalFinder(), -1.0
    for smoothing in (0.1, 0.2, 0.3, 0.45):
        for distance in (0.4, 0.6, 0.8):
            for threshold in (0.1, 0.3, 0.5):
                finder = ClassicalFinder(smoothing_A=smoothing, min_distance_A=distance, threshold_rel=threshold)
                found = [classical_atoms(image, sampling_A_per_px, finder) for image in images]
                f1 = pooled_scores(found, truth, sampling_A_per_px, **score_kwargs).f1
                if f1 > best_f1:
                    best, best_f1 = finder, f1
    return best, best_f1


def tune_classical_on_source(n_images: int, seed: int, image_size_px: int, tolerance_A: float = 0.5, border_A: float = 0.5) -> tuple[ClassicalFinder, float]:
    """:func:`tune_classical` on ``n_images`` fresh simulated source frames: the finder and its F1 there.

    >>> finder, f1 = tune_classical_on_source(1, seed=3, image_size_px=48)
    >>> f1 > 0.8
    True
    """
    data = dataset("source", n=n_images, seed=seed, image_size_px=image_size_px, cache=False)
    truth = [data.coordinates(i)[:, :2] for i in range(len(data))]
    score = {"tolerance_A": tolerance_A, "frame_shape": data.images.shape[1:], "border_A": border_A}
    return tune_classical(data.images, truth, data.conditions.sampling_A_per_px, score)


# --------------------------------------------------------------------------- sweeps


@dataclass
class SweepPoint:
    """What the ensemble did at one point of a sweep."""

    axis: str
    value: float
    ensemble: DetectionScores
    members: list[DetectionScores]
    classical: DetectionScores
    frame_mutual_information: np.ndarray
    frame_shift_scores: np.ndarray
    frame_flagged: np.ndarray
    atom_mutual_information: np.ndarray
    atom_entropy: np.ndarray
    atom_correct: np.ndarray
    pixel_probability: np.ndarray
    pixel_truth: np.ndarray
    pixel_mutual_information: np.ndarray
    ensemble_counts: np.ndarray
    member_counts: np.ndarray
    example: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def member_f1(self) -> np.ndarray:
        """F1 of each member."""
        return np.array([m.f1 for m in self.members])

    @property
    def mean_mutual_information(self) -> float:
        """Mean over the point's frames of each frame's mean mutual information (nats)."""
        return float(self.frame_mutual_information.mean())


def judged_atoms(prediction: object, truth: list[np.ndarray], tolerance_A: float = 0.5, border_A: float = 0.5) -> tuple[list, np.ndarray]:
    """The atoms the ensemble finds in each frame of a stack prediction, and (all frames
    concatenated) whether each is right, judged as the F1 judges them
    (:func:`~elit_utils.metrics.judge_atoms`): right when matched one-to-one to a true atom within
    ``tolerance_A``; atoms in the ``border_A`` band that match no scored true atom are left out.

    >>> from elit_utils.ensemble import uncertainty_maps
    >>> members = np.zeros((2, 1, 20, 20)); members[:, 0, 6:9, 6:9] = 0.9; members[:, 0, 12:15, 12:15] = 0.9
    >>> tables, correct = judged_atoms(uncertainty_maps(members, 0.1), [np.array([[7.0, 7.0]])], border_A=0.2)
    >>> len(tables[0]), correct.tolist()
    (2, [True, False])
    """
    tables, correct = [], []
    for index, true_px in enumerate(truth):
        table = locate_atoms(prediction.frame(index))
        shape = prediction.mean.shape[1:]
        scored, right = judge_atoms(table.coordinates_px, true_px, prediction.sampling_A_per_px, tolerance_A, shape, border_A)
        tables.append(table.select(scored))
        correct.append(right[scored])
    return tables, np.concatenate(correct) if correct else np.zeros(0, bool)


def evaluate_point(
    ensemble: object,
    axis: str,
    value: float,
    n_images: int,
    seed: int,
    image_size_px: int,
    finder: ClassicalFinder,
    detector: ShiftDetector | None,
    tolerance_A: float = 0.5,
    border_A: float = 0.5,
) -> SweepPoint:
    """Simulate ``n_images`` frames at one sweep point; score the ensemble, its members and the
    baseline, and each frame's shift score (``detector``; nan and not flagged without one) and
    mean mutual information."""
    domain = shifted_domain(axis, value)
    data = dataset(domain, n=n_images, seed=seed, image_size_px=image_size_px, cache=False)
    sampling = data.conditions.sampling_A_per_px
    prediction = ensemble.predict(data.images, sampling_A_per_px=sampling)
    truth = [data.coordinates(i)[:, :2] for i in range(len(data))]
    score = {"tolerance_A": tolerance_A, "frame_shape": data.images.shape[1:], "border_A": border_A}
    tables, correct = judged_atoms(prediction, truth, tolerance_A, border_A)
    ensemble_frames = frame_scores([find_atoms(mean) for mean in prediction.mean], truth, sampling, **score)
    member_frames = [frame_scores([find_atoms(m) for m in member], truth, sampling, **score) for member in prediction.members]
    classical = pooled_scores([classical_atoms(image, sampling, finder) for image in data.images], truth, sampling, **score)
    rng = np.random.default_rng(seed)
    pick = rng.choice(prediction.mean.size, size=min(20000, prediction.mean.size), replace=False)
    example = {"image": data.images[0], "variance": prediction.variance[0], "mutual_information": prediction.mutual_information[0], "mean": prediction.mean[0]}
    if detector is not None:
        features = ensemble.features(data.images, sampling_A_per_px=sampling)
        shift_scores, flagged = detector.score(features), detector.flags(features)
    else:
        shift_scores, flagged = np.full(len(data), np.nan), np.zeros(len(data), bool)
    return SweepPoint(
        axis,
        value,
        pool_scores(ensemble_frames),
        [pool_scores(frames) for frames in member_frames],
        classical,
        prediction.mutual_information.mean(axis=(1, 2)),
        shift_scores,
        flagged,
        np.concatenate([t.mutual_information for t in tables]),
        np.concatenate([t.entropy for t in tables]),
        correct,
        prediction.mean.ravel()[pick],
        data.atom_mask.ravel()[pick],
        prediction.mutual_information.ravel()[pick],
        frame_counts(ensemble_frames),
        np.stack([frame_counts(frames) for frames in member_frames]),
        example,
    )


def frame_scores(found: list[np.ndarray], truth: list[np.ndarray], sampling_A_per_px: float, **score: object) -> list[DetectionScores]:
    """Each frame's :func:`~elit_utils.metrics.detection_scores` (``score``: tolerance, frame shape, border)."""
    return [detection_scores(f, t, sampling_A_per_px, **score) for f, t in zip(found, truth)]


def frame_counts(per_frame: list[DetectionScores]) -> np.ndarray:
    """Matched, found and true atoms of each frame, (frames, 3).

    >>> frame_counts(frame_scores([np.array([[5.0, 5.0]])], [np.array([[5.0, 5.2], [20.0, 20.0]])], 0.1)).tolist()
    [[1, 1, 2]]
    """
    return np.array([[r.n_matched, r.n_found, r.n_true] for r in per_frame], int).reshape(-1, 3)


def _pooled_f1(counts: np.ndarray) -> np.ndarray:
    """F1 pooled over frames (the last-but-one axis) from (..., frames, 3) counts: 2 matched / (found + true)."""
    matched, found, true = (counts[..., :, k].sum(axis=-1) for k in range(3))
    return np.where(found + true > 0, 2 * matched / np.maximum(found + true, 1), 1.0)


def ensemble_minus_median_interval(
    ensemble_counts: np.ndarray, member_counts: np.ndarray, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Bootstrap interval of (ensemble F1 - median member's F1) over the frames of a point.

    Frames are drawn with replacement and the ensemble and every member are scored on the same
    draw (paired), so the interval shows whether a difference is larger than the luck of which
    frames were simulated. ``ensemble_counts`` is (frames, 3) and ``member_counts`` (members,
    frames, 3), from :func:`frame_counts`.

    >>> ensemble = np.array([[9, 10, 10]] * 4)
    >>> members = np.array([[[9, 10, 10]] * 4, [[8, 10, 10]] * 4, [[10, 10, 10]] * 4])
    >>> ensemble_minus_median_interval(ensemble, members)
    (0.0, 0.0)
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ensemble_counts), (n_resamples, len(ensemble_counts)))
    differences = [_pooled_f1(ensemble_counts[d]) - np.median(_pooled_f1(member_counts[:, d])) for d in draws]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(differences, [tail, 100 - tail])
    return float(low), float(high)


def sweep(
    ensemble: object,
    axis: str,
    n_images: int,
    seed: int,
    image_size_px: int,
    finder: ClassicalFinder,
    detector: ShiftDetector | None,
    values: tuple[float, ...] | None = None,
    tolerance_A: float = 0.5,
    border_A: float = 0.5,
) -> list[SweepPoint]:
    """Evaluate ``ensemble`` at every value of ``axis`` (default: :data:`SWEEP_AXES`'s values),
    atoms scored within ``tolerance_A`` and outside a ``border_A`` band along the frame's edge.

    Point ``i`` is simulated from seed ``seed + 17 i``, so two sweeps from one seed image the
    same specimens; ``detector`` None leaves the frames' shift scores out (nan)."""
    values = values or SWEEP_AXES[axis][1]
    return [evaluate_point(ensemble, axis, v, n_images, seed + 17 * i, image_size_px, finder, detector, tolerance_A, border_A) for i, v in enumerate(values)]


#: Fields of a :class:`SweepPoint` that are plain arrays (stored as they are by :func:`cached_sweeps`).
_POINT_ARRAYS = tuple(f.name for f in dataclasses.fields(SweepPoint) if f.name not in ("axis", "value", "ensemble", "members", "classical", "example"))
_SWEEPS_FORMAT = 1


def _scores_array(scores: list[DetectionScores]) -> np.ndarray:
    return np.array([dataclasses.astuple(s) for s in scores], float).reshape(-1, len(dataclasses.fields(DetectionScores)))


def _scores_from_array(rows: np.ndarray) -> list[DetectionScores]:
    return [DetectionScores(int(r[0]), int(r[1]), int(r[2]), *map(float, r[3:])) for r in np.atleast_2d(rows)]


def sweeps_to_arrays(points: dict[str, list[SweepPoint]]) -> dict[str, np.ndarray]:
    """Every sweep point as plain numeric arrays named ``axis.index.field`` (what :func:`cached_sweeps` stores: no pickle).

    :func:`sweeps_from_arrays` turns them back into the same points.
    """
    arrays: dict[str, np.ndarray] = {}
    for axis, sweep_points in points.items():
        for i, p in enumerate(sweep_points):
            name = f"{axis}.{i}."
            arrays[name + "value"] = np.array(p.value, float)
            arrays[name + "ensemble"] = _scores_array([p.ensemble])
            arrays[name + "members"] = _scores_array(p.members)
            arrays[name + "classical"] = _scores_array([p.classical])
            arrays.update({name + key: np.asarray(getattr(p, key)) for key in _POINT_ARRAYS})
            arrays.update({f"{name}example.{key}": np.asarray(v) for key, v in p.example.items()})
    return arrays


def sweeps_from_arrays(arrays: dict[str, np.ndarray]) -> dict[str, list[SweepPoint]]:
    """The sweep points that :func:`sweeps_to_arrays` stored, in their order."""
    entries: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for name, array in arrays.items():
        axis, index, key = name.split(".", 2)
        entries.setdefault(axis, {}).setdefault(int(index), {})[key] = array
    points = {}
    for axis, by_index in entries.items():
        points[axis] = []
        for index in sorted(by_index):
            a = by_index[index]
            example = {key.removeprefix("example."): v for key, v in a.items() if key.startswith("example.")}
            (ensemble,), (classical,) = _scores_from_array(a["ensemble"]), _scores_from_array(a["classical"])
            fields = {key: a[key] for key in _POINT_ARRAYS}
            points[axis].append(SweepPoint(axis, float(a["value"]), ensemble, _scores_from_array(a["members"]), classical, example=example, **fields))
    return points


def sweep_seed(seed: int, axis: str) -> int:
    """The seed :func:`cached_sweeps` simulates ``axis`` from: ``seed + 3000 + 100 k`` for axis number ``k`` of :data:`SWEEP_AXES`.

    >>> sweep_seed(0, "dose"), sweep_seed(0, "defocus")
    (3000, 3200)
    """
    return seed + 3000 + 100 * list(SWEEP_AXES).index(axis)


def _detector_fingerprint(detector: ShiftDetector) -> str:
    import hashlib

    digest = hashlib.sha256(np.ascontiguousarray(detector.mean, float).tobytes())
    digest.update(np.ascontiguousarray(detector.precision_matrix, float).tobytes())
    digest.update(repr(float(detector.limit)).encode())
    return digest.hexdigest()[:16]


def cached_sweeps(
    ensemble: object,
    profile: object,
    seed: int,
    finder: ClassicalFinder,
    detector: ShiftDetector,
    tolerance_A: float = 0.5,
    border_A: float = 0.5,
    axes: tuple[str, ...] | None = None,
) -> dict[str, list[SweepPoint]]:
    """The sweeps of notebook 03 (every axis of :data:`SWEEP_AXES`, or ``axes``): from the cache, or run and cached.

    Each axis is simulated from :func:`sweep_seed` with ``profile.n_ood_images_per_point`` frames of ``profile.image_size_px`` per point. The entry
    lives in ``<cache>/sweeps/<hash>.npz`` (plain arrays, read without unpickling) with a JSON
    record beside it; the hash covers the ensemble (its folder and every member's weights
    sha256), the profile, the seed, the axes and the domains they simulate, the simulator
    version, the classical finder, the shift detector and the scoring tolerance and border. So
    notebook 04 opened after 03 reuses 03's sweeps, and opened alone recomputes them.
    """
    from .cache import cached_arrays
    from .config import get_profile
    from .simulate import SIMULATOR_VERSION

    chosen = get_profile(profile)
    axes = tuple(axes or SWEEP_AXES)
    key = {
        "format": _SWEEPS_FORMAT,
        "ensemble": {"folder": Path(ensemble.folder).name, "members": member_fingerprint(ensemble)},
        "profile": chosen.as_dict(),
        "seed": seed,
        "axes": {axis: SWEEP_AXES[axis] for axis in axes},
        "domains": [shifted_domain(axis, value) for axis in axes for value in SWEEP_AXES[axis][1]],
        "simulator_version": SIMULATOR_VERSION,
        "finder": finder,
        "detector": _detector_fingerprint(detector),
        "scoring": {"tolerance_A": tolerance_A, "border_A": border_A},
    }

    def build() -> dict[str, np.ndarray]:
        size, n = chosen.image_size_px, chosen.n_ood_images_per_point
        return sweeps_to_arrays({axis: sweep(ensemble, axis, n, sweep_seed(seed, axis), size, finder, detector, None, tolerance_A, border_A) for axis in axes})

    return sweeps_from_arrays(cached_arrays("sweeps", key, build))


def sweep_table(points: dict[str, list[SweepPoint]], summary: dict | None = None) -> object:
    """The F1 of every sweep point as a markdown table (displayed in a notebook): the ensemble,
    its best and median member and the classical finder; with ``summary`` (:func:`summarise`)
    also the ensemble's lead over the median member with its 95 % bootstrap interval, and a
    verdict when the whole interval lies on one side of zero.

    >>> from types import SimpleNamespace as Point
    >>> point = Point(axis="dose", value=1e4, ensemble=Point(f1=0.9), member_f1=np.array([0.8, 0.85, 0.7]), classical=Point(f1=0.6))
    >>> print(sweep_table({"dose": [point]}).data.splitlines()[2])
    | dose | 1e+04 | 0.900 | 0.850 | 0.800 | 0.600 |
    >>> summary = {"ensemble_minus_median_interval": {"dose=10000": (0.05, 0.15)}}
    >>> print(sweep_table({"dose": [point]}, summary).data.splitlines()[2])
    | dose | 1e+04 | 0.900 | 0.850 | 0.800 | 0.600 | +0.100 [+0.050, +0.150] | better |
    """
    from .report import markdown_table

    header = ["axis", "value", "ensemble F1", "best member", "median member", "classical"]
    header += ["ensemble - median (95 % interval)", "verdict"] if summary else []
    rows = []
    for axis, sweep_points in points.items():
        for p in sweep_points:
            median = float(np.median(p.member_f1))
            row = [axis, f"{p.value:.3g}", f"{p.ensemble.f1:.3f}", f"{p.member_f1.max():.3f}", f"{median:.3f}", f"{p.classical.f1:.3f}"]
            if summary:
                low, high = summary["ensemble_minus_median_interval"][f"{axis}={p.value:g}"]
                verdict = "better" if low > 0 else ("worse" if high < 0 else "tie")
                row += [f"{p.ensemble.f1 - median:+.3f} [{low:+.3f}, {high:+.3f}]", verdict]
            rows.append(row)
    return markdown_table(rows, header)


#: A sweep point enters the ensemble-vs-median-member statement only where the median member still
#: finds atoms (F1 at least this): where every network fails, "not worse" says nothing.
COMPETENT_MEMBER_F1 = 0.5


def median_member_statement(points: list[SweepPoint], intervals: dict[str, tuple[float, float]]) -> dict:
    """The fair comparison of an ensemble with its members, stated without picking a member after the fact.

    At every point where the median member's F1 is at least :data:`COMPETENT_MEMBER_F1`, is the
    ensemble not worse than its median member beyond the frames' bootstrap noise (the upper end of
    :func:`ensemble_minus_median_interval` at least 0)? Where it is clearly better (the lower end
    above 0), by how much. ``holds`` is True when no such point is clearly worse.

    >>> statement = median_member_statement([], {})
    >>> statement["points"], statement["holds"]
    (0, True)
    """
    competent = {f"{p.axis}={p.value:g}": p for p in points if np.median(p.member_f1) >= COMPETENT_MEMBER_F1}
    worse = [key for key in competent if intervals[key][1] < 0]
    better = {key: float(p.ensemble.f1 - np.median(p.member_f1)) for key, p in competent.items() if intervals[key][0] > 0}
    return {
        "points": len(competent),
        "not_worse": len(competent) - len(worse),
        "clearly_worse": worse,
        "clearly_better_by": better,
        "holds": not worse,
        "left_out_median_member_f1_below": COMPETENT_MEMBER_F1,
    }


#: The share of source atoms an atom's entropy must exceed to count as uncertain in :func:`frame_error_estimates`.
UNCERTAIN_ATOM_QUANTILE = 0.99


def frame_error_estimates(points: list[SweepPoint], quantile: float = UNCERTAIN_ATOM_QUANTILE) -> dict:
    """Frame-level estimates of *error*, and how well each ranks the frames' real error (1 - F1).

    The shift detector says a frame is *different*; an automated experiment also wants to know
    whether its atoms are *wrong*. The estimate here needs no labels: the share of a frame's atoms
    whose entropy exceeds the ``quantile`` of atom entropies on the source frames (atoms more
    uncertain than almost any atom on training-like frames; a frame with no atom found counts as
    all uncertain). Each estimate (that share, the feature distance, the frame's mean MI) is judged
    by its Spearman rank correlation with the frame's real error over every sweep frame, and over
    each axis' frames (``..._per_axis``: the contamination axis among them); nan when an estimate or
    the error is constant.

    >>> frame_error_estimates([])["rank_correlation_with_error"]["uncertain atom share"]
    nan
    """
    from scipy.stats import spearmanr

    source = [p for p in points if _is_source(p)]
    limit = (
        float(np.quantile(np.concatenate([p.atom_entropy for p in source]), quantile)) if source and any(len(p.atom_entropy) for p in source) else float("nan")
    )
    axes, errors, estimates = [], [], {"uncertain atom share": [], "feature distance": [], "mean MI": []}
    for p in points:
        per_frame = np.split(p.atom_entropy, np.cumsum(p.ensemble_counts[:, 1])[:-1])
        estimates["uncertain atom share"] += [uncertain_atom_share(entropy, limit) for entropy in per_frame]
        estimates["feature distance"] += list(p.frame_shift_scores)
        estimates["mean MI"] += list(p.frame_mutual_information)
        errors += list(1 - _pooled_f1(p.ensemble_counts[:, None, :]))
        axes += [p.axis] * len(per_frame)
    error, axes = np.array(errors, float), np.array(axes)

    def rank_correlation(estimate: list[float], chosen: np.ndarray) -> float:
        values = np.array(estimate, float)
        usable = np.isfinite(values) & chosen
        if usable.sum() < 3 or np.ptp(values[usable]) == 0 or np.ptp(error[usable]) == 0:
            return float("nan")
        return float(spearmanr(values[usable], error[usable]).statistic)

    every = np.ones(len(error), bool)
    return {
        "entropy_limit_nats": limit,
        "quantile_of_source_atoms": quantile,
        "rank_correlation_with_error": {name: rank_correlation(values, every) for name, values in estimates.items()},
        "rank_correlation_with_error_per_axis": {
            axis: {name: rank_correlation(values, axes == axis) for name, values in estimates.items()} for axis in dict.fromkeys(axes.tolist())
        },
        "frames": len(errors),
    }


# --------------------------------------------------------------------------- frame error monitor


def uncertain_atom_share(atom_entropy: np.ndarray, entropy_limit_nats: float) -> float:
    """A frame's label-free error estimate: the share of its atoms whose entropy exceeds the limit (1 with no atom found).

    >>> uncertain_atom_share(np.array([0.1, 0.2, 0.5, 0.6]), 0.3), uncertain_atom_share(np.zeros(0), 0.3)
    (0.5, 1.0)
    """
    entropy = np.asarray(atom_entropy, float)
    return float((entropy > entropy_limit_nats).mean()) if len(entropy) else 1.0


#: The fewest fresh source frames a :class:`FrameErrorMonitor` is fitted on (half set the atoms' limit, half the frames').
MIN_MONITOR_FRAMES = 4

#: The seed of the fresh source frames a model's frame error monitor is fitted on when first needed (``elit watch``,
#: :func:`~elit_utils.stream.run_policy`): not the training frames' (seed 0), nor those of ``elit train``'s shift detector (4000).
MONITOR_SEED = 4100

#: The least uncertain-atom share a :class:`FrameErrorMonitor` flags, however low its limit from source frames: the share
#: worth acting on. An uncertain atom is about a coin toss (right or wrong), so a frame whose atoms are uncertain in
#: a share ``u`` has lost about ``u / 2`` of its F1 to them: 0.10 flags frames read at F1 below about 0.95. A limit set
#: on source frames alone flags whatever is statistically unusual, including a finer pixel size or an astigmatic probe
#: that leaves 3-6 of 60 atoms uncertain and every atom found: "different", not "wrong" (measured on the quick
#: ensemble in notebook 09's session, where the lost F1 was 0.43-1.1 times u / 2, median 0.56, on the misread frames).
MIN_UNCERTAIN_SHARE = 0.10


@dataclass(frozen=True)
class FrameErrorMonitor:
    """Is a frame's reading likely *wrong*? Its uncertain-atom share against a limit set on source frames.

    The shift detector says a frame is *different*; this says its atoms are doubtful, which is
    what an automated experiment should act on (a finer pixel size looks different and reads
    correctly). The estimate (:meth:`estimate`) is :func:`uncertain_atom_share` with the entropy
    limit of :func:`frame_error_estimates`, the ``quantile`` of source atoms' entropies; frames
    with as many uncertain atoms are told apart by their atoms' mean entropy (which moves the
    estimate by less than one atom's share), so that the estimate is continuous and a limit can
    flag a stated share of frames (counts alone tie, and a limit on them flags fewer frames than
    stated). Both limits come from fresh source frames, no labels needed: the entropy limit from
    one half of them, the frame limit (the ``1 - false_alarm_rate`` quantile of the estimates)
    from the other half, so that it is not set on the very atoms that set the entropy limit; a
    fresh source frame is then over ``estimate_limit`` with probability ``false_alarm_rate``, and
    flagged (:attr:`flag_limit`) at most that often.

    ``members``: the members it was fitted on (seed -> weights sha256, :func:`member_fingerprint`);
    loading it beside other members is refused, as for the shift detector and trust regions.
    ``image_size_px``: the side of the source frames it was fitted on. Fit it on frames of the size
    it will judge (:func:`monitor_side_px`): a smaller frame has a larger share of its atoms at the
    edges and fewer atoms, so its estimate is higher and spreads wider (on the smoke ensemble, the
    limit set on 128 px frames was ten times that set on 256 px frames).

    ``min_uncertain_share``: a frame is flagged only when its estimate also exceeds this share
    (:data:`MIN_UNCERTAIN_SHARE`), so that a flag means a reading worth acting on, not only an
    unusual one (:attr:`flag_limit`).

    >>> monitor = FrameErrorMonitor(entropy_limit_nats=0.3, estimate_limit=0.05)
    >>> estimate = monitor.estimate(np.array([0.1, 0.2, 0.5, 0.6]))
    >>> round(estimate, 3), monitor.flag_limit, monitor.flags(estimate), monitor.flags(0.08)
    (0.501, 0.1, True, False)
    """

    entropy_limit_nats: float
    estimate_limit: float
    false_alarm_rate: float = FALSE_ALARM_RATE
    quantile: float = UNCERTAIN_ATOM_QUANTILE
    n_source_frames: int | None = None
    members: dict[str, str] | None = None
    image_size_px: int | None = None
    min_uncertain_share: float = MIN_UNCERTAIN_SHARE
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (np.isfinite(self.entropy_limit_nats) and 0 <= self.entropy_limit_nats <= np.log(2)):
            raise BadValueError(f"entropy_limit_nats must lie between 0 and ln 2 = 0.693 nats (a binary entropy), got {self.entropy_limit_nats}")
        for name in ("estimate_limit", "min_uncertain_share"):
            if not (np.isfinite(getattr(self, name)) and 0 <= getattr(self, name) <= 1):
                raise BadValueError(f"{name} is a share of a frame's atoms, in [0, 1], got {getattr(self, name)}")
        for name in ("false_alarm_rate", "quantile"):
            if not 0 < getattr(self, name) < 1:
                raise BadValueError(f"{name} must lie strictly between 0 and 1, got {getattr(self, name)}")

    def estimate(self, atom_entropy: np.ndarray) -> float:
        """The frame's error estimate from its atoms' entropies (nats; :attr:`AtomTable.entropy <elit_utils.locate.AtomTable.entropy>`), in [0, 1].

        ``(uncertain atoms + mean entropy / ln 2) / (atoms + 1)``: the uncertain-atom share, ties
        broken by the mean entropy; 1 when no atom is found.
        """
        entropy = np.asarray(atom_entropy, float)
        if len(entropy) == 0:
            return 1.0
        return float(((entropy > self.entropy_limit_nats).sum() + entropy.mean() / np.log(2)) / (len(entropy) + 1))

    @property
    def flag_limit(self) -> float:
        """The estimate a frame must exceed to be flagged: the limit from source frames, or the share worth acting on if higher."""
        return max(self.estimate_limit, self.min_uncertain_share)

    def flags(self, estimate: float) -> bool:
        """True when the estimate exceeds :attr:`flag_limit`: the frame's atoms are doubtful enough to act on."""
        return bool(estimate > self.flag_limit)

    @classmethod
    def fit(
        cls,
        frame_entropies: list[np.ndarray],
        false_alarm_rate: float = FALSE_ALARM_RATE,
        quantile: float = UNCERTAIN_ATOM_QUANTILE,
        min_uncertain_share: float = MIN_UNCERTAIN_SHARE,
    ) -> FrameErrorMonitor:
        """Fit on fresh source frames, each given as its atoms' entropies (nats); even frames set the entropy limit, odd ones the frame limit.

        Without the least share worth acting on (``min_uncertain_share=0``), the stated share of fresh source frames is flagged:

        >>> rng = np.random.default_rng(0)
        >>> monitor = FrameErrorMonitor.fit([rng.uniform(0, 0.2, 200) for _ in range(400)], false_alarm_rate=0.1, min_uncertain_share=0.0)
        >>> fresh = [monitor.flags(monitor.estimate(rng.uniform(0, 0.2, 200))) for _ in range(400)]
        >>> round(monitor.entropy_limit_nats, 2), float(np.mean(fresh))
        (0.2, 0.0775)
        """
        frames = [np.asarray(e, float).ravel() for e in frame_entropies]
        if len(frames) < MIN_MONITOR_FRAMES:
            raise BadValueError(f"FrameErrorMonitor.fit needs at least {MIN_MONITOR_FRAMES} source frames (half set each limit), got {len(frames)}")
        if not 0 < false_alarm_rate < 1:
            raise BadValueError(f"false_alarm_rate must lie strictly between 0 and 1, got {false_alarm_rate}")
        atoms = np.concatenate(frames[0::2])
        if len(atoms) == 0 or not np.isfinite(atoms).all():
            raise BadValueError("the source frames hold no atoms with a finite entropy: is the ensemble trained on them?")
        limited = cls(float(np.quantile(atoms, quantile)), 1.0, false_alarm_rate, quantile, len(frames), min_uncertain_share=min_uncertain_share)
        estimates = [limited.estimate(e) for e in frames[1::2]]
        return dataclasses.replace(limited, estimate_limit=float(np.quantile(estimates, 1 - false_alarm_rate)))

    def save(self, path: str | Path) -> None:
        """Write as JSON (atomically), e.g. beside the ensemble it belongs to."""
        from .cache import write_json_atomic

        write_json_atomic(path, dataclasses.asdict(self))

    @classmethod
    def load(cls, path: str | Path, ensemble: object | None = None) -> FrameErrorMonitor:
        """Read what :meth:`save` wrote; with ``ensemble``, refuse one fitted on other members (stale).

        >>> import tempfile
        >>> path = error_monitor_path(tempfile.mkdtemp(), 128)
        >>> FrameErrorMonitor(0.3, 0.05, members={"0": "ab"}).save(path)
        >>> FrameErrorMonitor.load(path).estimate_limit
        0.05
        """
        import json

        path = Path(path)
        try:
            monitor = cls(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError) as error:
            raise BadModelFolderError(
                f"{path} is not a frame error monitor written by ELIT Lab ({str(error).splitlines()[0][:100]}); delete it, and it is refitted when next needed."
            ) from error
        if ensemble is not None and monitor.members is not None:
            _check_members(monitor.members, member_fingerprint(ensemble), path)
        return monitor


def fit_frame_error_monitor(
    ensemble: object,
    n_images: int,
    seed: int,
    image_size_px: int,
    domain: str = "source",
    false_alarm_rate: float = FALSE_ALARM_RATE,
    min_uncertain_share: float = MIN_UNCERTAIN_SHARE,
) -> FrameErrorMonitor:
    """A :class:`FrameErrorMonitor` fitted on ``n_images`` fresh simulated frames of the training ``domain``, recording the members."""
    data = dataset(domain, n=n_images, seed=seed, image_size_px=image_size_px, cache=False)
    sampling = data.conditions.sampling_A_per_px
    entropies = [locate_atoms(ensemble.predict(image, sampling_A_per_px=sampling)).entropy for image in data.images]
    fitted = FrameErrorMonitor.fit(entropies, false_alarm_rate, min_uncertain_share=min_uncertain_share)
    return dataclasses.replace(fitted, members=member_fingerprint(ensemble), image_size_px=int(image_size_px), seed=int(seed))


def error_monitor_path(folder: str | Path, image_size_px: int) -> Path:
    """Where a model folder keeps its frame error monitor for frames of ``image_size_px`` (one file per size).

    >>> error_monitor_path("model", 128).name
    'error_monitor_128px.json'
    """
    return Path(folder) / ERROR_MONITOR_FILE.format(image_size_px=int(image_size_px))


def monitor_side_px(shape: tuple[int, int], sampling_A_per_px: float, model_sampling_A_per_px: float) -> int:
    """The side (px) of the square source frames a monitor judging a frame of ``shape`` must be fitted on: the same
    field of view once resampled to the model's pixel size (and atoms as many), at least the smallest frame a model reads
    (:data:`~elit_utils.io.MIN_SIDE_PX`).

    >>> monitor_side_px((128, 128), 0.06, 0.1), monitor_side_px((512, 256), 0.1, 0.1)
    (77, 362)
    """
    height, width = shape
    return max(MIN_SIDE_PX, round(float(np.sqrt(height * width)) * sampling_A_per_px / model_sampling_A_per_px))


def ensure_frame_error_monitor(
    ensemble: object,
    n_images: int,
    seed: int,
    image_size_px: int,
    domain: str = "source",
    false_alarm_rate: float = FALSE_ALARM_RATE,
    min_uncertain_share: float = MIN_UNCERTAIN_SHARE,
) -> tuple[FrameErrorMonitor, bool]:
    """The frame error monitor of ``ensemble``'s folder for frames of ``image_size_px`` (:func:`error_monitor_path`),
    fitted (and saved) when missing, unreadable, stale or fitted otherwise (another number of frames, seed, false-alarm
    rate or least share worth acting on: a rerun then judges as a fresh run would); returns it and whether it was fitted now."""
    path = error_monitor_path(ensemble.folder, image_size_px)
    if path.exists():
        try:
            monitor = FrameErrorMonitor.load(path, ensemble)
            fitted_as = (monitor.image_size_px, monitor.n_source_frames, monitor.seed, monitor.false_alarm_rate, monitor.min_uncertain_share)
            if fitted_as == (image_size_px, n_images, seed, false_alarm_rate, min_uncertain_share):
                return monitor, False
        except BadModelFolderError:
            pass  # unreadable or stale: fitted afresh below
    monitor = fit_frame_error_monitor(ensemble, n_images, seed, image_size_px, domain, false_alarm_rate, min_uncertain_share)
    monitor.save(path)
    return monitor, True


def summarise(points: list[SweepPoint]) -> dict:
    """The numbers notebooks 03 and 04 report: ensemble vs members, error detection, shift detection, calibration.

    Ensemble vs members is stated against the *median* member with bootstrap intervals
    (:func:`median_member_statement`); "as good as the best member" is not reported, since
    the best member is picked after the fact, on the very frames it is judged on.

    The per-axis error AUROCs cover only the axes whose shifted steps hold at least
    :data:`MIN_ATOMS_FOR_AUROC` wrong and as many right atoms (``wrong_atoms_per_axis`` counts them).
    """
    source = [p for p in points if _is_source(p)]
    shifted = [p for p in points if not _is_source(p)]
    ge_median = [p.ensemble.f1 >= np.median(p.member_f1) - 1e-12 for p in points]
    intervals = {f"{p.axis}={p.value:g}": ensemble_minus_median_interval(p.ensemble_counts, p.member_counts) for p in points}
    by_axis, by_axis_mi = atoms_by_axis(shifted, "atom_entropy", 0), atoms_by_axis(shifted, "atom_mutual_information", 0)
    enough = atoms_by_axis(shifted)  # the axes with enough wrong and right atoms for a per-axis AUROC
    per_axis = {axis: auroc(*by_axis[axis]) for axis in enough}
    per_axis_mi = {axis: auroc(*by_axis_mi[axis]) for axis in enough}
    frame_labels = np.concatenate([np.full(len(p.frame_shift_scores), not _is_source(p)) for p in points])

    def shift_auroc(score: str) -> float:
        return auroc(np.concatenate([getattr(p, score) for p in points]), frame_labels)

    def farthest_auroc(score: str) -> dict[str, float]:  # each axis' farthest point against all source frames
        reference = np.concatenate([getattr(p, score) for p in source]) if source else np.empty(0)
        farthest = {p.axis: getattr(p, score) for p in shifted}  # the last point of each axis wins
        return {axis: auroc(np.r_[reference, s], np.r_[np.zeros(len(reference)), np.ones(len(s))]) for axis, s in farthest.items()}

    all_wrong = ~np.concatenate([p.atom_correct for p in shifted])

    def ece(group: list[SweepPoint]) -> float:
        return expected_calibration_error(np.concatenate([p.pixel_probability for p in group]), np.concatenate([p.pixel_truth for p in group]))

    return {
        "ensemble_ge_median_member_fraction": float(np.mean(ge_median)),
        "ensemble_minus_median_interval": intervals,
        "median_member_statement": median_member_statement(points, intervals),
        "frame_error_estimate": frame_error_estimates(points),
        "ensemble_not_worse_than_median_fraction": float(np.mean([high >= 0 for _, high in intervals.values()])),
        "ensemble_better_than_median_fraction": float(np.mean([low > 0 for low, _ in intervals.values()])),
        "atom_error_auroc": auroc(np.concatenate([p.atom_entropy for p in shifted]), all_wrong),
        "atom_error_auroc_per_axis": per_axis,
        "atom_error_auroc_mi": auroc(np.concatenate([p.atom_mutual_information for p in shifted]), all_wrong),
        "atom_error_auroc_mi_per_axis": per_axis_mi,
        "wrong_atoms_per_axis": {axis: int(wrong.sum()) for axis, (_, wrong) in by_axis.items()},
        "right_atoms_per_axis": {axis: int((~wrong).sum()) for axis, (_, wrong) in by_axis.items()},
        "pixel_error_auroc": auroc(
            np.concatenate([p.pixel_mutual_information for p in shifted]),
            np.concatenate([(p.pixel_probability > 0.5) != p.pixel_truth for p in shifted]),
        ),
        "shift_score_auroc": shift_auroc("frame_shift_scores"),
        "shift_score_auroc_farthest_per_axis": farthest_auroc("frame_shift_scores"),
        "shift_score_auroc_mi": shift_auroc("frame_mutual_information"),
        "shift_score_auroc_mi_farthest_per_axis": farthest_auroc("frame_mutual_information"),
        "source_frames_flagged_fraction": float(np.concatenate([p.frame_flagged for p in source]).mean()) if source else float("nan"),
        "shifted_frames_flagged_fraction": float(np.concatenate([p.frame_flagged for p in shifted]).mean()) if shifted else float("nan"),
        "flagged_fraction_per_point": {f"{p.axis}={p.value:g}": float(p.frame_flagged.mean()) for p in points},
        "ece_source": ece(source) if source else float("nan"),
        "ece_shifted": ece(shifted) if shifted else float("nan"),
        "f1_table": {
            f"{p.axis}={p.value:g}": {
                "ensemble": p.ensemble.f1,
                "best_member": float(p.member_f1.max()),
                "median_member": float(np.median(p.member_f1)),
                "classical": p.classical.f1,
            }
            for p in points
        },
    }


def _is_source(point: SweepPoint) -> bool:
    return point.value == SWEEP_AXES[point.axis][1][0]


# --------------------------------------------------------------------------- findings in words

#: A per-axis error AUROC (or ROC curve) needs at least this many wrong atoms, and as many right ones: with fewer it is noise.
MIN_ATOMS_FOR_AUROC = 10

#: F1 differences smaller than this are called "about the same" in the generated sentences.
F1_MARGIN = 0.02


def atoms_by_axis(points: list[SweepPoint], score: str = "atom_entropy", min_atoms: int = MIN_ATOMS_FOR_AUROC) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per axis, the atoms of the given points pooled: (their ``score``, e.g. ``"atom_mutual_information"``; whether each is wrong).

    Axes with fewer than ``min_atoms`` wrong or right atoms are left out (``min_atoms=0`` keeps all).
    Pass the shifted points only (every step but the source setting) to judge error detection.

    >>> from types import SimpleNamespace as Point
    >>> few = Point(axis="dose", atom_entropy=np.r_[0.1, 0.9], atom_correct=np.array([True, False]))
    >>> list(atoms_by_axis([few])), list(atoms_by_axis([few], min_atoms=1))
    ([], ['dose'])
    """
    pooled = {}
    for axis in dict.fromkeys(p.axis for p in points):
        chosen = [p for p in points if p.axis == axis]
        wrong = ~np.concatenate([p.atom_correct for p in chosen]).astype(bool)
        if min(wrong.sum(), (~wrong).sum()) >= min_atoms:
            pooled[axis] = (np.concatenate([getattr(p, score) for p in chosen]), wrong)
    return pooled


def _listing(names: list[str]) -> str:
    return ", ".join(names) if names else "nowhere"


def sweep_findings(points: dict[str, list[SweepPoint]], margin: float = F1_MARGIN) -> object:
    """What the sweeps show, in sentences made from the measured F1s (displayed as markdown), so
    that no claim about which axis hurts, or where the ensemble beats its members, can drift from the table.

    >>> from types import SimpleNamespace as Point
    >>> def point(value, ens, members, classical):
    ...     return Point(axis="dose", value=value, ensemble=Point(f1=ens), member_f1=np.array(members), classical=Point(f1=classical))
    >>> text = sweep_findings({"dose": [point(3e5, 1.0, [1.0, 1.0], 1.0), point(1e4, 0.9, [0.8, 0.85], 0.95)]}).data
    >>> text.splitlines()[3]
    '- The ensemble matches or beats its best member at 1 of 1 shifted points.'
    """
    from IPython.display import Markdown

    falls, holds, ge_best, below_best, below_median, classical_wins = [], [], [], [], [], []
    for axis, sweep_points in points.items():
        start, lowest = sweep_points[0].ensemble.f1, min(p.ensemble.f1 for p in sweep_points)
        (falls if start - lowest > margin else holds).append(f"{axis} ({start:.3f} → {lowest:.3f} at worst)" if start - lowest > margin else axis)
        for p in sweep_points[1:]:
            name = f"{axis}={p.value:g}"
            (ge_best if p.ensemble.f1 >= p.member_f1.max() - 1e-12 else below_best).append(name)
            if p.ensemble.f1 < np.median(p.member_f1) - 1e-12:
                below_median.append(name)
            if p.classical.f1 > p.ensemble.f1 + 1e-12:
                classical_wins.append(f"{name} ({p.classical.f1:.3f} vs {p.ensemble.f1:.3f})")
    n_shifted = sum(len(ps) - 1 for ps in points.values())
    lines = [
        f"- The ensemble's F1 falls by more than {margin} along: {_listing(falls)}; it stays within {margin} of its source value along: {_listing(holds)}.",
        f"- The ensemble matches or beats its best member at {len(ge_best)} of {n_shifted} shifted points"
        + (f": {_listing(ge_best)}." if 2 * len(ge_best) <= n_shifted else (f", all but: {', '.join(below_best)}." if below_best else ".")),
        f"- It falls below its median member at: {_listing(below_median)}.",
        f"- The classical finder beats the ensemble at: {_listing(classical_wins)}.",
    ]
    return Markdown("**In this run:**\n\n" + "\n".join(lines))


def error_detection_findings(summary: dict, margin: float = F1_MARGIN) -> object:
    """Which uncertainty ranks wrong atoms above right ones better, pooled and per axis, in sentences made
    from :func:`summarise`'s AUROCs (displayed as markdown); ties within ``margin`` are called ties.

    >>> summary = {"atom_error_auroc": 0.9, "atom_error_auroc_mi": 0.95, "atom_error_auroc_per_axis": {"dose": 0.9},
    ...            "atom_error_auroc_mi_per_axis": {"dose": 0.8}}
    >>> print(error_detection_findings(summary).data.splitlines()[2])
    - Pooled over every shifted frame, the MI ranks wrong atoms better (AUROC 0.950 vs 0.900 for the entropy).
    """
    from IPython.display import Markdown

    entropy, mi = summary["atom_error_auroc"], summary["atom_error_auroc_mi"]
    if abs(entropy - mi) <= margin:
        pooled = f"the entropy and the MI rank wrong atoms about equally well (AUROC {entropy:.3f} vs {mi:.3f}, within {margin})"
    elif entropy > mi:
        pooled = f"the entropy ranks wrong atoms better (AUROC {entropy:.3f} vs {mi:.3f} for the MI)"
    else:
        pooled = f"the MI ranks wrong atoms better (AUROC {mi:.3f} vs {entropy:.3f} for the entropy)"
    per_axis, per_axis_mi = summary["atom_error_auroc_per_axis"], summary["atom_error_auroc_mi_per_axis"]
    wins = {"entropy": [], "MI": [], "tie": []}
    for axis, value in per_axis.items():
        difference = value - per_axis_mi[axis]
        wins["tie" if abs(difference) <= margin else ("entropy" if difference > 0 else "MI")].append(axis)
    lines = [
        f"- Pooled over every shifted frame, {pooled}.",
        f"- Per axis, the entropy is better along: {_listing(wins['entropy'])}; the MI along: {_listing(wins['MI'])}; "
        f"within {margin} of each other along: {_listing(wins['tie'])}.",
    ]
    return Markdown("**In this run:**\n\n" + "\n".join(lines))


def calibration_findings(pixels: dict[str, tuple[np.ndarray, np.ndarray]], margin: float = F1_MARGIN) -> object:
    """How well calibrated the ensemble is, per group of pixels (name -> (predicted probability, is an atom)),
    in sentences made from the measured reliability curve, ECE and background level (displayed as markdown).

    >>> rng = np.random.default_rng(0); p = rng.random(10_000)
    >>> text = calibration_findings({"source": (p, rng.random(10_000) < p)}).data
    >>> "source frames: ECE 0.0" in text
    True
    """
    from IPython.display import Markdown

    lines, eces = [], {}
    for name, (probability, outcome) in pixels.items():
        probability, outcome = np.asarray(probability, float), np.asarray(outcome, bool)
        predicted, observed, _ = reliability_curve(probability, outcome)
        eces[name] = expected_calibration_error(probability, outcome)
        below = int(np.sum(observed < predicted))
        background = float(probability[~outcome].mean()) if (~outcome).any() else float("nan")
        lines.append(
            f"- {name} frames: ECE {eces[name]:.3f}; the observed share of atoms lies below the prediction in {below} of {len(predicted)} "
            f"filled bins; mean predicted probability on background (non-atom) pixels {background:.3f}."
        )
    if len(eces) == 2:
        (first, a), (second, b) = eces.items()
        change = "changes it little" if abs(b - a) <= margin else ("raises it" if b > a else "lowers it")
        lines.append(f"- Going from {first} to {second} frames {change} (ECE {a:.3f} → {b:.3f}; 'little' means within {margin}).")
    return Markdown("**In this run:**\n\n" + "\n".join(lines))
