"""Train an ensemble of U-Nets that differ only by seed; predict with uncertainty.

Training (:func:`train_ensemble`): each member is an atomai ``Unet`` initialised
from its own seed, trained on its own batch order and augmentation stream with
Adam and binary cross-entropy (optionally plus Dice), and its weights averaged
over the final iterations (stochastic weight averaging). Members are trained in
*packs* (:class:`~elit_utils.unet.PackedUnet`): on a GPU all members go in one
pack; on a CPU one member per pack is faster (grouped convolutions are slow in
the CPU backward pass; measured in ``benchmarks/bench_ensemble.py``). Where the
hardware has fast bfloat16 (a GPU, or a CPU with AMX/AVX512-BF16), the forward
pass runs under bf16 autocast with channels-last tensors; fp32 otherwise.

Checkpoints: every finished member is written at once (safetensors weights plus
a JSON record with architecture, configuration, seed, data hash, versions and
loss history), atomically. Training into a folder that already holds members
of the same configuration resumes: finished members are loaded, never retrained
or overwritten. A folder of another configuration is refused. Loading never
unpickles anything.

Prediction (:meth:`Ensemble.predict`): per-pixel mean probability, variance,
predictive entropy and mutual information (the epistemic part), for one image
or a stack, with tiling for large frames and resampling to the training pixel
size.

Example
-------
>>> import numpy as np, tempfile
>>> images = np.random.rand(4, 32, 32).astype(np.float32); masks = images > 0.9
>>> config = TrainingConfig(n_iterations=2, batch_size=2, swa_iterations=1)
>>> ensemble = train_ensemble(images, masks, tempfile.mkdtemp(), n_members=2, sampling_A_per_px=0.1,
...                           architecture=UnetArchitecture(nb_filters=4), config=config, progress=False)
>>> ensemble.predict(images[0]).mean.shape
(32, 32)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage.transform import resize

from .augment import Augmentation, augment_batch
from .cache import atomic_path, package_versions, write_json_atomic
from .io import check_sampling, normalize_image
from .runtime import detect_device
from .unet import PackedUnet, UnetArchitecture

RECORD_FILE = "ensemble.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TrainingConfig:
    """How each member is trained (identical for all members; only the seed differs).

    Attributes
    ----------
    n_iterations: optimiser steps per member.
    batch_size: images per step.
    learning_rate: Adam's learning rate.
    loss: ``"bce"`` or ``"bce+dice"``.
    swa_iterations: final iterations whose weights are averaged (0: none).
    augmentation: the random changes applied to training images.
    precision: ``"auto"`` (bf16 where fast), ``"bf16"`` or ``"fp32"``.
    members_per_pack: members trained together; None: all on a GPU, one on a CPU.
    """

    n_iterations: int = 300
    batch_size: int = 16
    learning_rate: float = 1e-3
    loss: str = "bce"
    swa_iterations: int = 30
    augmentation: Augmentation = field(default_factory=Augmentation)
    precision: str = "auto"
    members_per_pack: int | None = None

    def __post_init__(self) -> None:
        if self.loss not in ("bce", "bce+dice"):
            raise ValueError(f"loss must be 'bce' or 'bce+dice', got {self.loss!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be 'auto', 'bf16' or 'fp32', got {self.precision!r}")
        if self.n_iterations < 1 or self.batch_size < 1 or not 0 <= self.swa_iterations <= self.n_iterations:
            raise ValueError("need n_iterations >= 1, batch_size >= 1 and 0 <= swa_iterations <= n_iterations")

    def as_dict(self) -> dict:
        """Plain dictionary for JSON records (without the pack size, which does not change results)."""
        record = dataclasses.asdict(self)
        record.pop("members_per_pack")
        return record


def data_hash(images: np.ndarray, masks: np.ndarray) -> str:
    """A short hash of the training data, recorded with every member.

    >>> data_hash(np.zeros((1, 8, 8)), np.zeros((1, 8, 8))) == data_hash(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)))
    True
    """
    digest = hashlib.sha256()
    for array in (images, masks):
        array = np.ascontiguousarray(array)
        digest.update(str((array.shape, str(array.dtype))).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to run the forward pass under bfloat16 autocast."""
    if precision != "auto":
        return precision == "bf16"
    return detect_device().bf16 if device.type in ("cpu", "cuda") else False


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    probability = torch.sigmoid(logits).flatten(2)
    target = target.flatten(2)
    overlap = (probability * target).sum(-1)
    return (1 - (2 * overlap + 1) / (probability.sum(-1) + target.sum(-1) + 1)).mean(0).sum()


def _member_loss(logits: torch.Tensor, target: torch.Tensor, kind: str, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss summed over members (so each member gets its own gradient) and per member.

    ``weight`` (same shape as ``target``, 0/1) leaves pixels out of the loss, e.g. where
    pseudo-labels are uncertain.
    """
    pixel_loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if weight is None:
        per_member = pixel_loss.flatten(2).mean(dim=(0, 2))
    else:
        per_member = (pixel_loss * weight).transpose(0, 1).flatten(1).sum(1) / weight.transpose(0, 1).flatten(1).sum(1).clamp(min=1)
    total = per_member.sum()
    if kind == "bce+dice":
        total = total + _dice_loss(logits, target)
    return total, per_member.detach()


def _member_name(seed: int) -> str:
    return f"member_{seed:04d}"


def _record(architecture: UnetArchitecture, config: TrainingConfig, data_digest: str, sampling_A_per_px: float) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "architecture": architecture.as_dict(),
        "training": config.as_dict(),
        "data_hash": data_digest,
        "sampling_A_per_px": sampling_A_per_px,
        "normalization": {"low_percentile": 1.0, "high_percentile": 99.0},
    }


def _save_member(folder: Path, seed: int, state: dict[str, torch.Tensor], record: dict) -> None:
    from safetensors.torch import save_file

    name = _member_name(seed)
    with atomic_path(folder / f"{name}.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    write_json_atomic(folder / f"{name}.json", record)  # written last: a member counts as finished once its JSON exists


def _train_pack(
    images: torch.Tensor,
    masks: torch.Tensor,
    seeds: list[int],
    architecture: UnetArchitecture,
    config: TrainingConfig,
    device: torch.device,
    progress: bool,
    initial_states: list[dict[str, torch.Tensor]] | None = None,
    weights: torch.Tensor | None = None,
    stream: int = 0,
    freeze_batch_norm: bool = False,
) -> tuple[PackedUnet, np.ndarray, float]:
    """Train the members ``seeds`` together; return the SWA network, loss history (iters, members), seconds.

    With ``initial_states`` the members start from those weights (fine-tuning) instead of
    their seeded initialisation; ``weights`` (n, 1, H, W) masks pixels out of the loss;
    ``stream`` selects another random stream for batches and augmentation;
    ``freeze_batch_norm`` keeps the batch-norm statistics of ``initial_states`` (fine-tuning).
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    if initial_states is None:
        net = PackedUnet.from_seeds(seeds, architecture)
    else:
        net = PackedUnet(len(seeds), architecture)
        net.load_members(initial_states)
    net = net.to(device).to(memory_format=torch.channels_last).train()
    if freeze_batch_norm:
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    generators = [torch.Generator().manual_seed(10_000 + seed + 1_000_003 * stream) for seed in seeds]
    targets = masks if weights is None else torch.cat([masks, weights], dim=1)
    bf16 = use_bf16(config.precision, device)
    history = np.zeros((config.n_iterations, len(seeds)), np.float32)
    averaged: dict[str, torch.Tensor] | None = None
    swa_start = config.n_iterations - config.swa_iterations
    label = f"members {seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else f"member {seeds[0]}"
    for step in tqdm(range(config.n_iterations), desc=label, disable=not progress, leave=False):
        batch_x, batch_y = [], []
        for generator in generators:  # each member draws and augments its own batch
            index = torch.randint(len(images), (config.batch_size,), generator=generator)
            x, y = augment_batch(images[index].to(device), targets[index].to(device), config.augmentation, generator)
            batch_x.append(x)
            batch_y.append(y)
        x = torch.cat(batch_x, dim=1).contiguous(memory_format=torch.channels_last)
        y = torch.stack(batch_y, dim=1)  # (B, members, 1 or 2, H, W): the mask, and the loss weight if any
        with _autocast(device, bf16):
            logits = net(x)
        weight = y[:, :, 1:] if weights is not None else None
        loss, per_member = _member_loss(logits.float(), y[:, :, :1], config.loss, weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history[step] = per_member.cpu().numpy()
        if step >= swa_start and config.swa_iterations > 0:
            current = {k: v.detach().float().clone() for k, v in net.state_dict().items() if v.is_floating_point()}
            if averaged is None:
                averaged = current
            else:
                count = step - swa_start + 1
                for key, value in current.items():
                    averaged[key] += (value - averaged[key]) / count
    if averaged is not None:
        state = net.state_dict()
        state.update({k: v.to(state[k].dtype) for k, v in averaged.items()})
        net.load_state_dict(state)
    return net.eval(), history, time.perf_counter() - start


def train_ensemble(
    images: np.ndarray,
    masks: np.ndarray,
    out_dir: str | Path,
    n_members: int,
    sampling_A_per_px: float,
    architecture: UnetArchitecture | None = None,
    config: TrainingConfig | None = None,
    first_seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> Ensemble:
    """Train (or finish training) an ensemble into ``out_dir`` and return it.

    ``images`` (n, H, W) are raw intensities (normalised here, per image, as at
    prediction); ``masks`` (n, H, W) are the atom masks (bool or 0/1). H and W
    must be multiples of 8. Members have seeds ``first_seed .. first_seed + n_members - 1``.
    """
    architecture = architecture or UnetArchitecture()
    config = config or TrainingConfig()
    images, masks = _check_training_data(images, masks)
    sampling = check_sampling(sampling_A_per_px)
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    record = _record(architecture, config, data_hash(images, masks), sampling)
    _claim_folder(folder, record)
    seeds = [first_seed + i for i in range(n_members)]
    todo = [seed for seed in seeds if not (folder / f"{_member_name(seed)}.json").exists()]
    if 0 < len(todo) < len(seeds) and progress:
        print(f"Resuming: {len(seeds) - len(todo)} of {len(seeds)} members already trained in {folder}; training the other {len(todo)}")
    pack = config.members_per_pack or (len(todo) if device.type == "cuda" else 1)
    x = torch.from_numpy(normalize_image(images))[:, None]
    y = torch.from_numpy(masks.astype(np.float32))[:, None]
    torch.set_num_threads(os.cpu_count() or 1)
    for start in range(0, len(todo), max(pack, 1)):
        group = todo[start : start + pack]
        net, history, seconds = _train_pack(x, y, group, architecture, config, device, progress)
        for index, seed in enumerate(group):
            member_record = {
                **record,
                "seed": seed,
                "seconds": seconds / len(group),
                "loss_history": history[:, index].tolist(),
                "versions": package_versions(),
            }
            _save_member(folder, seed, net.member_state_dict(index), member_record)
    return Ensemble.load(folder, seeds=seeds, device=device)


def _check_training_data(images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images, np.float32)
    masks = np.asarray(masks)
    if images.ndim != 3 or masks.shape != images.shape:
        raise ValueError(f"images and masks must both be (n, H, W) and equal in shape, got {images.shape} and {masks.shape}")
    if images.shape[1] % 8 or images.shape[2] % 8:
        raise ValueError(f"image sides must be multiples of 8 (three 2x poolings), got {images.shape[1:]}")
    if not np.isfinite(images).all():
        raise ValueError("training images contain NaN or inf")
    if not np.isin(np.unique(masks), (0, 1)).all():
        raise ValueError("masks must hold only 0 and 1 (or False and True)")
    return images, masks.astype(bool)


def _claim_folder(folder: Path, record: dict) -> None:
    """Write the ensemble record, or check that the folder's record is the same configuration."""
    path = folder / RECORD_FILE
    if path.exists():
        existing = json.loads(path.read_text())
        if {k: existing.get(k) for k in record} != json.loads(json.dumps(record)):
            differs = [k for k in record if existing.get(k) != json.loads(json.dumps(record[k]))]
            raise ValueError(
                f"{folder} holds an ensemble trained with a different configuration ({', '.join(differs)} differ); "
                "choose another output folder (nothing was overwritten)."
            )
        return
    if any(folder.glob("member_*")):
        raise ValueError(f"{folder} holds member files but no {RECORD_FILE}; choose another output folder.")
    write_json_atomic(path, record)


# --------------------------------------------------------------------------- prediction


@dataclass(frozen=True)
class Prediction:
    """An ensemble's per-pixel answer for one image (H, W) or a stack (n, H, W).

    Attributes
    ----------
    mean: mean probability of "atom" over members.
    variance: variance of that probability over members.
    entropy: predictive entropy of the mean (nats): total uncertainty.
    mutual_information: entropy minus the members' mean entropy (nats): disagreement only.
    members: each member's probability, (N, H, W) or (N, n, H, W).
    sampling_A_per_px: pixel size of these maps (the input image's).
    """

    mean: np.ndarray
    variance: np.ndarray
    entropy: np.ndarray
    mutual_information: np.ndarray
    members: np.ndarray
    sampling_A_per_px: float | None

    def frame(self, index: int) -> Prediction:
        """The prediction of frame ``index`` of a stack.

        >>> uncertainty_maps(np.random.rand(3, 2, 8, 8), 0.1).frame(1).mean.shape
        (8, 8)
        """
        if self.mean.ndim != 3:
            raise ValueError(f"this prediction is of one frame {self.mean.shape}, not a stack")
        return uncertainty_maps(self.members[:, index], self.sampling_A_per_px)


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -(p * np.log(p) + (1 - p) * np.log1p(-p))


def uncertainty_maps(members: np.ndarray, sampling_A_per_px: float | None = None) -> Prediction:
    """Mean, variance, entropy and mutual information from member probabilities (N, ...).

    >>> agree = uncertainty_maps(np.array([[0.9], [0.9]]))
    >>> disagree = uncertainty_maps(np.array([[0.99], [0.01]]))
    >>> float(agree.mutual_information[0]) < 1e-6 < float(disagree.mutual_information[0])
    True
    """
    members = np.asarray(members, np.float32)
    mean = members.mean(axis=0)
    entropy = _binary_entropy(mean)
    information = np.clip(entropy - _binary_entropy(members).mean(axis=0), 0, None)
    return Prediction(mean, members.var(axis=0), entropy.astype(np.float32), information.astype(np.float32), members, sampling_A_per_px)


def _blend_window(size: int, overlap: int) -> np.ndarray:
    """Weights that fall smoothly to near zero over ``overlap`` px at the tile edges."""
    ramp = np.ones(size, np.float32)
    if overlap > 0:
        edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)
        ramp[:overlap] = edge
        ramp[-overlap:] = edge[::-1]
    return np.outer(ramp, ramp) + 1e-6


class Ensemble:
    """A trained ensemble: members, their record, and prediction with uncertainty."""

    def __init__(self, packs: list[PackedUnet], seeds: list[int], record: dict, device: torch.device, folder: Path) -> None:
        self.folder = folder
        self.packs = packs
        self.seeds = seeds
        self.record = record
        self.device = device
        self.sampling_A_per_px: float = record["sampling_A_per_px"]

    @property
    def n_members(self) -> int:
        """Number of members."""
        return len(self.seeds)

    def loss_histories(self) -> np.ndarray:
        """Training loss per iteration and member, (iterations, N)."""
        return np.array([self.record["members"][str(seed)]["loss_history"] for seed in self.seeds]).T

    @classmethod
    def load(
        cls, folder: str | Path, seeds: list[int] | None = None, device: str | torch.device | None = None, members_per_pack: int | None = None
    ) -> Ensemble:
        """Load the members of ``folder`` (all finished ones, or ``seeds``) without unpickling.

        A member whose record or tensor shapes do not match the ensemble's
        architecture is refused with an error naming the file.
        """
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / RECORD_FILE).exists():
            raise FileNotFoundError(f"{folder} has no {RECORD_FILE}: not an ELIT Lab ensemble folder")
        record = json.loads((folder / RECORD_FILE).read_text())
        architecture = UnetArchitecture(**{**record["architecture"], "layers": tuple(record["architecture"]["layers"])})
        if seeds is None:
            seeds = sorted(int(p.stem.split("_")[1]) for p in folder.glob("member_*.json"))
        if not seeds:
            raise ValueError(f"{folder} holds no finished members")
        states, members = [], {}
        for seed in seeds:
            name = _member_name(seed)
            member = json.loads((folder / f"{name}.json").read_text())
            if member.get("architecture") != record["architecture"]:
                raise ValueError(f"{folder / name}.json: architecture {member.get('architecture')} does not match the ensemble's {record['architecture']}")
            states.append(load_file(str(folder / f"{name}.safetensors")))
            members[str(seed)] = member
        device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        pack = members_per_pack or (len(seeds) if device.type == "cuda" else 1)
        packs = []
        for start in range(0, len(seeds), pack):
            net = PackedUnet(len(states[start : start + pack]), architecture)
            try:
                net.load_members(states[start : start + pack])
            except ValueError as error:
                raise ValueError(f"{folder}: a member does not fit the ensemble's architecture: {error}") from error
            packs.append(net.to(device).to(memory_format=torch.channels_last).eval())
        return cls(packs, list(seeds), {**record, "members": members}, device, folder)

    def subset(self, n_members: int) -> Ensemble:
        """The first ``n_members`` members as an ensemble of their own (e.g. one model, for a single-network baseline)."""
        if not 1 <= n_members <= self.n_members:
            raise ValueError(f"n_members must be between 1 and {self.n_members}, got {n_members}")
        return Ensemble.load(self.folder, seeds=self.seeds[:n_members], device=self.device)

    @torch.inference_mode()
    def _member_probabilities(self, image: np.ndarray, precision: str) -> np.ndarray:
        """(N, H, W) probabilities for one normalised image whose sides are multiples of 8."""
        bf16 = use_bf16(precision, self.device)
        x = torch.from_numpy(image)[None, None].to(self.device)
        outputs = []
        for net in self.packs:
            batch = x.expand(1, net.n_members, *image.shape).contiguous(memory_format=torch.channels_last)
            with _autocast(self.device, bf16):
                logits = net(batch)
            outputs.append(torch.sigmoid(logits.float())[0, :, 0])
        return torch.cat(outputs).cpu().numpy()

    def _predict_frame(self, image: np.ndarray, tile_px: int, overlap_px: int, precision: str) -> np.ndarray:
        """Members' probabilities for one normalised frame of any size, tiled with smooth blending."""
        height, width = image.shape
        if max(height, width) <= tile_px:
            padded = np.pad(image, ((0, -height % 8), (0, -width % 8)), mode="reflect")
            return self._member_probabilities(padded, precision)[:, :height, :width]
        tile = tile_px - tile_px % 8
        step = tile - overlap_px
        padded = np.pad(image, ((0, max(tile - height, 0)), (0, max(tile - width, 0))), mode="reflect")
        total = np.zeros((self.n_members, *padded.shape), np.float32)
        weight = np.zeros(padded.shape, np.float32)
        window = _blend_window(tile, overlap_px)
        rows = sorted({*range(0, padded.shape[0] - tile, step), padded.shape[0] - tile})
        cols = sorted({*range(0, padded.shape[1] - tile, step), padded.shape[1] - tile})
        for r in rows:
            for c in cols:
                total[:, r : r + tile, c : c + tile] += self._member_probabilities(padded[r : r + tile, c : c + tile], precision) * window
                weight[r : r + tile, c : c + tile] += window
        return (total / weight)[:, :height, :width]

    def _working_frames(self, images: np.ndarray, sampling_A_per_px: float | None) -> tuple[np.ndarray, list[np.ndarray], bool]:
        """Checked, normalised frames (n, H, W), each resampled to the training pixel size, and
        whether resampling was needed (the pixel size differs by more than 2 %)."""
        array = np.asarray(images, np.float32)
        if array.ndim not in (2, 3):
            raise ValueError(f"predict expects an image (H, W) or a stack (n, H, W), got shape {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError("the image contains NaN or inf; clean it before predicting")
        sampling = check_sampling(sampling_A_per_px)
        frames = normalize_image(array[None] if array.ndim == 2 else array)
        factor = 1.0 if sampling is None else sampling / self.sampling_A_per_px
        resample = abs(factor - 1) > 0.02
        if not resample:
            return frames, list(frames), False
        shapes = [tuple(max(8, round(side * factor)) for side in frame.shape) for frame in frames]
        return frames, [resize(f, shape, order=1, preserve_range=True).astype(np.float32) for f, shape in zip(frames, shapes)], True

    def predict(
        self, images: np.ndarray, sampling_A_per_px: float | None = None, tile_px: int = 512, overlap_px: int = 32, precision: str = "auto"
    ) -> Prediction:
        """Per-pixel mean, variance, entropy and mutual information for an image (H, W) or a stack (n, H, W).

        When ``sampling_A_per_px`` is given and differs from the training pixel size
        by more than 2 %, each frame is resampled to the training pixel size, predicted,
        and the maps are resampled back: the result is always in the input's pixels.
        """
        frames, work_frames, resampled = self._working_frames(images, sampling_A_per_px)
        results = []
        for frame, work in zip(frames, work_frames):
            members = self._predict_frame(work, tile_px, overlap_px, precision)
            if resampled:
                members = np.stack([resize(m, frame.shape, order=1, preserve_range=True) for m in members]).clip(0, 1).astype(np.float32)
            results.append(members)
        stacked = np.stack(results, axis=1)  # (N, n, H, W)
        return uncertainty_maps(stacked[:, 0] if np.ndim(images) == 2 else stacked, check_sampling(sampling_A_per_px))

    @torch.inference_mode()
    def features(self, images: np.ndarray, sampling_A_per_px: float | None = None, tile_px: int = 512, precision: str = "auto") -> np.ndarray:
        """Each frame's summary in the members' feature space, (n frames, members x channels).

        Every member's bottleneck activations, averaged over the frame (at the training pixel
        size, in equal tiles of at most ``tile_px`` for large frames, weighted by tile area). Frames
        that look alike to the networks lie close together: :class:`elit_utils.ood.ShiftDetector`
        measures how far a frame lies from the source frames.
        """
        _, work_frames, _ = self._working_frames(images, sampling_A_per_px)
        bf16 = use_bf16(precision, self.device)
        tile = tile_px - tile_px % 8
        summaries = []
        for work in work_frames:
            pooled, weights = [], []
            row_parts = np.array_split(np.arange(work.shape[0]), -(-work.shape[0] // tile))  # equal tiles, none a thin strip
            col_parts = np.array_split(np.arange(work.shape[1]), -(-work.shape[1] // tile))
            for rows in row_parts:
                for cols in col_parts:
                    piece = work[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
                    padded = np.pad(piece, ((0, -piece.shape[0] % 8), (0, -piece.shape[1] % 8)), mode="reflect")
                    x = torch.from_numpy(np.ascontiguousarray(padded))[None, None].to(self.device)
                    with _autocast(self.device, bf16):
                        per_pack = [net.bottleneck_features(x.expand(1, net.n_members, *padded.shape).contiguous()) for net in self.packs]
                    pooled.append(torch.cat(per_pack, dim=1).float().reshape(-1).cpu().numpy())
                    weights.append(piece.size)
            summaries.append(np.average(pooled, axis=0, weights=weights))
        return np.array(summaries)


# --------------------------------------------------------------------------- profiles


def profile_training(profile: str | object | None = None) -> tuple[UnetArchitecture, TrainingConfig]:
    """The U-Net and training settings of a run profile.

    >>> architecture, config = profile_training("paper")
    >>> architecture.nb_filters, config.n_iterations, config.batch_size
    (16, 2000, 32)
    """
    from .config import get_profile

    chosen = get_profile(profile)
    architecture = UnetArchitecture(nb_filters=chosen.unet_base_filters)
    config = TrainingConfig(n_iterations=chosen.n_iterations, batch_size=chosen.batch_size, swa_iterations=chosen.swa_iterations)
    return architecture, config


def cached_ensemble(
    profile: str | object | None = None, domain: str = "source", seed: int = 0, n_members: int | None = None, progress: bool = True
) -> Ensemble:
    """The profile's ensemble trained on ``domain``: loaded from the cache, finished, or trained.

    Lives in ``<cache>/ensembles/<domain>-<profile>-<hash>/``; an interrupted
    training resumes there with the finished members.
    """
    from .cache import cache_dir
    from .config import config_hash, get_profile
    from .simulate import dataset

    chosen = get_profile(profile)
    architecture, config = profile_training(chosen)
    members = n_members or chosen.n_members
    data = dataset(domain, n=chosen.n_train_images, seed=seed, image_size_px=chosen.image_size_px)
    key = config_hash({"architecture": architecture, "training": config, "data": [domain, chosen.n_train_images, chosen.image_size_px, seed]})
    folder = cache_dir() / "ensembles" / f"{domain}-{chosen.name}-{key}"
    sampling = data.conditions.sampling_A_per_px
    return train_ensemble(data.images, data.atom_mask, folder, members, sampling, architecture, config, first_seed=1000 * seed, progress=progress)
