"""Where not to trust the ensemble: clutter, trust regions, and confirmation bias in self-training.

Clutter is what is imaged but belongs to no lattice: amorphous contamination, adatoms
(:mod:`elit_utils.simulate` draws both and records where they lie). A network trained on clean
graphene may find "atoms" in it, and the paper's iterative training, which takes every atom above
0.5 as a label, would teach those back to the networks round after round (confirmation bias).

Two tools here:

* **Trust regions** (:class:`TrustRegions`): pixels where the ensemble's predictive entropy stays
  high over an area (smoothed over about an atom's blob) are "do not trust"; the limit is set on
  fresh source frames so that a stated share of their area is flagged. Atoms found there can be
  dropped or reviewed.
* **The confirmation-bias study** (:func:`confirmation_bias_study`): on cluttered target domains,
  every way of adapting that :func:`elit_utils.iterate.compare_with_baselines` knows, over several
  sets of target frames, with F1 and the precision of the atoms found inside clutter per round,
  and an interval over the repeats.

Example
-------
>>> from elit_utils.ensemble import uncertainty_maps
>>> members = np.full((3, 64, 64), 0.02); members[0, 20:40, 20:40] = 0.9  # one member sees a blob
>>> trust = TrustRegions(limit_nats=0.2, smoothing_A=0.2)
>>> untrusted = trust.untrusted(uncertainty_maps(members, 0.1))
>>> bool(untrusted[30, 30]), bool(untrusted[5, 5])
(True, False)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .cache import write_json_atomic
from .config import TRUST_REGIONS_FILE
from .errors import BadModelFolderError, BadValueError
from .locate import locate_atoms
from .metrics import found_in_region
from .ood import member_fingerprint
from .simulate import dataset

#: Entropy is averaged over a Gaussian of this width (sigma, A) before the limit applies: about an
#: atom's blob, so that a lone uncertain pixel makes no region. Chosen on the quick ensemble over
#: 0.5, 1.0, 1.4 and 2.5 A: wider smoothing spreads each region over its clean surroundings and
#: flags more clean area for the same gain in precision (the numbers are in the #17 note).
TRUST_SMOOTHING_A = 0.5

#: Share of clean source area that trust regions flag by default (their false alarms).
UNTRUSTED_SOURCE_AREA = 0.01


@dataclass(frozen=True)
class TrustRegions:
    """Where the ensemble is not to be trusted: smoothed predictive entropy above a limit.

    Attributes
    ----------
    limit_nats: the smoothed entropy above which a pixel is untrusted, in nats.
    smoothing_A: sigma of the Gaussian that averages the entropy over an area, in A.
    source_area: the share of fresh source frames' area the limit flags (when fitted).
    members: the members it was fitted on (seed -> weights sha256), as a shift detector records them.

    >>> TrustRegions(limit_nats=0.3).smoothing_A == TRUST_SMOOTHING_A
    True
    """

    limit_nats: float
    smoothing_A: float = TRUST_SMOOTHING_A
    source_area: float | None = None
    members: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if not (np.isfinite(self.limit_nats) and 0 <= self.limit_nats <= np.log(2)):
            raise BadValueError(f"limit_nats must lie between 0 and ln 2 = 0.693 nats (a binary entropy), got {self.limit_nats}")
        if not self.smoothing_A > 0:
            raise BadValueError(f"smoothing_A is a length in A and must be > 0, got {self.smoothing_A}")

    def smoothed_entropy(self, prediction: object) -> np.ndarray:
        """The prediction's entropy averaged over ``smoothing_A`` (needs its pixel size), nats, same shape."""
        sampling = getattr(prediction, "sampling_A_per_px", None)
        if sampling is None:
            raise BadValueError("trust regions need the prediction's pixel size: call predict(..., sampling_A_per_px=...)")
        return ndimage.gaussian_filter(np.asarray(prediction.entropy, np.float32), self.smoothing_A / sampling, axes=(-2, -1), mode="reflect")

    def untrusted(self, prediction: object) -> np.ndarray:
        """Bool mask, the prediction's shape: True where the ensemble is not to be trusted."""
        return self.smoothed_entropy(prediction) > self.limit_nats

    @classmethod
    def fit(cls, predictions: list, source_area: float = UNTRUSTED_SOURCE_AREA, smoothing_A: float = TRUST_SMOOTHING_A) -> TrustRegions:
        """The limit that flags a share ``source_area`` of the area of ``predictions`` (fresh source frames).

        >>> from elit_utils.ensemble import uncertainty_maps
        >>> rng = np.random.default_rng(0)
        >>> clean = [uncertainty_maps(rng.uniform(0, 0.1, (3, 32, 32)), 0.1) for _ in range(2)]
        >>> trust = TrustRegions.fit(clean, source_area=0.05)
        >>> round(float(np.mean([trust.untrusted(p).mean() for p in clean])), 2)
        0.05
        """
        if not 0 < source_area < 1:
            raise BadValueError(f"source_area is a share of the area, strictly between 0 and 1, got {source_area}")
        if not predictions:
            raise BadValueError("TrustRegions.fit needs at least one predicted source frame")
        probe = cls(0.0, smoothing_A)
        values = np.concatenate([probe.smoothed_entropy(p).ravel() for p in predictions])
        return cls(float(np.quantile(values, 1 - source_area)), smoothing_A, source_area)

    def save(self, path: str | Path) -> None:
        """Write as JSON (atomically), e.g. beside the ensemble it belongs to."""
        write_json_atomic(path, dataclasses.asdict(self))

    @classmethod
    def load(cls, path: str | Path, ensemble: object | None = None) -> TrustRegions:
        """Read what :meth:`save` wrote; with ``ensemble``, refuse one fitted on other members.

        >>> import tempfile; from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "trust_regions.json"
        >>> TrustRegions(0.25, members={"0": "ab"}).save(path)
        >>> TrustRegions.load(path).limit_nats
        0.25
        """
        path = Path(path)
        remedy = f"delete it and rerun elit train --out {path.parent} to refit it"
        try:
            stored = json.loads(path.read_text())
            trust = cls(**stored)
        except (OSError, ValueError, TypeError) as error:
            raise BadModelFolderError(f"{path} is not trust regions written by ELIT Lab ({str(error).splitlines()[0][:100]}); {remedy}.") from error
        if ensemble is not None and trust.members is not None and trust.members != member_fingerprint(ensemble):
            raise BadModelFolderError(f"{path} was fitted on other members than the ensemble's now: it is stale; {remedy}.")
        return trust


def fit_trust_regions(
    ensemble: object, n_images: int, seed: int, image_size_px: int, domain: str = "source", source_area: float = UNTRUSTED_SOURCE_AREA
) -> TrustRegions:
    """:class:`TrustRegions` fitted on ``n_images`` fresh simulated frames of the training ``domain``.

    Their limit flags a share ``source_area`` of those frames' area; they record the members.
    """
    data = dataset(domain, n=n_images, seed=seed, image_size_px=image_size_px, cache=False)
    sampling = data.conditions.sampling_A_per_px
    predictions = [ensemble.predict(frame, sampling_A_per_px=sampling) for frame in data.images]
    fitted = TrustRegions.fit(predictions, source_area)
    return dataclasses.replace(fitted, members=member_fingerprint(ensemble))


def ensure_trust_regions(ensemble: object, n_images: int, seed: int, image_size_px: int, domain: str = "source") -> tuple[TrustRegions, bool]:
    """The trust regions of ``ensemble``'s folder, refitted (and saved) when missing, unreadable or
    stale; returns them and whether they were (re)fitted. ``elit train`` calls it after training."""
    path = Path(ensemble.folder) / TRUST_REGIONS_FILE
    if path.exists():
        try:
            return TrustRegions.load(path, ensemble), False
        except BadModelFolderError:
            pass  # unreadable or stale: fitted afresh below
    trust = fit_trust_regions(ensemble, n_images, seed, image_size_px, domain)
    trust.save(path)
    return trust, True


# --------------------------------------------------------------------------- confirmation bias

#: The target domains of the study: contamination with adatoms, holes and a grain boundary (clutter
#: the ensemble invents atoms in); a very low dose, where members disagree about which faint blobs
#: are atoms (on the quick ensemble 20-40 % of the atoms found are uncertain, against 1-5 % on source
#: frames: notebook 09's dose drop); and an experiment-like mix (lower dose, drift, some contamination).
STUDY_DOMAINS = ("contaminated", "very_low_dose", "experiment_like")


def study_domains(profile: object | None = None) -> tuple[str, ...]:
    """The study's domains in a run profile: all in paper; in smoke and quick only the contaminated
    domain, so that notebook 07 fits CI and a class period on a laptop (the others are a parameter away).

    >>> study_domains("quick"), study_domains("paper")
    (('contaminated',), ('contaminated', 'very_low_dose', 'experiment_like'))
    """
    from .config import get_profile

    return STUDY_DOMAINS if get_profile(profile).name == "paper" else STUDY_DOMAINS[:1]


#: Two-sided coverage of the intervals over repeats.
INTERVAL_LEVEL = 0.95


def study_config(profile: object | None = None) -> object:
    """The :class:`~elit_utils.iterate.AdaptConfig` of a run profile, as notebook 05 builds it.

    >>> study_config("smoke").rounds
    2
    """
    from .config import get_profile
    from .iterate import AdaptConfig

    run = get_profile(profile)
    return AdaptConfig(
        rounds=run.n_adapt_rounds,
        iterations_per_round=run.adapt_iterations_per_round,
        batch_size=run.batch_size,
        tile_px=run.adapt_tile_px,
        freeze_batch_norm=run.adapt_freeze_batch_norm,
    )


def confirmation_bias_study(
    profile: object | None = None,
    domains: tuple[str, ...] = STUDY_DOMAINS,
    repeats: int = 3,
    seed: int = 0,
    methods: tuple[str, ...] | None = None,
    progress: bool = False,
) -> dict[str, dict[str, list[list[dict]]]]:
    """Every way of adapting, on ``repeats`` fresh sets of frames of each cluttered domain.

    Returns ``{domain: {method: [history of repeat 0, history of repeat 1, ...]}}``, each history as
    :func:`~elit_utils.iterate.adapt` writes it, with ``precision_in_clutter`` in every row. The
    source ensemble is the profile's (:func:`~elit_utils.ensemble.cached_ensemble`), the same in
    every repeat; repeats differ in their target frames. Everything is cached, so a rerun resumes.
    """
    from .config import get_profile
    from .ensemble import cached_ensemble
    from .iterate import METHODS, adapt_folder, compare_with_baselines

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2:
        raise BadValueError(f"repeats must be a whole number >= 2 (an interval needs at least two), got {repeats!r}")
    run = get_profile(profile)
    model = cached_ensemble(run, domain="source", seed=seed, progress=progress)
    source = dataset("source", n=run.n_train_images, seed=seed, image_size_px=run.image_size_px)
    config = study_config(run)
    results: dict[str, dict[str, list[list[dict]]]] = {}
    for domain in domains:
        results[domain] = {}
        for repeat in range(repeats):
            target = dataset(domain, n=run.n_adapt_frames, seed=seed + 6000 + 100 * repeat, image_size_px=run.image_size_px * 3 // 2)
            truth = [target.coordinates(i)[:, :2] for i in range(len(target))]
            out = adapt_folder(f"clutter-{domain}-{repeat}", target.images, config, model.record, run.name)
            histories = compare_with_baselines(
                model,
                target.images,
                target.conditions.sampling_A_per_px,
                out,
                config,
                truth,
                (source.images, source.atom_mask),
                true_masks=target.atom_mask,
                progress=progress,
                methods=methods or METHODS,
                clutter=list(target.clutter_mask),
            )
            for method, history in histories.items():
                results[domain].setdefault(method, []).append(history)
    return results


def _per_round(history: list[dict], key: str, rounds: int) -> np.ndarray:
    """``key`` at rounds 0..rounds; a method that stopped early (or ran one long round) keeps its last value."""
    values = np.full(rounds + 1, np.nan)
    for row in history:
        values[min(int(row["round"]), rounds)] = row.get(key, np.nan)
    for index in range(1, rounds + 1):
        if np.isnan(values[index]):
            values[index] = values[index - 1]
    return values


def interval(values: np.ndarray, level: float = INTERVAL_LEVEL) -> tuple[float, float, float]:
    """Mean and Student-t interval of the mean over repeats (NaN values left out).

    >>> [round(v, 3) for v in interval(np.array([0.9, 0.92, 0.94]))]
    [0.92, 0.87, 0.97]
    """
    from scipy import stats

    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def summarise_study(results: dict[str, dict[str, list[list[dict]]]], rounds: int) -> dict:
    """Per domain and method, F1, precision and precision inside clutter at each round: mean and interval over repeats.

    Also the paired difference (uncertainty-masked minus the paper's scheme) at the last round, per
    repeat and as an interval, since both adapt the same ensemble on the same frames. A domain
    without clutter has no precision inside clutter (NaN); its precision over all atoms found says
    whether doubtful blobs were taught back as atoms.
    """
    from .iterate import MASKED, PAPER

    summary: dict = {"rounds": rounds, "interval": f"{INTERVAL_LEVEL:.0%} Student-t interval of the mean over repeats (sets of target frames)"}
    for domain, methods in results.items():
        per_method = {}
        for method, histories in methods.items():
            entry = {"repeats": len(histories)}
            for key in ("f1", "precision", "precision_in_clutter", "found_in_clutter"):
                table = np.array([_per_round(h, key, rounds) for h in histories])
                stats = [interval(table[:, r]) for r in range(rounds + 1)]
                share = key != "found_in_clutter"  # F1 and precision lie in [0, 1], and so do their intervals
                entry[key] = [s[0] for s in stats]
                entry[f"{key}_interval"] = [[max(s[1], 0.0), min(s[2], 1.0)] if share else [s[1], s[2]] for s in stats]
            per_method[method] = entry
        paired = {}
        if MASKED in methods and PAPER in methods:
            for key in ("f1", "precision", "precision_in_clutter"):
                difference = [_per_round(a, key, rounds)[-1] - _per_round(b, key, rounds)[-1] for a, b in zip(methods[MASKED], methods[PAPER])]
                mean, low, high = interval(np.array(difference))
                paired[key] = {"per_repeat": difference, "mean": mean, "interval": [low, high]}
        summary[domain] = {"methods": per_method, "masked_minus_paper": paired}
    return summary


# --------------------------------------------------------------------------- reports


def trust_report(predictions: list, truth: list[np.ndarray], clutter_masks: list[np.ndarray], trust: TrustRegions, threshold: float = 0.5) -> dict:
    """What trust regions do on frames with known atoms and clutter: precision of every atom found and
    of those outside the regions, the share of atoms kept, and the share of the clutter and of the
    clean area the regions cover. Atoms are scored as everywhere else (0.5 A, 0.5 A border).
    """
    counts = np.zeros((4, 2), int)  # (found, right) for: all, trusted, in clutter, outside clutter
    area = np.zeros(4)  # clutter flagged, clutter, clean flagged, clean
    for prediction, true_px, clutter in zip(predictions, truth, clutter_masks):
        sampling = prediction.sampling_A_per_px
        found = locate_atoms(prediction, threshold).coordinates_px
        untrusted = trust.untrusted(prediction)
        for row, region in enumerate((np.ones_like(untrusted), ~untrusted, clutter, ~clutter)):
            counts[row] += found_in_region(found, true_px, region, sampling, 0.5, border_A=0.5)
        area += [(untrusted & clutter).sum(), clutter.sum(), (untrusted & ~clutter).sum(), (~clutter).sum()]
    precision = [right / found if found else float("nan") for found, right in counts]
    return {
        "atoms_found": int(counts[0, 0]),
        "precision_all": precision[0],
        "precision_trusted": precision[1],
        "kept_fraction": counts[1, 0] / counts[0, 0] if counts[0, 0] else float("nan"),
        "precision_in_clutter": precision[2],
        "precision_outside_clutter": precision[3],
        "atoms_found_in_clutter": int(counts[2, 0]),
        "clutter_flagged_fraction": area[0] / area[1] if area[1] else float("nan"),
        "clean_flagged_fraction": area[2] / area[3] if area[3] else float("nan"),
    }


def _with_interval(entry: dict, key: str, index: int) -> str:
    low, high = entry[f"{key}_interval"][index]
    value = entry[key][index]
    if not np.isfinite(value):
        return "n/a"
    return f"{value:.3f}" if not np.isfinite(low) else f"{value:.3f} [{low:.3f}, {high:.3f}]"


def study_rows(summary: dict) -> list[tuple[str, ...]]:
    """Table rows: domain, method, F1 and precision inside clutter before and after adapting (intervals in brackets)."""
    rows = []
    for domain, value in summary.items():
        if not (isinstance(value, dict) and "methods" in value):
            continue
        for method, entry in value["methods"].items():
            rows.append(
                (
                    domain,
                    method,
                    _with_interval(entry, "f1", 0),
                    _with_interval(entry, "f1", -1),
                    _with_interval(entry, "precision_in_clutter", 0),
                    _with_interval(entry, "precision_in_clutter", -1),
                )
            )
    return rows


STUDY_HEADER = ("domain", "method", "F1 before", "F1 after", "precision in clutter before", "precision in clutter after")


def _verdict(paired: dict, what: str) -> str:
    low, high = paired["interval"]
    mean = paired["mean"]
    if not np.isfinite(low):
        return f"{what}: {mean:+.3f} (too few repeats for an interval)"
    if low > 0:
        return f"{what}: {mean:+.3f} [{low:+.3f}, {high:+.3f}], better beyond the spread of repeats"
    if high < 0:
        return f"{what}: {mean:+.3f} [{low:+.3f}, {high:+.3f}], worse beyond the spread of repeats"
    return f"{what}: {mean:+.3f} [{low:+.3f}, {high:+.3f}], a tie within the spread of repeats"


def study_findings(summary: dict) -> list[str]:
    """One sentence per domain: the uncertainty-masked scheme minus the paper's, at the last round, with its verdict.

    >>> paired = {"f1": {"mean": 0.02, "interval": [0.01, 0.03]}, "precision_in_clutter": {"mean": 0.0, "interval": [-0.1, 0.1]}}
    >>> sentence = study_findings({"rounds": 2, "contaminated": {"methods": {}, "masked_minus_paper": paired}})[0]
    >>> print(sentence.replace("; ", ";" + chr(10)))
    contaminated, uncertainty-masked minus paper: F1: +0.020 [+0.010, +0.030], better beyond the spread of repeats;
    precision inside clutter: +0.000 [-0.100, +0.100], a tie within the spread of repeats.
    """
    sentences = []
    for domain, value in summary.items():
        paired = value.get("masked_minus_paper") if isinstance(value, dict) else None
        if paired:
            named = {"f1": "F1", "precision": "precision", "precision_in_clutter": "precision inside clutter"}
            parts = [_verdict(paired[key], what) for key, what in named.items() if key in paired and np.isfinite(paired[key]["mean"])]
            sentences.append(f"{domain}, uncertainty-masked minus paper: {'; '.join(parts)}.")
    return sentences


def trust_findings(report: dict) -> str:
    """One sentence on what dropping the atoms in trust regions did (from :func:`trust_report`).

    >>> report = {"kept_fraction": 0.8, "precision_all": 0.95, "precision_trusted": 0.99, "clutter_flagged_fraction": 0.4, "clean_flagged_fraction": 0.05}
    >>> trust_findings(report)
    'Dropping the 20% of atoms that lie in trust regions raised precision from 0.950 to 0.990; the regions cover 40% of the clutter and 5% of the clean area.'
    """
    before, after = report["precision_all"], report["precision_trusted"]
    verb = "raised" if after > before else "lowered"
    effect = f"left precision at {before:.3f}" if abs(after - before) < 0.0005 else f"{verb} precision from {before:.3f} to {after:.3f}"
    return (
        f"Dropping the {1 - report['kept_fraction']:.0%} of atoms that lie in trust regions {effect}; the regions cover "
        f"{report['clutter_flagged_fraction']:.0%} of the clutter and {report['clean_flagged_fraction']:.0%} of the clean area."
    )
