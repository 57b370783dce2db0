"""Iterative training: adapt an ensemble to new, unlabelled frames with its own confident atoms.

Each round: the ensemble predicts on the target frames; atoms it is sure of
(mutual information below a limit) become pseudo-label discs; the footprints of
atoms it is unsure of, and uncertain pixels, are left out of the loss; every
member is fine-tuned on these frames (mixed with labelled source frames, so it
does not forget). Rounds repeat until the pseudo-labels and the uncertainty stop
changing. Each round's ensemble is saved in the safe checkpoint format, so an
interrupted adaptation resumes where it stopped.

Example
-------
>>> AdaptConfig(rounds=2).rounds
2
"""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from skimage.transform import resize

from .cache import atomic_path, package_versions, write_json_atomic
from .ensemble import Ensemble, TrainingConfig, _claim_folder, _member_name, _save_member, _train_pack, data_hash, uncertainty_maps
from .io import check_sampling, normalize_image
from .locate import locate_atoms
from .metrics import pooled_scores
from .simulate import label_mask
from .unet import UnetArchitecture


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
        (and, with ``mask_uncertain``, their footprint is left out of the loss).
    mask_uncertain: leave uncertain atoms and pixels out of the loss (False: the paper's plain
        scheme, every atom above the threshold is a label and every pixel counts).
    threshold: probability above which a pixel belongs to an atom.
    background_probability: with ``mask_uncertain``, pixels between this and ``threshold`` are
        left out of the loss: they may be atoms the ensemble cannot yet see.
    source_fraction: share of training tiles drawn from labelled source frames.
    mask_radius_A: radius of the pseudo-label discs.
    stop_change: stop when the mean uncertainty changes by less than this fraction and the
        pseudo-labels of two rounds agree to F1 >= 1 - stop_change.
    freeze_batch_norm: keep the members' batch-norm statistics while fine-tuning (a few
        small batches of new frames would otherwise replace them).
    """

    rounds: int = 3
    iterations_per_round: int = 100
    batch_size: int = 8
    learning_rate: float = 5e-4
    confident_mi_nats: float = 0.1
    mask_uncertain: bool = True
    threshold: float = 0.5
    background_probability: float = 0.05
    source_fraction: float = 0.25
    mask_radius_A: float = 0.35
    stop_change: float = 0.02
    freeze_batch_norm: bool = True


@dataclass
class AdaptResult:
    """The adapted ensemble and one history row per round (round 0: before adapting)."""

    ensemble: Ensemble
    history: list[dict]


def _tiles(frames: np.ndarray, size: int) -> np.ndarray:
    """Cut (n, H, W) frames into (m, size, size) tiles (overlapping where needed to cover the edges)."""
    tiles = []
    for frame in frames:
        rows = sorted({*range(0, frame.shape[0] - size + 1, size), frame.shape[0] - size})
        cols = sorted({*range(0, frame.shape[1] - size + 1, size), frame.shape[1] - size})
        tiles += [frame[r : r + size, c : c + size] for r in rows for c in cols]
    return np.stack(tiles)


def pseudo_labels(prediction: object, config: AdaptConfig, sampling_A_per_px: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Pseudo-label mask, loss weight (0 = ignored) and label count for one predicted frame.

    >>> members = np.zeros((2, 24, 24)); members[:, 4:8, 4:8] = 0.95; members[0, 14:18, 14:18] = 0.95
    >>> mask, weight, n = pseudo_labels(uncertainty_maps(members, 0.1), AdaptConfig(confident_mi_nats=0.1), 0.1)
    >>> n, bool(mask[5, 5]), bool(weight[15, 15]), bool(weight[1, 20])
    (1, True, False, True)
    """
    atoms = locate_atoms(prediction, config.threshold)
    confident = atoms.mutual_information <= config.confident_mi_nats if config.mask_uncertain else np.ones(len(atoms), bool)
    radius_px = config.mask_radius_A / sampling_A_per_px
    labels = np.column_stack([atoms.coordinates_px[confident], np.zeros(confident.sum())])
    mask = label_mask(labels, prediction.mean.shape, (radius_px, radius_px)) > 0
    weight = np.ones(prediction.mean.shape, bool)
    if config.mask_uncertain:
        doubtful = np.column_stack([atoms.coordinates_px[~confident], np.zeros((~confident).sum())])
        weight &= label_mask(doubtful, prediction.mean.shape, (3 * radius_px, 3 * radius_px)) == 0
        weight &= prediction.mutual_information <= config.confident_mi_nats
        weight &= ~((prediction.mean > config.background_probability) & (prediction.mean <= config.threshold))  # faint, unclaimed blobs
    return mask, weight, int(confident.sum())


def should_stop(previous_mi: float, current_mi: float, agreement_f1: float, tolerance: float) -> bool:
    """The stopping rule: the mean uncertainty changed by less than ``tolerance`` (relative)
    and two successive rounds found the same atoms (F1 between them >= 1 - tolerance).

    >>> should_stop(0.010, 0.0101, 0.995, 0.02), should_stop(0.010, 0.008, 0.995, 0.02), should_stop(0.010, 0.0101, 0.9, 0.02)
    (True, False, False)
    """
    change = abs(current_mi - previous_mi) / max(previous_mi, 1e-12)
    return change < tolerance and agreement_f1 >= 1 - tolerance


def _score(ensemble: Ensemble, frames: np.ndarray, sampling: float, truth: list[np.ndarray] | None, threshold: float) -> tuple[dict, list[np.ndarray]]:
    prediction = ensemble.predict(frames, sampling_A_per_px=sampling)
    found = [locate_atoms(uncertainty_maps(prediction.members[:, i], sampling), threshold).coordinates_px for i in range(len(frames))]
    row = {"mean_mi_nats": float(prediction.mutual_information.mean()), "atoms_found": int(sum(len(f) for f in found))}
    if truth is not None:
        scores = pooled_scores(found, truth, sampling, 0.5, frames.shape[1:], border_A=0.5)
        row.update(f1=scores.f1, precision=scores.precision, recall=scores.recall)
    return row, found


def adapt(
    ensemble: Ensemble,
    frames: np.ndarray,
    sampling_A_per_px: float | None,
    out_dir: str | Path,
    config: AdaptConfig | None = None,
    truth: list[np.ndarray] | None = None,
    source: tuple[np.ndarray, np.ndarray] | None = None,
    tile_px: int = 128,
    progress: bool = True,
) -> AdaptResult:
    """Adapt ``ensemble`` to unlabelled ``frames`` (n, H, W) of known pixel size, round by round.

    ``truth`` (atoms per frame, row/col px), when given, adds F1 to the history; ``source``
    (images, masks) are labelled frames mixed in so that the models do not forget; training
    uses tiles of their size (else ``tile_px``). Round ``k`` is saved in ``out_dir/round_k``; a rerun resumes from the rounds on disk.
    """
    config = config or AdaptConfig()
    frames = np.asarray(frames, np.float32)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3 or not np.isfinite(frames).all():
        raise ValueError(f"frames must be a finite (n, H, W) stack, got shape {frames.shape}")
    if sampling_A_per_px is None:
        raise ValueError("The frames' pixel size is unknown: pass sampling_A_per_px (A/px); adapting without it would teach the wrong atom size.")
    sampling = check_sampling(sampling_A_per_px)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    factor = sampling / ensemble.sampling_A_per_px  # frames are resampled to the training pixel size
    work = np.stack([resize(f, (round(f.shape[0] * factor), round(f.shape[1] * factor)), order=1, preserve_range=True) for f in frames]).astype(np.float32)
    tile = min(tile_px if source is None else source[0].shape[-1], *work.shape[1:])
    tile -= tile % 8
    row, previous_found = _score(ensemble, frames, sampling, truth, config.threshold)
    history = [{"round": 0, **row}]
    current = ensemble
    for round_index in range(1, config.rounds + 1):
        folder = out / f"round_{round_index}"
        prediction = current.predict(work)
        labels = [pseudo_labels(uncertainty_maps(prediction.members[:, i]), config, current.sampling_A_per_px) for i in range(len(work))]
        current = _fine_tune(current, work, labels, source, folder, config, round_index, tile, progress)
        row, found = _score(current, frames, sampling, truth, config.threshold)
        agreement = pooled_scores(found, previous_found, sampling, 0.5).f1
        history.append({"round": round_index, **row, "pseudo_labels": sum(n for _, _, n in labels), "agreement_with_previous": agreement})
        previous_found = found
        if round_index >= 2 and should_stop(history[-2]["mean_mi_nats"], history[-1]["mean_mi_nats"], agreement, config.stop_change):
            history[-1]["stopped"] = "uncertainty and pseudo-labels stopped changing"
            break
    _write_history(out, history)
    return AdaptResult(current, history)


def _fine_tune(
    ensemble: Ensemble, work: np.ndarray, labels: list, source: tuple | None, folder: Path, config: AdaptConfig, round_index: int, tile: int, progress: bool
) -> Ensemble:
    """Fine-tune every member on the pseudo-labelled tiles (plus source tiles); save as ``folder``."""
    images = _tiles(work, tile)
    masks = _tiles(np.stack([m for m, _, _ in labels]), tile)
    weights = _tiles(np.stack([w for _, w, _ in labels]), tile)
    if source is not None and config.source_fraction > 0:
        n_source = max(1, round(len(images) * config.source_fraction / (1 - config.source_fraction)))
        pick = np.random.default_rng(round_index).choice(len(source[0]), size=min(n_source, len(source[0])), replace=False)
        source_images, source_masks = _tiles(source[0][pick], tile), _tiles(source[1][pick].astype(bool), tile)
        images = np.concatenate([images, source_images])
        masks = np.concatenate([masks, source_masks])
        weights = np.concatenate([weights, np.ones(source_masks.shape, bool)])
    record = {
        **{k: ensemble.record[k] for k in ("format_version", "architecture", "sampling_A_per_px", "normalization")},
        "training": {"adapt": dataclasses.asdict(config), "round": round_index},
        "data_hash": data_hash(images, masks),
    }
    _claim_folder(folder, record)
    architecture = UnetArchitecture(**{**record["architecture"], "layers": tuple(record["architecture"]["layers"])})
    training = TrainingConfig(n_iterations=config.iterations_per_round, batch_size=config.batch_size, learning_rate=config.learning_rate, swa_iterations=0)
    x = torch.from_numpy(normalize_image(images))[:, None]
    y = torch.from_numpy(masks.astype(np.float32))[:, None]
    w = torch.from_numpy(weights.astype(np.float32))[:, None]
    for pack_index, net in enumerate(ensemble.packs):
        offset = sum(p.n_members for p in ensemble.packs[:pack_index])
        seeds = ensemble.seeds[offset : offset + net.n_members]
        if all((folder / f"{_member_name(s)}.json").exists() for s in seeds):
            continue  # finished before an interruption
        states = [net.member_state_dict(i) for i in range(net.n_members)]
        tuned, history, seconds = _train_pack(
            x, y, seeds, architecture, training, ensemble.device, progress, states, w, stream=round_index, freeze_batch_norm=config.freeze_batch_norm
        )
        for index, seed in enumerate(seeds):
            member = {**record, "seed": seed, "seconds": seconds / len(seeds), "loss_history": history[:, index].tolist(), "versions": package_versions()}
            _save_member(folder, seed, tuned.member_state_dict(index), member)
    return Ensemble.load(folder, seeds=ensemble.seeds, device=ensemble.device)


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
