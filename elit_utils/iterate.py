"""Iterative training: adapt an ensemble to new, unlabelled frames with its own confident atoms.

Each round: the ensemble predicts on the target frames; atoms it is sure of
(mutual information below a limit) become pseudo-label discs (labels the networks make
for themselves, where a human would otherwise draw them); the footprints of atoms it is
unsure of, and faint blobs holding no atom, are left out of the loss; every member is
fine-tuned on these frames (mixed with labelled source frames, so it does not forget).
Rounds repeat until the pseudo-labels and the uncertainty stop changing. Each round's
ensemble is saved in the safe checkpoint format, so an interrupted adaptation resumes
where it stopped.

The pieces of one round are public, so a notebook can write the round out:
:func:`pseudo_labels`, :func:`fine_tune` and :func:`round_folder` (where
:func:`compare_with_baselines` keeps each method's rounds, so that it reuses a round
done by hand); :func:`adapt_folder` names a cache folder for an adaptation.

Example
-------
>>> AdaptConfig(rounds=2).rounds
2
>>> METHODS[:2]
('uncertainty-masked', 'paper (threshold 0.5)')
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.transform import resize

from .cache import atomic_path, cache_dir, write_json_atomic
from .config import config_hash, get_profile
from .ensemble import (
    IDENTITY_KEYS,
    Ensemble,
    TrainingConfig,
    _claim_folder,
    _member_record,
    _members_to_train,
    _save_member,
    _train_pack,
    _whole_number,
    checked_images,
    data_hash,
)
from .errors import BadImageError, BadValueError
from .io import check_sampling, normalize_image
from .locate import MIN_PROMINENCE, locate_atoms
from .metrics import found_in_region, pooled_scores
from .runtime import resolve_precision
from .simulate import label_mask
from .unet import UnetArchitecture

#: The probability above which the paper's scheme makes a pixel part of an atom, and so every atom a label.
PAPER_THRESHOLD = 0.5

#: ELIT Lab's scheme: confident atoms become labels, uncertain atoms and unclaimed faint blobs are left out of the loss.
MASKED = "uncertainty-masked"

#: The paper's scheme: every atom above :data:`PAPER_THRESHOLD` becomes a label, every pixel counts in the loss.
PAPER = f"paper (threshold {PAPER_THRESHOLD:g})"

#: The ways to adapt that :func:`compare_with_baselines` knows: the two pseudo-label schemes, one network
#: teaching itself, no adaptation, and the true-label reference.
METHODS = (MASKED, PAPER, "single network", "no adaptation", "true labels")

#: Where each method keeps its rounds inside :func:`compare_with_baselines`'s folder (see :func:`round_folder`).
_SUBFOLDERS = {MASKED: "uncertainty_masked", PAPER: "paper_threshold", "single network": "single", "true labels": "true_labels"}


@dataclass(frozen=True)
class AdaptConfig:
    """How the ensemble adapts.

    Attributes
    ----------
    rounds: maximum number of rounds.
    iterations_per_round: fine-tuning steps per member per round.
    batch_size: images per step.
    learning_rate: Adam's learning rate for fine-tuning.
    confident_mi_nats: atoms whose mutual information exceeds this are not used as labels
        (and, with ``mask_uncertain``, their footprint is left out of the loss). 0.2 nats is
        about a third of the largest possible MI of a binary answer (ln 2 = 0.69 nats).
    mask_uncertain: leave uncertain atoms and unclaimed faint blobs out of the loss (False: the
        paper's scheme, every atom above the threshold is a label and every pixel counts).
    threshold: probability above which a pixel belongs to an atom (the paper's 0.5 by default).
    min_prominence: a blob holding two peaks whose dip is at least this deep is two atoms
        (:func:`~elit_utils.locate.atom_regions`).
    background_probability: with ``mask_uncertain``, faint blobs above this probability that hold
        no atom are left out of the loss: they may be atoms the ensemble cannot yet see.
    source_fraction: share of training tiles drawn from labelled source frames.
    mask_radius_A: radius of the pseudo-label discs.
    stop_change: stop when the mean uncertainty changes by less than this fraction and the
        pseudo-labels of two rounds agree to F1 >= 1 - stop_change.
    freeze_batch_norm: keep the members' batch-norm statistics while fine-tuning (a few
        small batches of new frames would otherwise replace them).
    tile_px: side of the square tiles that target and source frames are cut into for
        fine-tuning (a multiple of 8, at least 32). Smaller tiles make each step cheaper: a
        64 px tile at 0.1 A/px still holds about 80 atoms, far more than the network's view
        of one atom needs.
    """

    rounds: int = 3
    iterations_per_round: int = 100
    batch_size: int = 8
    learning_rate: float = 5e-4
    confident_mi_nats: float = 0.2
    mask_uncertain: bool = True
    threshold: float = PAPER_THRESHOLD
    min_prominence: float = MIN_PROMINENCE
    background_probability: float = 0.05
    source_fraction: float = 0.25
    mask_radius_A: float = 0.35
    stop_change: float = 0.02
    freeze_batch_norm: bool = True
    tile_px: int = 128

    def __post_init__(self) -> None:
        _whole_number(self.rounds, "AdaptConfig.rounds", minimum=1)
        _whole_number(self.iterations_per_round, "AdaptConfig.iterations_per_round", minimum=1)
        _whole_number(self.batch_size, "AdaptConfig.batch_size", minimum=1)
        _whole_number(self.tile_px, "AdaptConfig.tile_px", minimum=MIN_ADAPT_FRAME_PX)
        if self.tile_px % 8:
            raise BadValueError(
                f"AdaptConfig.tile_px={self.tile_px} must be a multiple of 8 (the U-Net halves the image three times), e.g. {self.tile_px - self.tile_px % 8}."
            )
        for name, low, high, why in _CONFIG_RANGES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not _inside(value, low, high):
                raise BadValueError(f"AdaptConfig.{name}={value!r} {why}.")
        if self.background_probability >= self.threshold:
            raise BadValueError(
                f"AdaptConfig.background_probability={self.background_probability} must be below threshold={self.threshold} "
                "(faint blobs are fainter than atoms)."
            )
        for name in ("mask_uncertain", "freeze_batch_norm"):
            if not isinstance(getattr(self, name), bool):
                raise BadValueError(f"AdaptConfig.{name}={getattr(self, name)!r} must be True or False.")


#: Checked ranges of AdaptConfig's numbers: (field, (low, low inclusive), (high, high inclusive), what it must be).
_CONFIG_RANGES = (
    ("learning_rate", (0, False), (1, True), "must be a learning rate above 0 and at most 1, e.g. 5e-4"),
    ("confident_mi_nats", (0, True), (math.log(2), True), "must lie between 0 and ln 2 = 0.693 nats (the largest MI of a yes/no answer)"),
    ("threshold", (0, False), (1, False), "must be a probability strictly between 0 and 1"),
    ("min_prominence", (0, True), (1, False), "must be a probability dip from 0 up to (not including) 1"),
    ("background_probability", (0, True), (1, False), "must be a probability from 0 up to (not including) 1"),
    ("source_fraction", (0, True), (1, False), "must be a share from 0 up to (not including) 1: at 1 no target tile would be left"),
    ("mask_radius_A", (0, False), (5, True), "must be a radius in A above 0 and at most 5 (an atom's disc is about 0.35 A)"),
    ("stop_change", (0, True), (1, True), "must be a relative change from 0 to 1"),
)


def _inside(value: float, low: tuple[float, bool], high: tuple[float, bool]) -> bool:
    """Whether ``value`` lies between ``low`` and ``high`` (each a bound and whether it is included).

    >>> _inside(1.0, (0, True), (1, False)), _inside(0.0, (0, True), (1, False))
    (False, True)
    """
    above = value >= low[0] if low[1] else value > low[0]
    below = value <= high[0] if high[1] else value < high[0]
    return above and below


#: The smallest frame side (px, at the ensemble's pixel size) that adapting accepts.
MIN_ADAPT_FRAME_PX = 32


@dataclass
class AdaptResult:
    """The adapted ensemble and one history row per round (round 0: before adapting)."""

    ensemble: Ensemble
    history: list[dict]


def _resample(frame: np.ndarray, factor: float) -> np.ndarray:
    """``frame`` resized by ``factor`` (bilinear), as float32."""
    if abs(factor - 1) < 1e-6:
        return frame
    return resize(frame, (round(frame.shape[0] * factor), round(frame.shape[1] * factor)), order=1, preserve_range=True).astype(np.float32)


def _tiles(frames: list[np.ndarray] | np.ndarray, size: int) -> np.ndarray:
    """Cut frames (any shapes) into (m, size, size) tiles (overlapping where needed to cover the edges)."""
    tiles = []
    for frame in frames:
        rows = sorted({*range(0, frame.shape[0] - size + 1, size), frame.shape[0] - size})
        cols = sorted({*range(0, frame.shape[1] - size + 1, size), frame.shape[1] - size})
        tiles += [frame[r : r + size, c : c + size] for r in rows for c in cols]
    return np.stack(tiles)


def pseudo_labels(prediction: object, config: AdaptConfig, sampling_A_per_px: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Pseudo-label mask, loss weight (0 = ignored) and label count for one predicted frame.

    >>> from elit_utils.ensemble import uncertainty_maps
    >>> members = np.zeros((2, 24, 24)); members[:, 4:8, 4:8] = 0.95; members[0, 14:18, 14:18] = 0.95
    >>> mask, weight, n = pseudo_labels(uncertainty_maps(members, 0.1), AdaptConfig(confident_mi_nats=0.1), 0.1)
    >>> n, bool(mask[5, 5]), bool(weight[15, 15]), bool(weight[1, 20])
    (1, True, False, True)
    """
    atoms = locate_atoms(prediction, config.threshold, min_prominence=config.min_prominence)
    confident = atoms.mutual_information <= config.confident_mi_nats if config.mask_uncertain else np.ones(len(atoms), bool)
    radius_px = config.mask_radius_A / sampling_A_per_px
    labels = np.column_stack([atoms.coordinates_px[confident], np.zeros(confident.sum())])
    mask = label_mask(labels, prediction.mean.shape, (radius_px, radius_px)) > 0
    weight = np.ones(prediction.mean.shape, bool)
    if config.mask_uncertain:
        doubtful = np.column_stack([atoms.coordinates_px[~confident], np.zeros((~confident).sum())])
        weight &= label_mask(doubtful, prediction.mean.shape, (2 * radius_px, 2 * radius_px)) == 0
        weight &= ~_unclaimed_blobs(prediction.mean, config.background_probability, config.threshold)
    return mask, weight, int(confident.sum())


def _unclaimed_blobs(mean: np.ndarray, background_probability: float, threshold: float) -> np.ndarray:
    """Pixels of faint blobs (mean probability above ``background_probability``) that hold no atom
    (no pixel above ``threshold``): perhaps atoms the ensemble cannot see yet, so neither label.

    >>> mean = np.zeros((8, 8)); mean[1:3, 1:3] = 0.3; mean[5:7, 5:7] = 0.9; mean[4, 5] = 0.3
    >>> blobs = _unclaimed_blobs(mean, 0.05, 0.5)
    >>> bool(blobs[1, 1]), bool(blobs[4, 5]), bool(blobs[5, 5])
    (True, False, False)
    """
    regions, count = ndimage.label(mean > background_probability)
    if count == 0:
        return np.zeros(mean.shape, bool)
    peaks = np.asarray(ndimage.maximum(mean, regions, np.arange(1, count + 1)))
    return np.r_[False, peaks <= threshold][regions]


def should_stop(previous_mi: float, current_mi: float, agreement_f1: float, tolerance: float) -> bool:
    """The stopping rule: the mean uncertainty changed by less than ``tolerance`` (relative)
    and two successive rounds found the same atoms (F1 between them >= 1 - tolerance).

    >>> should_stop(0.010, 0.0101, 0.995, 0.02), should_stop(0.010, 0.008, 0.995, 0.02), should_stop(0.010, 0.0101, 0.9, 0.02)
    (True, False, False)
    """
    change = abs(current_mi - previous_mi) / max(previous_mi, 1e-12)
    return change < tolerance and agreement_f1 >= 1 - tolerance


def _score(
    ensemble: Ensemble,
    frames: list[np.ndarray],
    samplings: list[float],
    truth: list[np.ndarray] | None,
    threshold: float,
    clutter: list[np.ndarray] | None = None,
) -> tuple[dict, list[np.ndarray]]:
    predictions = [ensemble.predict(frame, sampling_A_per_px=s) for frame, s in zip(frames, samplings)]
    found = [locate_atoms(p, threshold).coordinates_px for p in predictions]
    pixels = sum(p.mutual_information.size for p in predictions)
    row = {"mean_mi_nats": float(sum(p.mutual_information.sum() for p in predictions) / pixels), "atoms_found": int(sum(len(f) for f in found))}
    if truth is not None:
        scores = pooled_scores(found, truth, samplings, 0.5, [f.shape for f in frames], border_A=0.5)
        row.update(f1=scores.f1, precision=scores.precision, recall=scores.recall)
    if truth is not None and clutter is not None:
        counts = np.array([found_in_region(f, t, c, s, 0.5, border_A=0.5) for f, t, c, s in zip(found, truth, clutter, samplings)]).reshape(-1, 2).sum(axis=0)
        row.update(found_in_clutter=int(counts[0]), precision_in_clutter=float(counts[1] / counts[0]) if counts[0] else float("nan"))
    return row, found


def _checked_frames(frames: np.ndarray | list[np.ndarray], sampling_A_per_px: float | list[float] | None) -> tuple[list[np.ndarray], list[float]]:
    """Frames as a list of checked 2D arrays (:func:`~elit_utils.ensemble.checked_images`) and one checked pixel size per frame."""
    if not isinstance(frames, (list, tuple)):
        frames = checked_images(frames, "adapt")  # one frame (H, W) or a stack (n, H, W); a colour image is refused here
        frames = list(frames) if frames.ndim == 3 else [frames]
    checked = []
    for index, frame in enumerate(frames):
        frame = checked_images(frame, f"adapt (frame {index})")
        if frame.ndim != 2:
            raise BadImageError(f"frame {index} must be a finite 2D image, got shape {frame.shape}; pass a list of (H, W) frames or one (n, H, W) stack.")
        checked.append(frame)
    if not checked:
        raise BadImageError("adapt got no frames; pass at least one (H, W) frame.")
    if sampling_A_per_px is None or (isinstance(sampling_A_per_px, (list, tuple)) and None in sampling_A_per_px):
        raise BadValueError("The frames' pixel size is unknown: pass sampling_A_per_px (A/px); adapting without it would teach the wrong atom size.")
    samplings = list(sampling_A_per_px) if isinstance(sampling_A_per_px, (list, tuple)) else [sampling_A_per_px] * len(checked)
    if len(samplings) != len(checked):
        raise BadValueError(f"{len(checked)} frames but {len(samplings)} pixel sizes; pass one pixel size, or one per frame.")
    return checked, [check_sampling(s) for s in samplings]


def _checked_source(source: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Checked labelled source frames (n, H, W) and their masks (same shape), at least 32 px a side."""
    if source is None:
        return None
    images, masks = np.asarray(source[0]), np.asarray(source[1])
    if images.ndim != 3 or masks.shape != images.shape or images.shape[1] < MIN_ADAPT_FRAME_PX or images.shape[2] < MIN_ADAPT_FRAME_PX:
        raise BadImageError(
            f"source must be (images, masks), both (n, H, W) of at least {MIN_ADAPT_FRAME_PX} px a side and equal in shape; "
            f"got {images.shape} and {masks.shape}."
        )
    return checked_images(images, "adapt (source frames)"), masks


def adapt(
    ensemble: Ensemble,
    frames: np.ndarray | list[np.ndarray],
    sampling_A_per_px: float | list[float] | None,
    out_dir: str | Path,
    config: AdaptConfig | None = None,
    truth: list[np.ndarray] | None = None,
    source: tuple[np.ndarray, np.ndarray] | None = None,
    progress: bool = True,
    clutter: list[np.ndarray] | None = None,
) -> AdaptResult:
    """Adapt ``ensemble`` to unlabelled ``frames`` of known pixel size, round by round.

    ``frames`` is an (n, H, W) stack with one pixel size, or a list of frames of any shapes with a
    pixel size each (A/px); each must be at least 32 px a side at the ensemble's pixel size.
    ``truth`` (atoms per frame, row/col px), when given, adds F1 to the history; ``source``
    (images, masks) are labelled frames mixed in so that the models do not forget; training uses
    tiles of ``config.tile_px`` (or the smallest frame side, if smaller). ``clutter`` (a bool mask per
    frame, e.g. :attr:`~elit_utils.simulate.SimulatedDataset.clutter_mask`), with ``truth``, adds the
    precision of the atoms found inside clutter (``precision_in_clutter``). Round ``k`` is saved in
    ``out_dir/round_k``; a rerun resumes from the rounds on disk. Everything is checked before
    any folder is written, so a refused start leaves nothing that blocks a corrected rerun.
    """
    config = config or AdaptConfig()
    if not isinstance(config, AdaptConfig):
        raise BadValueError(f"config must be an AdaptConfig, got {type(config).__name__}")
    if ensemble.n_classes != 1:
        raise BadValueError(f"adapt adapts one-class ensembles (atom or not); {ensemble.folder} has {ensemble.n_classes} classes.")
    frames, samplings = _checked_frames(frames, sampling_A_per_px)
    source = _checked_source(source)
    work = [_resample(frame, s / ensemble.sampling_A_per_px) for frame, s in zip(frames, samplings)]  # at the training pixel size
    small = [index for index, w in enumerate(work) if min(w.shape) < MIN_ADAPT_FRAME_PX]
    if small:
        shape = work[small[0]].shape
        raise BadImageError(
            f"frame {small[0]} is {shape[0]}x{shape[1]} px at the ensemble's pixel size ({ensemble.sampling_A_per_px} A/px): too small to adapt on; "
            f"use frames of at least {MIN_ADAPT_FRAME_PX} px a side there."
        )
    tile = _tile_size(config.tile_px, work, source)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    row, previous_found = _score(ensemble, frames, samplings, truth, config.threshold, clutter)
    history = [{"round": 0, **row}]
    current = ensemble
    for round_index in range(1, config.rounds + 1):
        folder = out / f"round_{round_index}"
        labels = [pseudo_labels(current.predict(w), config, current.sampling_A_per_px) for w in work]
        current = _fine_tune(current, work, labels, source, folder, config, round_index, tile, progress)
        row, found = _score(current, frames, samplings, truth, config.threshold, clutter)
        agreement = pooled_scores(found, previous_found, samplings, 0.5).f1
        history.append({"round": round_index, **row, "pseudo_labels": sum(n for _, _, n in labels), "agreement_with_previous": agreement})
        previous_found = found
        if round_index >= 2 and should_stop(history[-2]["mean_mi_nats"], history[-1]["mean_mi_nats"], agreement, config.stop_change):
            history[-1]["stopped"] = "uncertainty and pseudo-labels stopped changing"
            break
    _write_history(out, history)
    return AdaptResult(current, history)


def _tile_size(tile_px: int, frames: list[np.ndarray], source: tuple[np.ndarray, np.ndarray] | None) -> int:
    """The fine-tuning tile side: ``tile_px``, or the smallest side of any frame when smaller (a multiple of 8).

    >>> _tile_size(64, [np.zeros((100, 300))], None), _tile_size(128, [np.zeros((100, 300))], None)
    (64, 96)
    """
    sides = [side for frame in frames for side in frame.shape] + ([] if source is None else list(source[0].shape[1:]))
    tile = min(tile_px, *sides)
    return tile - tile % 8


def fine_tune(
    ensemble: Ensemble,
    frames: np.ndarray | list[np.ndarray],
    labels: Sequence[tuple[np.ndarray, ...]],
    out_dir: str | Path,
    config: AdaptConfig,
    source: tuple[np.ndarray, np.ndarray] | None = None,
    round_index: int = 1,
    progress: bool = True,
) -> Ensemble:
    """Fine-tune every member on ``frames`` and their ``labels``; save the tuned ensemble in ``out_dir`` and return it.

    Fine-tuning goes on training from the members' present weights (not from scratch), for
    ``config.iterations_per_round`` steps at ``config.learning_rate``, on tiles of ``config.tile_px``.
    ``frames`` are at the ensemble's pixel size; ``labels`` holds one (mask, loss weight, ...) per frame,
    as :func:`pseudo_labels` returns them (a weight of 0 leaves a pixel out of the loss);
    ``source`` (images, masks) are labelled frames mixed in so that the members do not forget.
    This is one round of :func:`adapt`: the same call into a folder that already holds the
    finished members loads them instead of training again.

    >>> model = Ensemble.load("my_model")  # doctest: +SKIP
    >>> labels = [pseudo_labels(model.predict(frame), AdaptConfig(), model.sampling_A_per_px) for frame in frames]  # doctest: +SKIP
    >>> tuned = fine_tune(model, frames, labels, "adapted/round_1", AdaptConfig())  # doctest: +SKIP
    """
    if not isinstance(config, AdaptConfig):
        raise BadValueError(f"config must be an AdaptConfig, got {type(config).__name__}")
    frames, _ = _checked_frames(frames, ensemble.sampling_A_per_px)
    if len(labels) != len(frames):
        raise BadValueError(f"{len(frames)} frames but {len(labels)} labels; pass one (mask, loss weight) per frame.")
    for index, (frame, label) in enumerate(zip(frames, labels)):
        if np.shape(label[0]) != frame.shape or np.shape(label[1]) != frame.shape:
            raise BadImageError(f"frame {index} is {frame.shape} px but its mask and loss weight are {np.shape(label[0])} and {np.shape(label[1])}.")
    source = _checked_source(source)
    tile = _tile_size(config.tile_px, frames, source)
    return _fine_tune(ensemble, frames, [(m, w, 0) for m, w, *_ in labels], source, Path(out_dir), config, round_index, tile, progress)


def round_folder(out_dir: str | Path, method: str = MASKED, round_index: int = 1) -> Path:
    """Where :func:`compare_with_baselines` (into ``out_dir``) keeps round ``round_index`` of ``method``.

    A round fine-tuned by hand (:func:`fine_tune`) into this folder is found there, not trained again.

    >>> round_folder("adapt", PAPER, 2).as_posix()
    'adapt/paper_threshold/round_2'
    """
    if method not in _SUBFOLDERS:
        raise BadValueError(f"{method!r} keeps no rounds; choose one of: {', '.join(_SUBFOLDERS)}.")
    return Path(out_dir) / _SUBFOLDERS[method] / f"round_{round_index}"


def adapt_folder(name: str, frames: np.ndarray | list[np.ndarray], config: AdaptConfig, model_record: dict, profile: str | None = None) -> Path:
    """A cache folder for adapting the ensemble of ``model_record`` to ``frames`` with ``config``:
    ``<cache>/adapt/<name>-<profile>-<hash>``, the hash covering the frames' pixels, the settings and the ensemble,
    so a change of any of them adapts afresh and a rerun resumes from the rounds on disk.

    >>> folder = adapt_folder("dose=5000", np.zeros((2, 64, 64)), AdaptConfig(), {"seeds": [0, 1]}, profile="smoke")
    >>> folder.parent.name, folder.name.startswith("dose=5000-smoke-")
    ('adapt', True)
    """
    frames_key = [data_hash(np.asarray(frame), np.zeros(0)) for frame in frames]
    model_key = {key: model_record.get(key) for key in ("seeds", "data_hash", "architecture", "training", "sampling_A_per_px")}
    key = config_hash({"frames": frames_key, "adapt": config, "model": model_key})
    return cache_dir() / "adapt" / f"{name}-{get_profile(profile).name}-{key}"


def _fine_tune(
    ensemble: Ensemble,
    work: list[np.ndarray],
    labels: list,
    source: tuple | None,
    folder: Path,
    config: AdaptConfig,
    round_index: int,
    tile: int,
    progress: bool,
) -> Ensemble:
    """Fine-tune every member on the pseudo-labelled tiles (plus source tiles); save as ``folder``."""
    images = _tiles(work, tile)
    masks = _tiles([m for m, _, _ in labels], tile)
    weights = _tiles([w for _, w, _ in labels], tile)
    if source is not None and config.source_fraction > 0:
        n_source = max(1, round(len(images) * config.source_fraction / (1 - config.source_fraction)))
        source_images, source_masks = _tiles(source[0], tile), _tiles(source[1].astype(bool), tile)
        pick = np.random.default_rng(round_index).choice(len(source_images), size=min(n_source, len(source_images)), replace=False)
        source_images, source_masks = source_images[pick], source_masks[pick]
        images = np.concatenate([images, source_images])
        masks = np.concatenate([masks, source_masks])
        weights = np.concatenate([weights, np.ones(source_masks.shape, bool)])
    record = {
        **{k: ensemble.record[k] for k in ("architecture", "sampling_A_per_px", "normalization")},
        "training": {"adapt": dataclasses.asdict(config), "round": round_index},
        "data_hash": data_hash(images, masks),
    }
    architecture = UnetArchitecture(**{**record["architecture"], "layers": tuple(record["architecture"]["layers"])})
    training = TrainingConfig(n_iterations=config.iterations_per_round, batch_size=config.batch_size, learning_rate=config.learning_rate, swa_iterations=0)
    precision = resolve_precision(training.precision, ensemble.device)
    folder.mkdir(parents=True, exist_ok=True)
    record = _claim_folder(folder, record, list(ensemble.seeds))  # only once everything above is known to be valid
    todo = set(_members_to_train(folder, record))
    x = torch.from_numpy(normalize_image(images))[:, None]
    y = torch.from_numpy(masks.astype(np.float32))[:, None]
    w = torch.from_numpy(weights.astype(np.float32))[:, None]
    identity = {key: record[key] for key in ("format_version", *IDENTITY_KEYS)}
    for pack_index, net in enumerate(ensemble.packs):
        offset = sum(p.n_members for p in ensemble.packs[:pack_index])
        seeds = ensemble.seeds[offset : offset + net.n_members]
        if not todo.intersection(seeds):
            continue  # finished before an interruption
        states = [net.member_state_dict(i) for i in range(net.n_members)]
        tuned, history, seconds = _train_pack(
            x, y, seeds, architecture, training, ensemble.device, progress, states, w, stream=round_index, freeze_batch_norm=config.freeze_batch_norm
        )
        for index, seed in enumerate(seeds):
            if seed in todo:
                _save_member(folder, seed, tuned.member_state_dict(index), _member_record(identity, seed, precision, seconds / len(seeds), history[:, index]))
    return Ensemble.load(folder, device=ensemble.device)


def compare_with_baselines(
    ensemble: Ensemble,
    frames: np.ndarray,
    sampling_A_per_px: float,
    out_dir: str | Path,
    config: AdaptConfig,
    truth: list[np.ndarray],
    source: tuple[np.ndarray, np.ndarray] | None = None,
    true_masks: np.ndarray | None = None,
    progress: bool = True,
    methods: Sequence[str] = METHODS,
    clutter: list[np.ndarray] | None = None,
) -> dict[str, list[dict]]:
    """The uncertainty-masked scheme and the chosen baselines (``methods``, from :data:`METHODS`) on the same
    frames, each a history of rounds (see :func:`adapt`).

    * ``uncertainty-masked`` (:data:`MASKED`): the ensemble, confident atoms as labels, uncertain regions left out of the loss;
    * ``paper (threshold 0.5)`` (:data:`PAPER`): the same ensemble, every atom above :data:`PAPER_THRESHOLD` a label,
      every pixel in the loss (the paper's scheme);
    * ``single network``: one member adapting alone on its own atoms (self-training without an ensemble);
    * ``no adaptation``: the source ensemble as it is;
    * ``true labels`` (when ``true_masks`` are given): the same fine-tuning with the simulator's
      labels, a reference no experiment has.

    Each method works in its own subfolder of ``out_dir`` (:func:`round_folder`), so each resumes on
    its own. The uncertainty-masked scheme always runs; a short run profile leaves out the costly baselines.
    ``clutter`` masks per frame add the precision inside clutter to every history (see :func:`adapt`).
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise BadValueError(f"unknown adaptation method(s) {', '.join(unknown)}; choose from: {', '.join(METHODS)}.")
    out = Path(out_dir)

    def folder(method: str) -> Path:
        return out / _SUBFOLDERS[method]

    def run(members: Ensemble, method: str, chosen: AdaptConfig) -> list[dict]:
        return adapt(members, frames, sampling_A_per_px, folder(method), chosen, truth, source, progress, clutter).history

    histories = {MASKED: run(ensemble, MASKED, config)}
    if PAPER in methods:
        histories[PAPER] = run(ensemble, PAPER, dataclasses.replace(config, mask_uncertain=False, threshold=PAPER_THRESHOLD))
    if "single network" in methods:
        histories["single network"] = run(ensemble.subset(1), "single network", config)
    histories["no adaptation"] = histories[MASKED][:1]
    if true_masks is not None and "true labels" in methods:
        histories["true labels"] = _fine_tune_on_true_labels(
            ensemble, frames, sampling_A_per_px, folder("true labels"), config, truth, source, true_masks, histories[MASKED][0], progress, clutter
        )
    return histories


def _fine_tune_on_true_labels(
    ensemble: Ensemble,
    frames: np.ndarray,
    sampling: float,
    out: Path,
    config: AdaptConfig,
    truth: list,
    source: tuple | None,
    true_masks: np.ndarray,
    before: dict,
    progress: bool,
    clutter: list[np.ndarray] | None = None,
) -> list[dict]:
    """One round of the same fine-tuning budget as all of ELIT's rounds, with the simulator's labels.

    ``before`` is the untouched ensemble's history row (round 0), which is not scored again. Frames
    of another pixel size are resampled to the ensemble's, and their masks with them (nearest pixel).
    """
    frames = list(np.asarray(frames, np.float32))
    work = [_resample(frame, sampling / ensemble.sampling_A_per_px) for frame in frames]
    labels = []
    for mask, frame in zip(true_masks, work):
        resampled = resize(mask.astype(np.float32), frame.shape, order=0, preserve_range=True) > 0.5 if mask.shape != frame.shape else mask.astype(bool)
        labels.append((resampled, np.ones(frame.shape, bool), 0))
    budget = dataclasses.replace(config, iterations_per_round=config.iterations_per_round * config.rounds)
    tuned = _fine_tune(ensemble, work, labels, source, out, budget, 1, _tile_size(config.tile_px, work, source), progress)
    after, _ = _score(tuned, frames, [sampling] * len(frames), truth, config.threshold, clutter)
    return [before, {"round": config.rounds, **after}]


def _write_history(out: Path, history: list[dict]) -> None:
    write_json_atomic(out / "history.json", history)
    columns = list(dict.fromkeys(key for row in history for key in row))
    with atomic_path(out / "history.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def load_history(out_dir: str | Path) -> list[dict]:
    """The history written by :func:`adapt`."""
    return json.loads((Path(out_dir) / "history.json").read_text())
