"""Train an ensemble of U-Nets that differ only by seed; predict with uncertainty.

Training (:func:`train_ensemble`): each member is an atomai ``Unet`` initialised
from its own seed, trained on its own batch order and augmentation stream with
Adam and binary cross-entropy (optionally plus Dice), and its weights averaged
over the final iterations (stochastic weight averaging). Members are trained in
*packs* (:class:`~elit_utils.unet.PackedUnet`): on a GPU all members go in one
pack; on a CPU one member per pack is faster (grouped convolutions are slow in
the CPU backward pass; measured in ``benchmarks/bench_ensemble.py``). The forward
pass runs in the precision the hardware does natively
(:func:`~elit_utils.runtime.native_precision`): bf16 autocast on recent GPUs and
on CPUs with AMX/AVX512-BF16, fp16 autocast with a gradient scaler on older
GPUs (T4, V100), fp32 otherwise.

A model folder checks itself. ``ensemble.json`` lists the intended members (their
seeds), the training configuration and data hash, and, for every finished member,
the sha256 of its weights file and the precision it was trained in. Each member is
written weights first, then its own record (``member_NNNN.json``), then its line in
``ensemble.json``, each file atomically: a run killed at any moment leaves a folder
that :meth:`Ensemble.load` refuses (with the remedy) and that a rerun completes.
:meth:`Ensemble.load` refuses missing, extra, incomplete, swapped or foreign
members and damaged files, each with a :class:`~elit_utils.errors.BadModelFolderError`
naming the file and what to do. Only files named exactly ``member_NNNN.json`` and
``member_NNNN.safetensors`` are members; other ``member_*`` files (a backup
``member_0001_old.safetensors``) are ignored with a note. Loading never unpickles
anything. Training into a folder of another configuration is refused; into one of
another size only with ``resize=True``, which trains the new members or removes
the last ones, and removes the shift detector fitted on the old members.

Prediction (:meth:`Ensemble.predict`): per-pixel mean probability, variance,
predictive entropy and mutual information (the epistemic part), for one image
or a stack, with tiling for large frames and resampling to the training pixel
size.

Two classes (``UnetArchitecture(nb_classes=2)``, masks from :func:`two_class_masks`): each
member has two sigmoid outputs, "atom" (any element: exactly what the one-class network
predicts, so every uncertainty map above is of it) and "Si, given an atom"; the second comes
with the prediction as :attr:`Prediction.class_members` and gives each atom its class
(:func:`elit_utils.locate.locate_atoms`). One class, the paper's, is the default.

Example
-------
>>> import numpy as np, tempfile
>>> images = np.random.rand(4, 32, 32).astype(np.float32); masks = images > 0.9
>>> config = TrainingConfig(n_iterations=2, batch_size=2, swa_iterations=1)
>>> ensemble = train_ensemble(images, masks, tempfile.mkdtemp(), n_members=2, sampling_A_per_px=0.1,
...                           architecture=UnetArchitecture(nb_filters=4), config=config, progress=False)
>>> ensemble.predict(images[0]).mean.shape
(32, 32)
>>> sorted(ensemble.record["seeds"]), len(ensemble.weights_sha256[1])
([0, 1], 64)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import operator
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage.transform import resize

from .augment import Augmentation, augment_batch
from .cache import atomic_path, file_sha256, package_versions, write_json_atomic
from .config import MAX_WORK_PX, SHIFT_DETECTOR_FILE, TRUST_REGIONS_FILE
from .distributed import freed_memory_reused
from .errors import BadImageError, BadModelFolderError, BadValueError
from .io import PLAUSIBLE_SAMPLING_A_PER_PX, check_sampling, normalize_image
from .runtime import PRECISIONS, Precision, default_device, resolve_precision
from .unet import PackedUnet, UnetArchitecture

RECORD_FILE = "ensemble.json"
#: 2: ``ensemble.json`` lists the members (seeds) and their weights' sha256. 1: it did not (still loaded, unverified).
FORMAT_VERSION = 2
#: What every member's record shares with ``ensemble.json``: what makes members of one training.
IDENTITY_KEYS = ("architecture", "training", "data_hash", "sampling_A_per_px", "normalization")
_MEMBER_FILE = re.compile(r"member_(\d+)\.(json|safetensors)")


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
    precision: ``"auto"`` (what the hardware does natively: :func:`~elit_utils.runtime.native_precision`),
        ``"bf16"``, ``"fp16"`` (CUDA GPUs only, with a gradient scaler) or ``"fp32"``. The
        precision actually used is recorded with every member.
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
            raise BadValueError(f"loss={self.loss!r} is not a known loss; use 'bce' or 'bce+dice'.")
        if self.precision not in PRECISIONS:
            raise BadValueError(f"precision={self.precision!r} is not one of {', '.join(map(repr, PRECISIONS))}; use 'auto' to let the hardware decide.")
        for name in ("n_iterations", "batch_size"):
            _whole_number(getattr(self, name), f"TrainingConfig.{name}", minimum=1)
        _whole_number(self.swa_iterations, "TrainingConfig.swa_iterations", minimum=0, maximum=self.n_iterations)
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise BadValueError(f"TrainingConfig.learning_rate={self.learning_rate!r} must be a positive number, e.g. 1e-3.")
        if self.members_per_pack is not None:
            _whole_number(self.members_per_pack, "TrainingConfig.members_per_pack", minimum=1)

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


def _whole_number(value: object, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int, refused (:class:`BadValueError`) when it is not a whole number in range.

    >>> _whole_number(3, "n_members", minimum=1)
    3
    >>> _whole_number(0, "n_members", minimum=1)
    Traceback (most recent call last):
    ...
    elit_utils.errors.BadValueError: n_members=0 must be a whole number >= 1.
    """
    limits = " and ".join(part for part in (f">= {minimum}" if minimum is not None else "", f"<= {maximum}" if maximum is not None else "") if part)
    try:
        number = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        number = None
    if number is None or (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise BadValueError(f"{name}={value!r} must be a whole number{' ' + limits if limits else ''}.")
    return number


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether ``precision`` on ``device`` means bfloat16 autocast (see :func:`~elit_utils.runtime.resolve_precision`).

    >>> use_bf16("fp32", torch.device("cpu"))
    False
    """
    return resolve_precision(precision, device) == "bf16"


def _autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """Autocast to ``precision`` on ``device`` (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@contextlib.contextmanager
def _strict_fp32(device: torch.device) -> object:
    """Plain fp32 arithmetic on ``device``: autocast off (even inside a caller's), and no TF32 in
    convolutions or matrix products (GPUs of compute capability 8.0+ would otherwise round fp32
    to TF32), so that features agree across machines.

    >>> with _strict_fp32(torch.device("cpu")):
    ...     torch.backends.cudnn.allow_tf32, torch.is_autocast_enabled("cpu")
    (False, False)
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice loss of (B, members, classes, H, W) logits: summed over members, averaged over classes."""
    probability = torch.sigmoid(logits).flatten(3)
    target = target.flatten(3)
    overlap = (probability * target).sum(-1)
    return (1 - (2 * overlap + 1) / (probability.sum(-1) + target.sum(-1) + 1)).mean(0).sum() / target.shape[2]


def _member_loss(logits: torch.Tensor, target: torch.Tensor, kind: str, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss summed over members (so each member gets its own gradient) and per member.

    ``logits`` and ``target`` are (B, members, classes, H, W): binary cross-entropy per class
    channel, averaged over pixels and channels. ``weight`` (B, members, 1, H, W), 0/1, leaves
    pixels out of the loss in every channel, e.g. where pseudo-labels are uncertain.
    """
    pixel_loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if weight is None:
        per_member = pixel_loss.flatten(2).mean(dim=(0, 2))
    else:
        weight = weight.expand_as(pixel_loss)
        per_member = (pixel_loss * weight).transpose(0, 1).flatten(1).sum(1) / weight.transpose(0, 1).flatten(1).sum(1).clamp(min=1)
    total = per_member.sum()
    if kind == "bce+dice":
        total = total + _dice_loss(logits, target)
    return total, per_member.detach()


# --------------------------------------------------------------------------- model folders


def _member_name(seed: int) -> str:
    return f"member_{seed:04d}"


def _member_paths(folder: Path, seed: int) -> tuple[Path, Path]:
    """A member's record and weights file."""
    name = _member_name(seed)
    return folder / f"{name}.json", folder / f"{name}.safetensors"


def _note(message: str) -> None:
    print(f"note: {message}")


def _short(error: BaseException) -> str:
    """The first line of an error's message, at most 100 characters (for one-line messages)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 100 else text[:97] + "..."


def _plain(value: object) -> object:
    """``value`` as it reads back from JSON (tuples become lists), for comparisons with records."""
    return json.loads(json.dumps(value))


def _describe_seeds(seeds: list[int]) -> str:
    """``seeds 0-3`` for a run of seeds, else the list.

    >>> _describe_seeds([0, 1, 2, 3]), _describe_seeds([5]), _describe_seeds([0, 2])
    ('seeds 0-3', 'seed 5', 'seeds 0, 2')
    """
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"seeds {seeds[0]}-{seeds[-1]}"
    return "seeds " + ", ".join(map(str, seeds))


def _record(architecture: UnetArchitecture, config: TrainingConfig, data_digest: str, sampling_A_per_px: float) -> dict:
    """What every member of one training shares (:data:`IDENTITY_KEYS`)."""
    return {
        "format_version": FORMAT_VERSION,
        "architecture": architecture.as_dict(),
        "training": config.as_dict(),
        "data_hash": data_digest,
        "sampling_A_per_px": sampling_A_per_px,
        "normalization": {"low_percentile": 1.0, "high_percentile": 99.0},
    }


def _rerun(folder: Path, record: dict) -> str:
    """How to finish or repair ``folder``: the command that wrote it."""
    if isinstance(record.get("training"), dict) and "adapt" in record["training"]:
        return f"rerun elit adapt (or adapt) with the output folder that holds {folder.name}"
    return f"rerun elit train --out {folder} (or train_ensemble into it)"


def _read_json(path: Path, remedy: str) -> dict:
    """A JSON object from ``path``; a :class:`BadModelFolderError` naming the file when it is not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadModelFolderError(f"{path} is not readable JSON ({_short(error)}); {remedy}.") from error
    if not isinstance(data, dict):
        raise BadModelFolderError(f"{path} holds a JSON {type(data).__name__}, not an ELIT Lab record; {remedy}.")
    return data


def _architecture(record: dict, path: Path) -> UnetArchitecture:
    """The U-Net a record describes; a :class:`BadModelFolderError` when it describes none."""
    spec = record.get("architecture")
    try:
        architecture = UnetArchitecture(**{**spec, "layers": tuple(spec["layers"])})
        sizes = (architecture.nb_classes, architecture.nb_filters, *architecture.layers)
        if len(architecture.layers) != 4 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes):
            raise ValueError("sizes must be 4 layer counts and positive whole numbers")
    except (TypeError, KeyError, ValueError) as error:
        raise BadModelFolderError(
            f"{path}: architecture {spec!r} is not a U-Net ELIT Lab builds ({_short(error)}); the file is damaged: restore it or retrain."
        ) from error
    return architecture


def read_record(folder: str | Path) -> dict:
    """The checked ``ensemble.json`` of a model folder.

    Refuses (:class:`~elit_utils.errors.BadModelFolderError`, naming the file) a folder without
    one, invalid JSON, a record without the keys of an ensemble, an unknown format, a pixel size
    that is not a positive number of A/px, and a member list that is not unique whole seeds.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp()); _ = (folder / RECORD_FILE).write_text("{}")
    >>> read_record(folder)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    elit_utils.errors.BadModelFolderError: .../ensemble.json lacks format_version, architecture, ...: not an ELIT Lab model record; ...
    """
    folder = Path(folder)
    path = folder / RECORD_FILE
    if not path.is_file():
        raise BadModelFolderError(f"{folder} has no {RECORD_FILE}: not an ELIT Lab model folder; pass the folder that elit train wrote (its --out).")
    remedy = "the file is damaged: restore it, or train into a new folder"
    record = _read_json(path, remedy)
    missing = [key for key in ("format_version", *IDENTITY_KEYS) if key not in record]
    if missing:
        raise BadModelFolderError(f"{path} lacks {', '.join(missing)}: not an ELIT Lab model record; {remedy}.")
    if record["format_version"] not in (1, FORMAT_VERSION):
        raise BadModelFolderError(
            f"{path} has format_version {record['format_version']!r}, which this ELIT Lab does not read; update ELIT Lab (pip install -U elit-lab) or retrain."
        )
    sampling, (low, high) = record["sampling_A_per_px"], PLAUSIBLE_SAMPLING_A_PER_PX
    if isinstance(sampling, bool) or not isinstance(sampling, (int, float)) or not math.isfinite(sampling) or not low <= sampling <= high:
        raise BadModelFolderError(f"{path}: sampling_A_per_px {sampling!r} is not a pixel size of {low}-{high} A/px; {remedy}.")
    _architecture(record, path)
    if record["format_version"] >= 2:
        seeds, members = record.get("seeds"), record.get("members")
        whole = isinstance(seeds, list) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
        if not whole or not seeds or len(set(seeds)) != len(seeds):
            raise BadModelFolderError(f"{path}: seeds {seeds!r} is not a list of distinct whole seeds; {remedy}.")
        if not isinstance(members, dict) or not all(isinstance(m, dict) and isinstance(m.get("weights_sha256"), str) for m in members.values()):
            raise BadModelFolderError(f"{path}: members must map each finished seed to its weights' sha256; {remedy}.")
    return record


def _scan_member_files(folder: Path) -> tuple[dict[int, list[Path]], list[str]]:
    """The member files of ``folder`` by seed, and the names of other ``member_*`` files (ignored).

    Only exact names count: ``member_0001.json`` and ``member_0001.safetensors``. A backup such as
    ``member_0001_old.safetensors`` is not a member; ``member_01.json``, which would claim seed 1
    beside ``member_0001.json``, is refused as ambiguous.
    """
    found: dict[int, list[Path]] = {}
    ignored = []
    for path in sorted(folder.iterdir()):
        if not path.name.startswith("member_"):
            continue
        match = _MEMBER_FILE.fullmatch(path.name)
        if match is None or not path.is_file():
            ignored.append(path.name)
            continue
        seed = int(match[1])
        canonical = f"{_member_name(seed)}.{match[2]}"
        if path.name != canonical:
            raise BadModelFolderError(f"{path}: a member file of seed {seed} must be named {canonical}; rename it or move it out of {folder}.")
        found.setdefault(seed, []).append(path)
    return found, ignored


def _member_state(folder: Path, record: dict, seed: int) -> tuple[str, dict | None, str | None]:
    """Where member ``seed`` stands: (status, its record, its weights' sha256).

    ``"finished"``: weights, record and ``ensemble.json`` agree; ``"untrained"``: no member record
    (not started, or weights whose record was never written); ``"unrecorded"``: finished, but the
    run stopped before ``ensemble.json`` listed it. Anything inconsistent raises a
    :class:`BadModelFolderError` naming the file and the remedy.
    """
    json_path, weights_path = _member_paths(folder, seed)
    retrain = f"delete {json_path.name} and {_rerun(folder, record)} to retrain it"
    if not json_path.is_file():
        return "untrained", None, None
    if not weights_path.is_file():
        raise BadModelFolderError(f"{json_path} has no weights file {weights_path.name}; {retrain}.")
    member = _read_json(json_path, retrain)
    differs = [key for key in IDENTITY_KEYS if _plain(member.get(key)) != _plain(record[key])]
    if differs:
        raise BadModelFolderError(
            f"{json_path} belongs to another training ({', '.join(differs)} {'differs' if len(differs) == 1 else 'differ'} from {RECORD_FILE}'s); "
            f"move {_member_name(seed)}.json and .safetensors out of {folder}, then {_rerun(folder, record)} to retrain it."
        )
    if member.get("seed") != seed:
        raise BadModelFolderError(f"{json_path} records seed {member.get('seed')!r}, not {seed} (a renamed file?); {retrain}.")
    sha = file_sha256(weights_path)
    if member.get("weights_sha256") not in (None, sha):
        raise BadModelFolderError(
            f"{weights_path} is not the file {json_path.name} describes (sha256 differs: swapped, changed or damaged); restore it, or {retrain}."
        )
    entry = record.get("members", {}).get(str(seed))
    if entry is None:
        return "unrecorded", member, sha
    if entry["weights_sha256"] != sha:
        raise BadModelFolderError(
            f"{weights_path} is not the weights file {RECORD_FILE} records (sha256 differs: swapped, changed or damaged); restore it, or {retrain}."
        )
    return "finished", member, sha


def _extra_member_error(folder: Path, record: dict, path: Path) -> BadModelFolderError:
    return BadModelFolderError(
        f"{path} is not one of this ensemble's members ({RECORD_FILE} lists {_describe_seeds(record['seeds'])}); "
        f"move {path.stem}.* out of {folder} (after an interrupted resize: rerun elit train --resize)."
    )


def _edited_record_error(folder: Path, record: dict, seeds: list[int]) -> BadModelFolderError | None:
    """The error to raise when ``ensemble.json`` disagrees with every member while they agree with each other
    (it was edited or replaced: blame it, not a member); None otherwise, or with fewer than two members to tell."""
    paths = [_member_paths(folder, seed)[0] for seed in seeds]
    try:
        members = [_read_json(path, "") for path in paths if path.is_file()]
    except BadModelFolderError:  # a damaged member file: the member-by-member check names it and its remedy
        return None
    if len(members) < 2:
        return None
    differs = [key for key in IDENTITY_KEYS if _plain(members[0].get(key)) != _plain(record[key])]
    members_agree = all(_plain(m.get(key)) == _plain(members[0].get(key)) for m in members[1:] for key in IDENTITY_KEYS)
    if not differs or not members_agree:
        return None
    return BadModelFolderError(
        f"{folder / RECORD_FILE} disagrees with all {len(members)} members on {', '.join(differs)}, which agree with each other: "
        f"{RECORD_FILE} was edited or replaced; put back what the members record: {_shown(differs, members[0])}."
    )


def _shown(keys: list[str], member: dict, limit: int = 240) -> str:
    """``key = value`` for each key of a member's record, as JSON, shortened to ``limit`` characters."""
    text = "; ".join(f"{key} = {json.dumps(_plain(member.get(key)), sort_keys=True)}" for key in keys)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _verified_members(folder: Path, record: dict) -> dict[int, tuple[dict, str]]:
    """Every member of the folder, checked: seed -> (its record, its weights' sha256), in the record's order."""
    found, ignored = _scan_member_files(folder)
    if ignored:
        _note(f"ignoring {', '.join(ignored[:3])}{' ...' if len(ignored) > 3 else ''} in {folder}: only member_NNNN.json/.safetensors are members.")
    old = record["format_version"] < 2
    if old:
        _note(f"{folder} was written by an older ELIT Lab without weight hashes, so its members are not verified; {_rerun(folder, record)} to record them.")
        seeds = sorted(found)
        if not seeds:
            raise BadModelFolderError(f"{folder} holds no finished members; {_rerun(folder, record)} to train them.")
    else:
        seeds = list(record["seeds"])
        extra = sorted(set(found) - set(seeds))
        if extra:
            raise _extra_member_error(folder, record, found[extra[0]][0])
    edited = _edited_record_error(folder, record, seeds)
    if edited is not None:
        raise edited
    members, untrained = {}, []
    for seed in seeds:
        status, member, sha = _member_state(folder, record, seed)
        json_path, weights_path = _member_paths(folder, seed)
        if status == "untrained" and weights_path.exists():
            raise BadModelFolderError(f"{weights_path} has no {json_path.name}: its training was interrupted; {_rerun(folder, record)} to retrain it.")
        if status == "untrained":
            untrained.append(seed)
        elif status == "unrecorded" and not old:
            raise BadModelFolderError(
                f"{json_path} finished but is not yet listed in {RECORD_FILE} (training was interrupted); "
                f"{_rerun(folder, record)} to list it (nothing is retrained)."
            )
        else:
            members[seed] = (member, sha)
    if untrained:
        names = ", ".join(_member_name(s) for s in untrained[:3]) + (" ..." if len(untrained) > 3 else "")
        raise BadModelFolderError(
            f"{folder} holds {len(members)} of the {len(seeds)} members {RECORD_FILE} lists ({names} not trained yet); "
            f"{_rerun(folder, record)} with the same settings to finish it."
        )
    return members


def _read_weights(path: Path, remedy: str) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (never unpickles); a :class:`BadModelFolderError` naming the file when it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise BadModelFolderError(f"{path} is not a readable safetensors file ({_short(error)}); {remedy}.") from error


def _record_member(folder: Path, seed: int, sha: str, precision: str | None) -> None:
    """List a finished member in ``ensemble.json`` (atomically): the last of its three writes."""
    record = read_record(folder)
    entry = {"weights_sha256": sha} if precision is None else {"weights_sha256": sha, "precision": precision}
    write_json_atomic(folder / RECORD_FILE, {**record, "members": {**record["members"], str(seed): entry}})


def _member_record(identity: dict, seed: int, precision: str, seconds: float, losses: np.ndarray) -> dict:
    """What a finished member's JSON holds besides its weights' hash: the training it belongs to, its seed and run.

    ``torch_threads`` is recorded because CPU sums, hence the weights bit for bit, depend on it: two runs of one
    seed agree exactly only with equal threads (and device)."""
    run = {"precision": precision, "seconds": seconds, "torch_threads": torch.get_num_threads()}
    return {**identity, "seed": seed, **run, "loss_history": losses.tolist(), "versions": package_versions()}


def _save_member(folder: Path, seed: int, state: dict[str, torch.Tensor], member: dict) -> None:
    """Write a finished member: weights, then its record (with the weights' sha256), then its line in
    ``ensemble.json``; each atomically, so that a kill at any moment leaves a folder that loading refuses
    and a rerun completes."""
    from safetensors.torch import save_file

    json_path, weights_path = _member_paths(folder, seed)
    with atomic_path(weights_path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        sha = file_sha256(tmp)
    write_json_atomic(json_path, {**member, "weights_sha256": sha})
    _record_member(folder, seed, sha, member.get("precision"))


def _remove_stale_temporaries(folder: Path) -> None:
    """Half-written files of a killed run (atomic writes that never reached their rename)."""
    for path in folder.glob(".member_*.tmp"):
        path.unlink(missing_ok=True)
    for path in folder.glob(f".{RECORD_FILE}.*.tmp"):
        path.unlink(missing_ok=True)


def check_planned_members(folder: str | Path, n_members: int, first_seed: int = 0, resize: bool = False) -> None:
    """Refuse at once, before any training data is made, a training whose members differ from the
    finished ensemble already in ``folder`` (the same check :func:`train_ensemble` makes).

    >>> import tempfile
    >>> check_planned_members(tempfile.mkdtemp(), 3)  # an empty folder: nothing to compare with
    """
    folder = Path(folder)
    if resize or not (folder / RECORD_FILE).exists():
        return
    existing = read_record(folder)
    found, _ = _scan_member_files(folder)
    seeds = [first_seed + i for i in range(n_members)]
    if found and existing.get("format_version", 0) >= 2 and existing["seeds"] != seeds:
        raise _size_error(folder, existing["seeds"], seeds)


def _size_error(folder: Path, existing: list[int], seeds: list[int]) -> BadModelFolderError:
    if len(existing) != len(seeds):
        return BadModelFolderError(
            f"{folder} holds an ensemble of {len(existing)} members ({_describe_seeds(existing)}), not {len(seeds)}; to change its size pass "
            "resize=True (elit train --resize: it trains the new members or removes the last ones, and the shift detector is refitted), "
            "or choose another output folder (nothing was changed)."
        )
    return BadModelFolderError(
        f"{folder} holds {_describe_seeds(existing)}, not {_describe_seeds(seeds)} (another --seed?); choose another output folder (nothing was changed)."
    )


def _claim_folder(folder: Path, identity: dict, seeds: list[int], resize: bool = False) -> dict:
    """Write the folder's record for a training of ``seeds``, or check that the folder holds the same
    training; with ``resize``, change its member list to ``seeds``. Returns the record.

    A folder whose record is of another configuration, or of other members, is refused, unless it
    holds no member files yet (an earlier start that failed before finishing any member): then it
    is taken over, since nothing is lost.
    """
    path = folder / RECORD_FILE
    found, _ = _scan_member_files(folder)
    fresh = {**identity, "format_version": FORMAT_VERSION, "seeds": seeds, "members": {}}
    if not path.exists():
        if found:
            raise BadModelFolderError(f"{folder} holds member files but no {RECORD_FILE}: not a training this can resume; choose another output folder.")
        write_json_atomic(path, fresh)
        return fresh
    existing = read_record(folder)
    differs = [key for key in IDENTITY_KEYS if _plain(existing[key]) != _plain(identity[key])]
    if not found:
        if differs or existing.get("seeds") != seeds:
            write_json_atomic(path, fresh)
            return fresh
        return existing
    if differs:
        raise BadModelFolderError(
            f"{folder} holds an ensemble trained with a different configuration ({', '.join(differs)} {'differs' if len(differs) == 1 else 'differ'}); "
            "choose another output folder (nothing was overwritten)."
        )
    upgrade = existing["format_version"] < 2
    if upgrade:  # written before records listed their members: its finished members are adopted
        finished = sorted(found)
        existing = {**existing, "format_version": FORMAT_VERSION, "seeds": seeds if set(finished) <= set(seeds) else finished, "members": {}}
    if existing["seeds"] != seeds:
        if not resize:
            raise _size_error(folder, existing["seeds"], seeds)
        if seeds[0] != existing["seeds"][0]:
            raise BadModelFolderError(
                f"{folder} holds {_describe_seeds(existing['seeds'])}; a resize keeps the first seed, but {_describe_seeds(seeds)} were asked for "
                "(another --seed?); choose another output folder (nothing was changed)."
            )
        for fitted in (SHIFT_DETECTOR_FILE, TRUST_REGIONS_FILE):  # fitted on the old members: refitted after the resize
            (folder / fitted).unlink(missing_ok=True)
        existing = {**existing, "seeds": seeds, "members": {k: v for k, v in existing["members"].items() if int(k) in seeds}}
    elif not (resize or upgrade):
        return existing
    write_json_atomic(path, existing)  # the new member list first, then the files of members no longer in it
    for seed, paths in found.items():
        if seed not in seeds:
            for member_file in sorted(paths, key=lambda p: p.suffix != ".json"):
                member_file.unlink(missing_ok=True)
    return existing


def _members_to_train(folder: Path, record: dict) -> list[int]:
    """The seeds of ``record`` still to train; finished members that ``ensemble.json`` does not list
    yet (a run stopped between the last two writes) are listed, not retrained."""
    found, _ = _scan_member_files(folder)
    extra = sorted(set(found) - set(record["seeds"]))
    if extra:
        raise _extra_member_error(folder, record, found[extra[0]][0])
    todo = []
    for seed in record["seeds"]:
        status, member, sha = _member_state(folder, record, seed)
        if status == "untrained":
            todo.append(seed)
        elif status == "unrecorded":
            _record_member(folder, seed, sha, member.get("precision"))
    return todo


# --------------------------------------------------------------------------- training


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

    ``masks`` are (n, classes, H, W), one channel per output class of ``architecture``.
    With ``initial_states`` the members start from those weights (fine-tuning) instead of
    their seeded initialisation; ``weights`` (n, 1, H, W) masks pixels out of the loss (every class);
    ``stream`` selects another random stream for batches and augmentation;
    ``freeze_batch_norm`` keeps the batch-norm statistics of ``initial_states`` (fine-tuning).
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    if masks.shape[1] != architecture.nb_classes:
        raise BadValueError(f"masks have {masks.shape[1]} channels for a U-Net of {architecture.nb_classes} classes; give one mask channel per class.")
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
    precision = resolve_precision(config.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")  # fp16's small range: scale the loss so small gradients survive
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
        y = torch.stack(batch_y, dim=1)  # (B, members, classes (+ 1), H, W): the masks, and the loss weight if any
        with _autocast(device, precision):
            logits = net(x)
        classes = architecture.nb_classes
        weight = y[:, :, classes:] if weights is not None else None
        loss, per_member = _member_loss(logits.float(), y[:, :, :classes], config.loss, weight)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # without fp16 the scaler passes everything through unchanged
        scaler.step(optimizer)
        scaler.update()
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
    resize: bool = False,
    client: object | None = None,
) -> Ensemble:
    """Train (or finish training) an ensemble into ``out_dir`` and return it.

    ``images`` (n, H, W) are raw intensities (normalised here, per image, as at
    prediction); ``masks`` (n, H, W) are the atom masks (bool or 0/1). For a two-class
    architecture (``UnetArchitecture(nb_classes=2)``) ``masks`` are (n, 2, H, W): the atom mask
    (any element: channel 0 means what the one-class network's output means) and the Si mask
    (channel 1: "Si, given an atom"), e.g. ``np.stack([data.atom_mask, data.label_mask == 2], axis=1)``
    of a :class:`~elit_utils.simulate.SimulatedDataset`. H and W must be multiples of 8. Members have seeds ``first_seed .. first_seed + n_members - 1``.

    A folder that already holds this training resumes it: finished members are kept. A
    folder of another configuration is refused, and so is one of another number of members
    unless ``resize`` is True: then the new members are trained, or the last ones removed
    (the record is rewritten first), and the shift detector fitted on the old members is
    deleted, so that ``elit train`` (or :func:`~elit_utils.ood.ensure_shift_detector`) refits it.

    With a Dask ``client`` (``dask.distributed.Client``; :func:`elit_utils.distributed.client_for`)
    each member still to train is one task: a worker trains it alone, seeded as in this process,
    with as many torch threads as the worker has, and writes it into ``out_dir`` (which workers
    must see: a shared file system on a cluster) with the same atomic writes. On a CPU its weights
    are bit-identical to the serial run's with the same number of torch threads (CPU sums depend
    on the thread count). A task whose worker dies is run again on another worker, one that raises
    up to :data:`TASK_RETRIES` times; finished members are never retrained, and the folder is
    claimed here, in this process, as without a client.
    """
    architecture = architecture or UnetArchitecture()
    config = config or TrainingConfig()
    n_members = _whole_number(n_members, "n_members", minimum=1)
    first_seed = _whole_number(first_seed, "first_seed", minimum=0)
    images, masks = _check_training_data(images, masks, architecture.nb_classes)
    sampling = check_sampling(sampling_A_per_px)
    device = default_device(device)
    precision = resolve_precision(config.precision, device)  # refused here, before the folder is touched
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(folder)
    seeds = [first_seed + i for i in range(n_members)]
    record = _claim_folder(folder, _record(architecture, config, data_hash(images, masks), sampling), seeds, resize)
    todo = _members_to_train(folder, record)
    if 0 < len(todo) < len(seeds) and progress:
        print(f"Resuming: {len(seeds) - len(todo)} of {len(seeds)} members already trained in {folder}; training the other {len(todo)}")
    pack = config.members_per_pack or (len(todo) if device.type == "cuda" else 1)
    x = torch.from_numpy(normalize_image(images))[:, None]
    y = torch.from_numpy(masks.astype(np.float32)).reshape(len(masks), architecture.nb_classes, *masks.shape[-2:])
    identity = {key: record[key] for key in ("format_version", *IDENTITY_KEYS)}
    if client is not None:
        _train_members_as_tasks(client, x, y, folder, todo, architecture, config, identity, device)
        return Ensemble.load(folder, device=device)
    torch.set_num_threads(os.cpu_count() or 1)
    for start in range(0, len(todo), max(pack, 1)):
        group = todo[start : start + pack]
        net, history, seconds = _train_pack(x, y, group, architecture, config, device, progress)
        for index, seed in enumerate(group):
            _save_member(folder, seed, net.member_state_dict(index), _member_record(identity, seed, precision, seconds / len(group), history[:, index]))
    return Ensemble.load(folder, device=device)


#: How often a member's task that raised is run again (a worker that dies is handled by Dask's
#: ``distributed.scheduler.allowed-failures``: its tasks go to other workers, up to 3 deaths each).
TASK_RETRIES = 2


def _train_members_as_tasks(
    client: object,
    x: torch.Tensor,
    y: torch.Tensor,
    folder: Path,
    seeds: list[int],
    architecture: UnetArchitecture,
    config: TrainingConfig,
    identity: dict,
    device: torch.device,
) -> None:
    """Train ``seeds`` on the workers of a Dask ``client``, one member per task; wait for all (the first error is raised)."""
    from distributed import wait

    run = hashlib.sha256(f"{folder.resolve()}{time.time_ns()}".encode()).hexdigest()[:8]
    # the data as a task, not scattered: a worker fetches it once from another, and when the workers holding
    # it die, Dask makes it again from the task (scattered data would be lost, and with it every member's task)
    data = client.submit(_training_data, x, y, key=f"training-data-{run}")
    task = (architecture, config, identity, device.type)
    futures = [client.submit(_train_member_task, data, folder, seed, *task, key=f"train-member-{seed:04d}-{run}", retries=TASK_RETRIES) for seed in seeds]
    wait(futures)
    for future in futures:
        future.result()  # raises the first task's error here, with its worker's traceback


def _training_data(images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training tensors, as a Dask task's result (see :func:`_train_members_as_tasks`)."""
    return images, masks


def _train_member_task(
    data: tuple[torch.Tensor, torch.Tensor], folder: Path, seed: int, architecture: UnetArchitecture, config: TrainingConfig, identity: dict, device_type: str
) -> int:
    """On a Dask worker: train member ``seed`` alone with all the worker's threads (:func:`torch_on_worker`), and write it into ``folder``.

    ``ensemble.json`` is rewritten under a cluster-wide lock (its writes read, add one line and
    replace the file: two workers at once would lose a line).
    """
    from distributed import Lock

    device = default_device(device_type)
    precision = resolve_precision(config.precision, device)
    with torch_on_worker():
        net, history, seconds = _train_pack(*data, [seed], architecture, config, device, progress=False)
        member = _member_record(identity, seed, precision, seconds, history[:, 0])  # with the threads it was trained with
    with Lock(f"elit-model-folder:{folder.resolve()}"):
        _save_member(folder, seed, net.member_state_dict(0), member)
    return seed


def _check_training_data(images: np.ndarray, masks: np.ndarray, nb_classes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Training images as float32 and their masks as bool, refused (:class:`BadImageError`) when their shapes
    do not fit each other or the U-Net's ``nb_classes`` (one class: masks (n, H, W); two: (n, 2, H, W)).

    >>> _check_training_data(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)), nb_classes=2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    elit_utils.errors.BadImageError: a U-Net of 2 classes needs masks (n, 2, H, W) ...
    """
    images = np.asarray(images, np.float32)
    masks = np.asarray(masks)
    if images.ndim != 3:
        raise BadImageError(f"training images must be (n, H, W), got {images.shape}")
    if nb_classes == 1 and masks.shape != images.shape:
        hint = " (per-class masks: train with UnetArchitecture(nb_classes=2))" if masks.shape == (len(images), 2, *images.shape[1:]) else ""
        raise BadImageError(f"images and masks must both be (n, H, W) and equal in shape, got {images.shape} and {masks.shape}{hint}")
    if nb_classes > 1 and masks.shape != (len(images), nb_classes, *images.shape[1:]):
        raise BadImageError(
            f"a U-Net of {nb_classes} classes needs masks (n, {nb_classes}, H, W) for images {images.shape}, got {masks.shape}; "
            "stack the atom mask and the Si mask, e.g. np.stack([data.atom_mask, data.label_mask == 2], axis=1)."
        )
    if images.shape[1] % 8 or images.shape[2] % 8 or min(images.shape) == 0:
        raise BadImageError(f"training image sides must be multiples of 8 (three 2x poolings), got {images.shape[1:]}; crop or pad them.")
    if not np.isfinite(images).all():
        raise BadImageError("training images contain NaN or inf; clean them before training.")
    if not np.isin(np.unique(masks), (0, 1)).all():
        raise BadImageError("masks must hold only 0 and 1 (or False and True)")
    return images, masks.astype(bool)


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
    class_members: for a two-class ensemble, each member's probability of "Si, given an atom"
        (the members' shape); None for one class.
    """

    mean: np.ndarray
    variance: np.ndarray
    entropy: np.ndarray
    mutual_information: np.ndarray
    members: np.ndarray
    sampling_A_per_px: float | None
    class_members: np.ndarray | None = None

    @property
    def si_probability(self) -> np.ndarray | None:
        """Mean over members of the probability of "Si, given an atom" (None for one class).

        >>> uncertainty_maps(np.zeros((2, 4, 4)), 0.1, class_members=np.full((2, 4, 4), 0.8)).si_probability[0, 0]
        np.float32(0.8)
        """
        return None if self.class_members is None else self.class_members.mean(axis=0)

    def frame(self, index: int) -> Prediction:
        """The prediction of frame ``index`` of a stack.

        >>> uncertainty_maps(np.random.rand(3, 2, 8, 8), 0.1).frame(1).mean.shape
        (8, 8)
        """
        if self.mean.ndim != 3:
            raise ValueError(f"this prediction is of one frame {self.mean.shape}, not a stack")
        classes = None if self.class_members is None else self.class_members[:, index]
        return uncertainty_maps(self.members[:, index], self.sampling_A_per_px, classes)


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -(p * np.log(p) + (1 - p) * np.log1p(-p))


def uncertainty_maps(members: np.ndarray, sampling_A_per_px: float | None = None, class_members: np.ndarray | None = None) -> Prediction:
    """Mean, variance, entropy and mutual information from member probabilities (N, ...) of "atom";
    ``class_members`` (the same shape), a two-class ensemble's probabilities of "Si, given an atom", ride along.

    >>> agree = uncertainty_maps(np.array([[0.9], [0.9]]))
    >>> disagree = uncertainty_maps(np.array([[0.99], [0.01]]))
    >>> float(agree.mutual_information[0]) < 1e-6 < float(disagree.mutual_information[0])
    True
    """
    members = np.asarray(members, np.float32)
    mean = members.mean(axis=0)
    entropy = _binary_entropy(mean)
    information = np.clip(entropy - _binary_entropy(members).mean(axis=0), 0, None)
    classes = None if class_members is None else np.asarray(class_members, np.float32)
    if classes is not None and classes.shape != members.shape:
        raise ValueError(f"class_members {classes.shape} must have the members' shape {members.shape}")
    return Prediction(mean, members.var(axis=0), entropy.astype(np.float32), information.astype(np.float32), members, sampling_A_per_px, classes)


def _padded_to_8(image: np.ndarray) -> np.ndarray:
    """``image`` reflected at its bottom and right edges up to sides that are multiples of 8 (three 2x poolings).

    >>> _padded_to_8(np.zeros((10, 16))).shape
    (16, 16)
    """
    return np.pad(image, ((0, -image.shape[0] % 8), (0, -image.shape[1] % 8)), mode="reflect")


def _blend_window(size: int, overlap: int) -> np.ndarray:
    """Weights that fall smoothly to near zero over ``overlap`` px at the tile edges."""
    ramp = np.ones(size, np.float32)
    if overlap > 0:
        edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)
        ramp[:overlap] = edge
        ramp[-overlap:] = edge[::-1]
    return np.outer(ramp, ramp) + 1e-6


def checked_images(images: np.ndarray, what: str = "predict") -> np.ndarray:
    """An image (H, W) or a stack (n, H, W) as float32, refused (:class:`BadImageError`) when no
    U-Net should see it: not numbers (bool masks, complex, text), empty, an RGB(A) colour image
    (H, W, 3|4), sides under 8 px, NaN or inf, or a constant frame.

    A stack of three frames is (3, H, W); an array whose *last* axis is 3 or 4 long is a colour
    image and is refused rather than guessed at: convert it to one channel first.

    >>> checked_images(np.arange(64).reshape(8, 8)).dtype
    dtype('float32')
    >>> checked_images(np.zeros((32, 32, 3)))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    elit_utils.errors.BadImageError: predict got an array of shape (32, 32, 3), which looks like an RGB(A) colour image; pass one channel ...
    """
    try:
        array = np.asarray(images)
    except ValueError as error:  # a list of frames of different sizes
        raise BadImageError(f"{what} got frames of different shapes ({_short(error)}); pass them one at a time, or as one (n, H, W) stack.") from error
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        hints = {"c": "the magnitude np.abs(image)", "b": "intensities (a mask is not an image)", "O": "numbers (frames of different sizes: one at a time)"}
        hint = hints.get(array.dtype.kind, "numbers")
        raise BadImageError(f"{what} got an array of dtype {array.dtype}; pass {hint} as integers or floats.")
    if array.ndim == 3 and array.shape[-1] in (3, 4) and array.shape[0] > 4:
        raise BadImageError(
            f"{what} got an array of shape {array.shape}, which looks like an RGB(A) colour image; "
            "pass one channel (e.g. image[..., 0] or image.mean(axis=-1)); a stack of frames is (n, H, W)."
        )
    if array.ndim == 3 and array.shape[-1] == 1 and array.shape[0] > 4:
        raise BadImageError(f"{what} got an array of shape {array.shape}: a channel axis? pass image[..., 0]; a stack of frames is (n, H, W).")
    if array.ndim not in (2, 3):
        raise BadImageError(f"{what} expects an image (H, W) or a stack (n, H, W), got shape {array.shape}.")
    if array.size == 0 or min(array.shape[-2:]) < 8:
        raise BadImageError(f"{what} got an image of shape {array.shape}: too small (the U-Nets need at least 8 px a side).")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise BadImageError(f"the image given to {what} contains NaN or inf; clean it first (e.g. np.nan_to_num).")
    frames = array.reshape(-1, *array.shape[-2:])
    flat = np.flatnonzero(frames.max(axis=(1, 2)) == frames.min(axis=(1, 2)))
    if len(flat):
        where = "the image" if array.ndim == 2 else f"frame {flat[0]} of the stack"
        raise BadImageError(
            f"{where} given to {what} is constant (every pixel {frames[flat[0]].flat[0]:g}): it holds no atoms; check the acquisition or leave it out."
        )
    return array


def _check_tiling(tile_px: int, overlap_px: int) -> tuple[int, int]:
    """Checked tile size (a multiple of 8, at least 16 px) and overlap (0 to less than half the tile).

    >>> _check_tiling(512, 32)
    (512, 32)
    """
    tile = _whole_number(tile_px, "tile_px", minimum=16)
    if tile % 8:
        raise BadValueError(f"tile_px={tile_px} must be a multiple of 8 (the U-Net halves the image three times), e.g. {tile - tile % 8}.")
    overlap = _whole_number(overlap_px, "overlap_px", minimum=0, maximum=tile // 2 - 1)
    return tile, overlap


class Ensemble:
    """A trained ensemble: members, their record, and prediction with uncertainty.

    Attributes
    ----------
    folder: the model folder it was loaded from.
    seeds: the members' seeds.
    record: the folder's ``ensemble.json`` with ``members`` mapping each seed (a string) to its
        ``member_NNNN.json`` (seed, precision used, loss history, weights' sha256, versions).
    weights_sha256: seed -> sha256 of the member's weights file (what a shift detector records).
    sampling_A_per_px: the pixel size the members were trained at.
    """

    def __init__(
        self, packs: list[PackedUnet], seeds: list[int], record: dict, device: torch.device, folder: Path, weights_sha256: dict[int, str] | None = None
    ) -> None:
        self.folder = folder
        self.packs = packs
        self.seeds = seeds
        self.record = record
        self.device = device
        self.weights_sha256 = weights_sha256 or {}
        self.sampling_A_per_px: float = record["sampling_A_per_px"]

    @property
    def n_members(self) -> int:
        """Number of members."""
        return len(self.seeds)

    @property
    def n_classes(self) -> int:
        """Output classes of the members: 1 ("atom", the paper's), or 2 ("atom" and "Si, given an atom")."""
        return int(self.record["architecture"]["nb_classes"])

    @property
    def precisions(self) -> dict[int, str | None]:
        """The precision each member was trained in (``"bf16"``, ``"fp16"``, ``"fp32"``; None: not recorded)."""
        return {seed: self.record["members"][str(seed)].get("precision") for seed in self.seeds}

    def loss_histories(self) -> np.ndarray:
        """Training loss per iteration and member, (iterations, N)."""
        return np.array([self.record["members"][str(seed)]["loss_history"] for seed in self.seeds]).T

    @classmethod
    def load(
        cls, folder: str | Path, seeds: list[int] | None = None, device: str | torch.device | None = None, members_per_pack: int | None = None
    ) -> Ensemble:
        """Load the members of ``folder`` (all, or those of ``seeds``) without unpickling.

        The whole folder is checked first: every member ``ensemble.json`` lists must be there,
        finished and unchanged (weights matching their recorded sha256), of the same training,
        and no other member files may be present. Anything else raises a
        :class:`~elit_utils.errors.BadModelFolderError` naming the file and the remedy.
        """
        folder = Path(folder)
        record = read_record(folder)
        members = _verified_members(folder, record)
        chosen = _chosen_seeds(seeds, list(members), folder)
        architecture = _architecture(record, folder / RECORD_FILE)
        states = []
        for seed in chosen:
            json_path, weights_path = _member_paths(folder, seed)
            states.append(_read_weights(weights_path, f"delete {json_path.name} and {_rerun(folder, record)} to retrain it"))
        device = default_device(device)
        pack = _whole_number(members_per_pack, "members_per_pack", minimum=1) if members_per_pack is not None else len(chosen) if device.type == "cuda" else 1
        packs = []
        for start in range(0, len(chosen), pack):
            net = PackedUnet(len(states[start : start + pack]), architecture)
            try:
                net.load_members(states[start : start + pack])
            except ValueError as error:
                name = _member_name(chosen[start])
                raise BadModelFolderError(
                    f"{folder}: a member of {name}.. does not fit the ensemble's architecture ({_short(error)}); "
                    f"delete its .json and {_rerun(folder, record)} to retrain it."
                ) from error
            packs.append(net.to(device).to(memory_format=torch.channels_last).eval())
        loaded = {**record, "members": {str(seed): members[seed][0] for seed in chosen}}
        return cls(packs, chosen, loaded, device, folder, {seed: members[seed][1] for seed in chosen})

    def subset(self, n_members: int) -> Ensemble:
        """The first ``n_members`` members as an ensemble of their own (e.g. one model, for a single-network baseline)."""
        if isinstance(n_members, bool) or not isinstance(n_members, (int, np.integer)) or not 1 <= n_members <= self.n_members:
            raise BadValueError(f"n_members must be between 1 and {self.n_members}, got {n_members!r}")
        return Ensemble.load(self.folder, seeds=self.seeds[:n_members], device=self.device)

    def _packed_input(self, image: np.ndarray, net: PackedUnet) -> torch.Tensor:
        """One normalised image (sides multiples of 8) as a pack's input: every member sees it, channels last."""
        x = torch.from_numpy(np.ascontiguousarray(image))[None, None].to(self.device)
        return x.expand(1, net.n_members, *image.shape).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def _member_probabilities(self, image: np.ndarray, precision: Precision) -> np.ndarray:
        """(N, classes, H, W) probabilities for one normalised image whose sides are multiples of 8 (fp32: strict, no TF32)."""
        outputs = []
        for net in self.packs:
            with _strict_fp32(self.device) if precision == "fp32" else _autocast(self.device, precision):
                logits = net(self._packed_input(image, net))
            outputs.append(torch.sigmoid(logits.float())[0])
        return torch.cat(outputs).cpu().numpy()

    @torch.inference_mode()
    def _tile_features(self, image: np.ndarray) -> np.ndarray:
        """Every member's bottleneck averaged over one normalised image whose sides are multiples of 8,
        (members x channels,), in strict fp32: the encoder only."""
        with _strict_fp32(self.device):
            per_pack = [net.bottleneck_features(self._packed_input(image, net)) for net in self.packs]
        return torch.cat(per_pack, dim=1).float().reshape(-1).cpu().numpy()

    @torch.inference_mode()
    def _members_and_features(self, image: np.ndarray, precision: Precision) -> tuple[np.ndarray, np.ndarray]:
        """What :meth:`_member_probabilities` and :meth:`_tile_features` give for one normalised image whose
        sides are multiples of 8, from one pass of the members: the bottleneck is read on its way through
        the full network (a forward hook). In fp32 (strict) it is the tensor the encoder-only pass
        averages, so the features are identical; in bf16 or fp16 they are that precision's."""
        outputs, pooled = [], []
        with _strict_fp32(self.device) if precision == "fp32" else _autocast(self.device, precision):
            for net in self.packs:
                hook = net.bn.register_forward_hook(lambda _module, _inputs, bottom: pooled.append(bottom.float().mean(dim=(-2, -1))))
                try:
                    logits = net(self._packed_input(image, net))
                finally:
                    hook.remove()
                outputs.append(torch.sigmoid(logits.float())[0])
        return torch.cat(outputs).cpu().numpy(), torch.cat(pooled, dim=1).float().reshape(-1).cpu().numpy()

    def _predict_frame(self, image: np.ndarray, tile: int, overlap_px: int, precision: Precision) -> np.ndarray:
        """Members' probabilities (N, classes, H, W) for one normalised frame of any size, tiled with smooth blending."""
        height, width = image.shape
        if max(height, width) <= tile:
            return self._member_probabilities(_padded_to_8(image), precision)[..., :height, :width]
        step = tile - overlap_px
        padded = np.pad(image, ((0, max(tile - height, 0)), (0, max(tile - width, 0))), mode="reflect")
        total = np.zeros((self.n_members, self.n_classes, *padded.shape), np.float32)
        weight = np.zeros(padded.shape, np.float32)
        window = _blend_window(tile, overlap_px)
        rows = sorted({*range(0, padded.shape[0] - tile, step), padded.shape[0] - tile})
        cols = sorted({*range(0, padded.shape[1] - tile, step), padded.shape[1] - tile})
        for r in rows:
            for c in cols:
                total[..., r : r + tile, c : c + tile] += self._member_probabilities(padded[r : r + tile, c : c + tile], precision) * window
                weight[r : r + tile, c : c + tile] += window
        return (total / weight)[..., :height, :width]

    def _frame_features(self, image: np.ndarray, tile: int) -> np.ndarray:
        """One normalised frame's features: :meth:`_tile_features` of equal tiles of at most ``tile`` px
        (none a thin strip), averaged weighted by tile area."""
        row_parts = np.array_split(np.arange(image.shape[0]), -(-image.shape[0] // tile))
        col_parts = np.array_split(np.arange(image.shape[1]), -(-image.shape[1] // tile))
        pieces = [image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] for rows in row_parts for cols in col_parts]
        return np.average([self._tile_features(_padded_to_8(piece)) for piece in pieces], axis=0, weights=[piece.size for piece in pieces])

    def _working_frames(self, array: np.ndarray, sampling_A_per_px: float | None) -> tuple[np.ndarray, list[np.ndarray], bool]:
        """Normalised frames (n, H, W) of a checked image or stack, each resampled to the training
        pixel size, and whether resampling was needed (the pixel size differs by more than 2 %)."""
        sampling = check_sampling(sampling_A_per_px)
        frames = normalize_image(array[None] if array.ndim == 2 else array)
        factor = 1.0 if sampling is None else sampling / self.sampling_A_per_px
        resample = abs(factor - 1) > 0.02
        if not resample:
            return frames, list(frames), False
        shapes = [tuple(max(8, round(side * factor)) for side in frame.shape) for frame in frames]
        largest = max(shapes, key=lambda shape: shape[0] * shape[1])
        if largest[0] * largest[1] > MAX_WORK_PX:
            side = math.isqrt(MAX_WORK_PX)
            raise BadValueError(
                f"at the training pixel size ({self.sampling_A_per_px:g} A/px) a frame of {sampling:g} A/px would be {largest[0]}x{largest[1]} px, "
                f"over the limit of {side}x{side} px; check sampling_A_per_px (in A/px), or crop or bin the frame first."
            )
        return frames, [resize(f, shape, order=1, preserve_range=True).astype(np.float32) for f, shape in zip(frames, shapes)], True

    def _analysed(
        self,
        images: np.ndarray,
        what: str,
        sampling_A_per_px: float | None,
        tile_px: int,
        overlap_px: int,
        precision: str,
        with_features: bool,
        shared_pass: bool = False,
    ) -> tuple[Prediction, np.ndarray | None]:
        """The work of :meth:`predict` and, ``with_features``, :meth:`analyse`: each frame normalised and resampled once."""
        array = checked_images(images, what)
        tile, overlap = _check_tiling(tile_px, overlap_px)
        chosen = resolve_precision(precision, self.device)
        frames, work_frames, resampled = self._working_frames(array, sampling_A_per_px)
        results, summaries = [], []
        for frame, work in zip(frames, work_frames):
            if with_features and (chosen == "fp32" or shared_pass) and max(work.shape) <= tile:  # one pass gives both
                members, summary = self._members_and_features(_padded_to_8(work), chosen)
                members = members[..., : work.shape[0], : work.shape[1]]
                summaries.append(summary.astype(np.float64))
            else:
                members = self._predict_frame(work, tile, overlap, chosen)
                if with_features:
                    summaries.append(self._frame_features(work, tile))
            if resampled:
                maps = [resize(m, frame.shape, order=1, preserve_range=True) for m in members.reshape(-1, *members.shape[-2:])]
                members = np.stack(maps).reshape(*members.shape[:2], *frame.shape).clip(0, 1).astype(np.float32)
            results.append(members)
        stacked = np.stack(results, axis=1)  # (N, n, classes, H, W)
        if array.ndim == 2:
            stacked = stacked[:, 0]
        atoms, si = np.ascontiguousarray(stacked[..., 0, :, :]), (np.ascontiguousarray(stacked[..., 1, :, :]) if self.n_classes == 2 else None)
        prediction = uncertainty_maps(atoms, check_sampling(sampling_A_per_px), si)
        return prediction, np.array(summaries) if with_features else None

    def predict(
        self, images: np.ndarray, sampling_A_per_px: float | None = None, tile_px: int = 512, overlap_px: int = 32, precision: str = "auto"
    ) -> Prediction:
        """Per-pixel mean, variance, entropy and mutual information for an image (H, W) or a stack (n, H, W).

        When ``sampling_A_per_px`` is given and differs from the training pixel size
        by more than 2 %, each frame is resampled to the training pixel size, predicted,
        and the maps are resampled back: the result is always in the input's pixels.
        Frames larger than ``tile_px`` (a multiple of 8) are predicted in tiles that overlap
        by ``overlap_px`` (less than half a tile). ``precision``: ``"auto"`` (the hardware's
        native precision), ``"bf16"``, ``"fp16"`` (CUDA only) or ``"fp32"`` (plain fp32: no TF32 on GPUs either).
        """
        return self._analysed(images, "predict", sampling_A_per_px, tile_px, overlap_px, precision, with_features=False)[0]

    def analyse(
        self,
        images: np.ndarray,
        sampling_A_per_px: float | None = None,
        tile_px: int = 512,
        overlap_px: int = 32,
        precision: str = "auto",
        shared_pass: bool = False,
    ) -> tuple[Prediction, np.ndarray]:
        """:meth:`predict` and :meth:`features` of the same image or stack in one call, for a live stream.

        Returns what they give (the same options; ``tile_px`` also sizes the feature tiles), each
        frame normalised and resampled once. Where the prediction runs in fp32 and a frame fits in
        one tile, the members run once and the features are read from that pass (the same encoder,
        the same strict fp32: identical values). In bf16 or fp16 the features take their own
        encoder-only fp32 pass, since a full fp32 pass costs more than the two, unless
        ``shared_pass``: then, for frames that fit one tile at the training pixel size, they are read
        from the prediction's own pass in its precision, one pass instead of two (larger frames keep
        strict-fp32 features in their own pass). That saves the encoder pass (213 of 570 ms on a 512 px frame of the quick
        ensemble, 2 AMD EPYC cores), but the features are then bf16's: on quick-ensemble frames the
        shift score moved by at most 0.9 % of the detector's limit, so a frame that close to the limit
        may be flagged on one machine and not on another. It is for live streams, where the score is
        watched as it comes (``elit watch``, :func:`~elit_utils.stream.run_policy`);
        ``benchmarks/bench_stream.py`` measures every way.

        >>> import tempfile
        >>> images = np.random.rand(4, 32, 32).astype(np.float32)
        >>> config = TrainingConfig(n_iterations=2, batch_size=2, swa_iterations=1)
        >>> ensemble = train_ensemble(images, images > 0.9, tempfile.mkdtemp(), n_members=2, sampling_A_per_px=0.1,
        ...                           architecture=UnetArchitecture(nb_filters=4), config=config, progress=False)
        >>> prediction, features = ensemble.analyse(images[0])
        >>> prediction.mean.shape, features.shape, bool(np.array_equal(features, ensemble.features(images[0])))
        ((32, 32), (1, 64), True)
        """
        return self._analysed(images, "analyse", sampling_A_per_px, tile_px, overlap_px, precision, with_features=True, shared_pass=shared_pass)

    def features(self, images: np.ndarray, sampling_A_per_px: float | None = None, tile_px: int = 512) -> np.ndarray:
        """Each frame's summary in the members' feature space, (n frames, members x channels).

        Every member's bottleneck activations, averaged over the frame (at the training pixel
        size, in equal tiles of at most ``tile_px`` for large frames, weighted by tile area). Frames
        that look alike to the networks lie close together: :class:`elit_utils.ood.ShiftDetector`
        measures how far a frame lies from the source frames. Always computed in plain fp32 (no
        autocast, no TF32), so that a detector fitted on one machine scores alike on another.
        :meth:`analyse` gives them together with the prediction.
        """
        array = checked_images(images, "features")
        tile, _ = _check_tiling(tile_px, 0)
        _, work_frames, _ = self._working_frames(array, sampling_A_per_px)
        return np.array([self._frame_features(work, tile) for work in work_frames])

    def predict_many(
        self,
        frames: Sequence[np.ndarray],
        client: object | None = None,
        sampling_A_per_px: float | Sequence[float | None] | None = None,
        frames_per_task: int = 4,
        **options: object,
    ) -> Iterator[tuple[int, Prediction]]:
        """:meth:`predict` over many frames (any sizes): yields ``(frame index, Prediction)``, each equal to ``predict(frames[index])``.

        ``sampling_A_per_px``: one pixel size for all frames, or one per frame. ``options`` go to
        :meth:`predict` (``tile_px``, ``overlap_px``, ``precision``). Without a ``client`` the
        frames are predicted here, in order. With a Dask ``client`` every ``frames_per_task`` frames
        are one task; each worker loads this ensemble's members from :attr:`folder` once (and checks
        their sha256), and predictions are yielded as their tasks finish, in any order.

        >>> import tempfile
        >>> images = np.random.rand(3, 32, 32).astype(np.float32)
        >>> config = TrainingConfig(n_iterations=1, batch_size=2, swa_iterations=0)
        >>> ensemble = train_ensemble(images, images > 0.9, tempfile.mkdtemp(), 1, 0.1, UnetArchitecture(nb_filters=4), config, progress=False)
        >>> [(index, prediction.mean.shape) for index, prediction in ensemble.predict_many(list(images))]
        [(0, (32, 32)), (1, (32, 32)), (2, (32, 32))]
        """
        frames = list(frames)
        many = isinstance(sampling_A_per_px, (list, tuple, np.ndarray))
        samplings = list(sampling_A_per_px) if many else [sampling_A_per_px] * len(frames)
        if len(samplings) != len(frames):
            raise BadValueError(f"sampling_A_per_px lists {len(samplings)} pixel sizes for {len(frames)} frames; give one per frame, or one for all.")
        per_task = _whole_number(frames_per_task, "frames_per_task", minimum=1)
        if client is None:
            return ((index, self.predict(frame, sampling, **options)) for index, (frame, sampling) in enumerate(zip(frames, samplings)))
        if self.folder is None or not self.weights_sha256:
            raise BadValueError("predict_many with a client needs an ensemble loaded from its folder (Ensemble.load), which the workers load too.")
        chunks = [
            list(zip(range(start, start + per_task), frames[start : start + per_task], samplings[start : start + per_task]))
            for start in range(0, len(frames), per_task)
        ]
        return _predictions_on_workers(client, self.folder, self.weights_sha256, chunks, options)


#: Ensembles loaded by :func:`_predict_chunk_task` in this (worker) process: (folder, seeds' sha256) -> Ensemble.
_LOADED_ON_WORKER: dict[tuple[str, tuple[tuple[int, str], ...]], Ensemble] = {}


def _predictions_on_workers(
    client: object, folder: Path, weights_sha256: dict[int, str], chunks: list[list[tuple[int, np.ndarray, float | None]]], options: dict
) -> Iterator[tuple[int, Prediction]]:
    """Submit each chunk of (index, frame, pixel size) as a task; yield (index, Prediction) as tasks finish."""
    from distributed import as_completed

    members = tuple(sorted(weights_sha256.items()))
    futures = [client.submit(_predict_chunk_task, folder, members, chunk, options, pure=False) for chunk in chunks]
    for future in as_completed(futures):
        yield from future.result()
        future.release()


#: One torch computation at a time in a worker process (see :func:`torch_on_worker`).
_TORCH_ON_WORKER = threading.Lock()


@contextlib.contextmanager
def torch_on_worker() -> Iterator[None]:
    """On a Dask worker: run the block alone in this worker process, with as many torch threads as the worker has.

    A Dask worker of T threads runs up to T tasks at once. Two members trained at once in one process
    would share torch's thread pool: they oversubscribe the cores, and their CPU sums (hence their
    weights) would depend on timing. So each task of ours waits for the one before it and then uses
    all T threads: a member trained on a worker of T threads equals, bit for bit, one trained in a
    process of T threads. Freed memory is reused during the block, as in a plain process
    (:func:`~elit_utils.distributed.freed_memory_reused`: Dask's workers otherwise map every large tensor afresh).
    """
    from distributed import get_worker

    with _TORCH_ON_WORKER, freed_memory_reused():
        torch.set_num_threads(max(1, get_worker().state.nthreads))
        yield


def ensemble_on_worker(folder: Path, members: tuple[tuple[int, str], ...]) -> Ensemble:
    """On a Dask worker: the ensemble of ``folder``, loaded once per worker process and checked against ``members``
    ((seed, sha256) pairs). One ensemble is kept at a time: another replaces it."""
    key = (str(Path(folder).resolve()), members)
    if key not in _LOADED_ON_WORKER:
        loaded = Ensemble.load(folder, seeds=[seed for seed, _ in members])
        if tuple(sorted(loaded.weights_sha256.items())) != members:
            raise BadModelFolderError(f"{folder} changed since the ensemble was loaded (a member's sha256 differs); load it again and rerun.")
        _LOADED_ON_WORKER.clear()
        _LOADED_ON_WORKER[key] = loaded
    return _LOADED_ON_WORKER[key]


def _predict_chunk_task(
    folder: Path, members: tuple[tuple[int, str], ...], chunk: list[tuple[int, np.ndarray, float | None]], options: dict
) -> list[tuple[int, Prediction]]:
    """On a Dask worker: predict a chunk of frames with the ensemble of ``folder`` (:func:`ensemble_on_worker`, :func:`torch_on_worker`)."""
    with torch_on_worker():
        ensemble = ensemble_on_worker(folder, members)
        return [(index, ensemble.predict(frame, sampling, **options)) for index, frame, sampling in chunk]


def _chosen_seeds(seeds: list[int] | None, available: list[int], folder: Path) -> list[int]:
    """The members to load: all, or ``seeds`` (each once, each a member)."""
    if seeds is None:
        return available
    chosen = [_whole_number(seed, "a seed in seeds", minimum=0) for seed in seeds]
    if not chosen:
        raise BadValueError(f"seeds=[] selects no member; pass None for all, or some of {_describe_seeds(available)}.")
    repeated = sorted({seed for seed in chosen if chosen.count(seed) > 1})
    if repeated:
        raise BadValueError(f"seeds={chosen} names seed {repeated[0]} more than once; each member counts once, so pass each seed once.")
    unknown = [seed for seed in chosen if seed not in available]
    if unknown:
        raise BadValueError(f"seed {unknown[0]} is not a member of {folder} (it holds {_describe_seeds(available)}).")
    return chosen


# --------------------------------------------------------------------------- profiles


def profile_training(profile: str | object | None = None) -> tuple[UnetArchitecture, TrainingConfig]:
    """The U-Net (one class) and training settings of a run profile.

    >>> architecture, config = profile_training("paper")
    >>> architecture.nb_filters, config.n_iterations, config.batch_size, config.learning_rate
    (16, 2000, 32, 0.001)
    """
    from .config import get_profile

    chosen = get_profile(profile)
    architecture = UnetArchitecture(nb_filters=chosen.unet_base_filters)
    config = TrainingConfig(
        n_iterations=chosen.n_iterations, batch_size=chosen.batch_size, learning_rate=chosen.learning_rate, swa_iterations=chosen.swa_iterations
    )
    return architecture, config


def cached_ensemble(
    profile: str | object | None = None,
    domain: str = "source",
    seed: int = 0,
    n_members: int | None = None,
    progress: bool = True,
    n_classes: int = 1,
    dopant_rich_share: float = 0.0,
) -> Ensemble:
    """The profile's ensemble trained on ``domain``: loaded from the cache, finished, or trained.

    Lives in ``<cache>/ensembles/<domain>-<profile>-<hash>/``, the hash covering the
    architecture, training, data and simulator version (so a change of the physics trains
    afresh); an interrupted training resumes there with the finished members. Asking for
    fewer members than are cached gives the first ones; asking for more trains the others.

    ``n_classes=2`` trains two-class members (:func:`two_class_masks`: "atom" and "Si, given an
    atom") in their own folder (``...-2class-<hash>``). ``dopant_rich_share`` (two classes only)
    replaces that share of the training frames by frames of the ``dopant_rich`` domain (ten
    times more Si), since the source domain has about one Si site per 10 nm^2.
    """
    from .cache import cache_dir
    from .config import config_hash, get_profile
    from .simulate import SIMULATOR_VERSION

    chosen = get_profile(profile)
    architecture, config = profile_training(chosen)
    architecture = dataclasses.replace(architecture, nb_classes=n_classes)
    members = n_members or chosen.n_members
    images, masks, sampling = simulated_training_data(domain, chosen.n_train_images, seed, chosen.image_size_px, n_classes, dopant_rich_share)
    data_key = [domain, chosen.n_train_images, chosen.image_size_px, seed] + ([dopant_rich_share] if dopant_rich_share else [])
    key = config_hash({"architecture": architecture, "training": config, "data": data_key, "simulator_version": SIMULATOR_VERSION})
    kind = "" if n_classes == 1 else f"-2class{f'-dopant{dopant_rich_share:g}' if dopant_rich_share else ''}"
    folder = cache_dir() / "ensembles" / f"{domain}-{chosen.name}{kind}-{key}"
    cached = _cached_size(folder)
    if cached is not None and cached > members:  # a larger ensemble is cached: its first members are the smaller one
        full = train_ensemble(images, masks, folder, cached, sampling, architecture, config, first_seed=1000 * seed, progress=progress)
        return full.subset(members)
    grow = cached is not None and cached < members
    return train_ensemble(images, masks, folder, members, sampling, architecture, config, first_seed=1000 * seed, progress=progress, resize=grow)


def two_class_masks(data: object) -> np.ndarray:
    """A simulated dataset's two-class training masks, (n, 2, H, W) bool: "atom" (any element) and "Si".

    >>> from elit_utils.simulate import dataset
    >>> two_class_masks(dataset("source", n=1, image_size_px=32, cache=False)).shape
    (1, 2, 32, 32)
    """
    return np.stack([data.atom_mask, data.label_mask == 2], axis=1)


def simulated_training_data(
    domain: str, n_images: int, seed: int, image_size_px: int, n_classes: int = 1, dopant_rich_share: float = 0.0
) -> tuple[np.ndarray, np.ndarray, float]:
    """Simulated training images (n, H, W), their masks (one class: (n, H, W); two: :func:`two_class_masks`)
    and their pixel size (A/px), as :func:`cached_ensemble` and ``elit train`` use them.

    ``dopant_rich_share`` (two classes only) replaces that share of the ``domain``'s frames by frames of
    the ``dopant_rich`` domain (ten times more Si), so that the members see enough Si to learn it.

    >>> images, masks, sampling = simulated_training_data("source", 4, 0, 32, n_classes=2, dopant_rich_share=0.5)
    >>> images.shape, masks.shape, sampling
    ((4, 32, 32), (4, 2, 32, 32), 0.1)
    """
    from .simulate import dataset

    if n_classes not in (1, 2):
        raise BadValueError(f"n_classes={n_classes!r}: ELIT Lab trains 1 class (atom, the paper's) or 2 (atom, and Si given an atom).")
    if not (0.0 <= dopant_rich_share <= 1.0) or (dopant_rich_share and n_classes == 1):
        raise BadValueError(f"dopant_rich_share={dopant_rich_share!r} must be a share in [0, 1], and is for two-class ensembles (n_classes=2) only.")
    n_dopant_rich = round(n_images * dopant_rich_share)
    parts = [(domain, n_images - n_dopant_rich), ("dopant_rich", n_dopant_rich)]
    sets = [dataset(name, n=n, seed=seed, image_size_px=image_size_px) for name, n in parts if n]
    samplings = {data.conditions.sampling_A_per_px for data in sets}
    if len(samplings) > 1:
        raise BadValueError(f"{domain} and dopant_rich frames differ in pixel size ({sorted(samplings)} A/px); mix only domains of one pixel size.")
    masks = [data.atom_mask if n_classes == 1 else two_class_masks(data) for data in sets]
    return np.concatenate([data.images for data in sets]), np.concatenate(masks), samplings.pop()


def _cached_size(folder: Path) -> int | None:
    """How many members a cached ensemble folder is meant to hold (None: no usable record yet)."""
    try:
        record = read_record(folder)
    except BadModelFolderError:
        return None
    return len(record["seeds"]) if record["format_version"] >= 2 else None
