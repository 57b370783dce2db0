"""Run profiles and project-wide constants, defined once.

Every notebook and command reads its sizes from one :class:`Profile`:

* ``smoke``: every notebook in seconds, for CI and ``make test``;
* ``quick``: a workshop on a laptop or Colab CPU, each notebook in minutes;
* ``paper``: the published configuration (20 members, 2000 iterations,
  batch 32, 256x256 px) for a GPU.

The profile comes from, in order: the argument, the ``ELIT_PROFILE``
environment variable, and the default ``quick``.

Example
-------
>>> from elit_utils.config import get_profile
>>> get_profile("smoke").name
'smoke'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any

#: This release of ELIT Lab (``elit_utils.__version__`` and the package metadata read it).
VERSION = "0.2.0"

#: Where the project lives.
REPO_URL = "https://github.com/elit-lab/elit-lab"

#: What the first code cell of every notebook installs in Colab: this release, pinned by its
#: tag ``v<VERSION>`` (a test checks that every notebook installs exactly this).
INSTALL_SPEC = f"elit-lab @ git+{REPO_URL}@v{VERSION}"

#: Environment variables that steer a run.
PROFILE_ENV = "ELIT_PROFILE"
CACHE_ENV = "ELIT_CACHE"
RESULTS_ENV = "ELIT_RESULTS"
EXPERIMENTAL_ENV = "ELIT_EXPERIMENTAL_DIR"

DEFAULT_PROFILE = "quick"

#: The shift detector's file in a model folder, beside the members it was fitted on (written by
#: ``elit train``, used by ``elit predict``, deleted by a resize, since it is then stale).
SHIFT_DETECTOR_FILE = "shift_detector.safetensors"

#: The trust regions' limit in a model folder (JSON), fitted on fresh source frames by ``elit train``
#: like the shift detector, used by ``elit predict``, deleted by a resize.
TRUST_REGIONS_FILE = "trust_regions.json"

#: The frame error monitor's limits in a model folder (JSON, :class:`~elit_utils.ood.FrameErrorMonitor`), one file per
#: size of the frames judged, fitted on fresh source frames of that size when first needed (``elit watch``, notebook 09),
#: refused once the members change.
ERROR_MONITOR_FILE = "error_monitor_{image_size_px}px.json"

#: The most pixels a frame may have once resampled to a model's pixel size (4096 x 4096): a pixel
#: size in the wrong unit would otherwise make a frame that takes hours and gigabytes to predict.
MAX_WORK_PX = 4096 * 4096


@dataclass(frozen=True)
class Profile:
    """Sizes of one run, from a CI smoke test to the paper's configuration.

    Attributes
    ----------
    name: the profile's name (``smoke``, ``quick`` or ``paper``).
    image_size_px: side of the square training images, in pixels.
    n_train_images: simulated images the ensemble trains on.
    n_test_images: held-out simulated images for metrics.
    n_preview_images: images per domain shown in figures.
    n_members: networks in the ensemble.
    n_iterations: training iterations per member.
    batch_size: images per training step.
    learning_rate: Adam's step size. The paper's 1e-3 over 2000 iterations; the short profiles take
        larger steps (3e-3), else their members stop half trained: after 120 steps at 1e-3 they still
        give empty background a probability near 0.15 (measured), which inflates every entropy map.
    unet_base_filters: filters of the first U-Net level (atomai's ``nb_filters``).
    swa_iterations: final iterations averaged by stochastic weight averaging.
    n_adapt_rounds: rounds of iterative training.
    n_adapt_frames: unlabelled target frames the ensemble adapts to.
    adapt_iterations_per_round: fine-tuning steps per member in each round of iterative training.
    adapt_tile_px: side of the tiles that frames are cut into for fine-tuning, px.
    adapt_methods: the ways to adapt that notebook 05 compares (:data:`elit_utils.iterate.METHODS`);
        ``uncertainty-masked`` always runs, a short profile leaves out the costly baselines.
    adapt_freeze_batch_norm: keep the members' batch-norm statistics while fine-tuning
        (:class:`~elit_utils.iterate.AdaptConfig`); smoke's briefly trained members are fine-tuned
        with them free, since fine-tuning them frozen lowers even the true-label ceiling.
    n_ood_images_per_point: simulated frames per point of an out-of-distribution sweep.
    n_shift_reference_images: simulated source frames that fit the shift detector
        (:class:`~elit_utils.ood.ShiftDetector`).
    """

    name: str
    image_size_px: int
    n_train_images: int
    n_test_images: int
    n_preview_images: int
    n_members: int
    n_iterations: int
    batch_size: int
    learning_rate: float
    unet_base_filters: int
    swa_iterations: int
    n_adapt_rounds: int
    n_adapt_frames: int
    adapt_iterations_per_round: int
    adapt_tile_px: int
    adapt_methods: tuple[str, ...]
    adapt_freeze_batch_norm: bool
    n_ood_images_per_point: int
    n_shift_reference_images: int

    def as_dict(self) -> dict[str, Any]:
        """The profile as a plain dictionary (for JSON records)."""
        return dataclasses.asdict(self)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        image_size_px=64,
        n_train_images=24,
        n_test_images=4,
        n_preview_images=2,
        n_members=2,
        n_iterations=60,
        batch_size=4,
        learning_rate=3e-3,
        unet_base_filters=8,
        swa_iterations=10,
        n_ood_images_per_point=1,
        n_shift_reference_images=6,
        n_adapt_rounds=2,
        n_adapt_frames=4,  # 4 frames, 2 rounds of 20 steps: the target F1 rose on 8 target seeds out of 8 (free batch norm)
        adapt_iterations_per_round=20,
        adapt_tile_px=32,
        adapt_methods=("uncertainty-masked", "paper (threshold 0.5)", "single network", "no adaptation", "true labels"),
        adapt_freeze_batch_norm=False,
    ),
    "quick": Profile(
        name="quick",
        image_size_px=128,
        n_train_images=400,
        n_test_images=40,
        n_preview_images=4,
        n_members=5,
        n_iterations=120,
        batch_size=8,
        learning_rate=3e-3,
        unet_base_filters=16,
        swa_iterations=30,
        n_ood_images_per_point=20,
        n_shift_reference_images=64,
        n_adapt_rounds=3,
        n_adapt_frames=6,
        adapt_iterations_per_round=75,
        adapt_tile_px=64,
        adapt_methods=("uncertainty-masked", "paper (threshold 0.5)", "single network", "no adaptation"),
        adapt_freeze_batch_norm=True,
    ),
    "paper": Profile(
        name="paper",
        image_size_px=256,
        n_train_images=2000,
        n_test_images=200,
        n_preview_images=6,
        n_members=20,
        n_iterations=2000,
        batch_size=32,
        learning_rate=1e-3,
        unet_base_filters=16,
        swa_iterations=30,
        n_ood_images_per_point=50,
        n_shift_reference_images=200,
        n_adapt_rounds=5,
        n_adapt_frames=20,
        adapt_iterations_per_round=500,
        adapt_tile_px=128,
        adapt_methods=("uncertainty-masked", "paper (threshold 0.5)", "single network", "no adaptation", "true labels"),
        adapt_freeze_batch_norm=True,
    ),
}


def get_profile(name: str | Profile | None = None) -> Profile:
    """Return the run profile called ``name``, else ``$ELIT_PROFILE``, else ``quick``.

    Raises ``ValueError`` naming the known profiles when the name is unknown.

    >>> get_profile("paper").n_members
    20
    """
    if isinstance(name, Profile):
        return name
    chosen = name or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE
    key = chosen.strip().lower()
    if key not in PROFILES:
        known = ", ".join(PROFILES)
        source = "argument" if name else f"${PROFILE_ENV}"
        raise ValueError(f"Unknown run profile {chosen!r} (from the {source}); choose one of: {known}.")
    return PROFILES[key]


def config_hash(config: Any, length: int = 16) -> str:
    """A short, stable hash of a configuration (dataclasses, dicts, lists, numbers).

    Equal configurations give equal hashes across sessions and machines; it keys
    the caches and tags every reported number.

    >>> config_hash({"a": 1, "b": [2, 3]}) == config_hash({"b": [2, 3], "a": 1})
    True
    """
    text = json.dumps(to_jsonable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def to_jsonable(value: Any) -> Any:
    """Turn dataclasses, tuples and numpy scalars/arrays into plain JSON types.

    JSON has no NaN or infinity, so a number that is not finite becomes ``None`` (null):
    "no value", e.g. an AUROC where there was nothing to detect.

    >>> to_jsonable((1, 2.5, float("nan")))
    [1, 2.5, None]
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return to_jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
