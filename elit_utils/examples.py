"""Real STEM micrographs of graphene on demand: fetched from their source, never shipped.

The notebooks test the ensemble on a few real HAADF-STEM images of graphene from
the public repository pycroscopy/AICrystallographer (folder ``AtomNet/exp_data``;
Ziatdinov et al., ACS Nano 11, 12742-12752, 2017). That repository states no
licence for these files, so ELIT Lab does not redistribute them: each is fetched
from its source, pinned to a commit, into the user's cache folder
(``cache_dir() / "examples"``), and never committed. :data:`ATTRIBUTION` says so
in a form a notebook can print.

:func:`example_path` looks for a file in this order: a copy in the shared
experimental folder (:func:`~elit_utils.io.experimental_dir`), a copy in the
cache, a download with :func:`pooch.retrieve`. Every copy must have the SHA-256
of :data:`REGISTRY`; a local copy with another checksum is not used, because the
registry's pixel size and reference coordinates describe exactly those bytes.
When a file cannot be had (offline, an HTTP error, a timeout, a checksum
mismatch) one plain line says so and the function returns None: a notebook skips
its real-image sections and goes on.

The checksums were computed from the shared copies, as GitHub could not be
reached when this module was written. Should upstream differ, the download fails
its checksum check, which is handled like being offline (one line, go on without).

Environment variables: ``ELIT_EXAMPLES_URL`` replaces the base URL (a mirror,
or a test server; the layout under it is ``<base>/<commit>/<path>``), and
``ELIT_OFFLINE=1`` turns fetching off (only local and cached copies are used).

Lines that would fetch are marked ``+SKIP`` below; ``tests/test_examples.py``
runs them against a local server.

Example
-------
>>> example_names()
('G-Si-2nm.npy', 'G-GrainBoundary-4nm.npy', 'G-dimSi.npy')
>>> REGISTRY["G-Si-2nm.npy"].sampling_A_per_px
0.079
>>> example = load_example("G-Si-2nm.npy")  # doctest: +SKIP
>>> example.image.shape, example.reference_px.shape  # doctest: +SKIP
((256, 256), (140, 2))
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .cache import cache_dir, file_sha256
from .errors import BadValueError
from .io import experimental_dir, load_image

#: Environment variables: a mirror's base URL, and "1" to turn fetching off.
EXAMPLES_URL_ENV = "ELIT_EXAMPLES_URL"
OFFLINE_ENV = "ELIT_OFFLINE"
DEFAULT_BASE_URL = "https://github.com/pycroscopy/AICrystallographer/raw"
#: A download that gets no answer for this long is given up (a class must not hang).
FETCH_TIMEOUT_S = 30.0

ATTRIBUTION = (
    "Example micrographs: HAADF-STEM images of graphene from the public repository "
    "pycroscopy/AICrystallographer (folder AtomNet/exp_data; Ziatdinov et al., ACS Nano 11, 12742-12752, 2017), "
    "with atom positions predicted by their network AtomNet (a reference, not hand labels). "
    "That repository states no licence for these files, so ELIT Lab does not redistribute them: "
    "they are fetched from their source, pinned to a commit and checked by SHA-256, into your own cache folder, "
    "and never committed."
)

_COMMIT_IMAGES = "66a8ec8ae56bb103b9e43d4889b7cec661ce93d9"
_COMMIT_DIMER = "4642f7a5e216ac29af7e1fd2370c24f8adade773"
_COMMIT_COORDS = "8e854226b2eef6254698abf2533eb910b08c070c"


@dataclass(frozen=True)
class ExampleFile:
    """One file of the registry: where it lives upstream and what it holds.

    Attributes
    ----------
    upstream_path: the path inside pycroscopy/AICrystallographer.
    commit: the commit the file is pinned to.
    sha256: checksum of the file's bytes (hex).
    description: what it shows.
    kind: ``"image"`` or ``"coordinates"`` (AtomNet's atom positions: row, col, class in px).
    sampling_A_per_px: pixel size of an image in A, or None when unknown.
    reference: the registry name of an image's reference coordinates, or None.

    >>> REGISTRY["G-Si-2nm.npy"].reference
    'G-Si-2nm.coords.npy'
    """

    upstream_path: str
    commit: str
    sha256: str
    description: str
    kind: Literal["image", "coordinates"] = "image"
    sampling_A_per_px: float | None = None
    reference: str | None = None


#: The example files by name (the name of the local copy), images and their reference coordinates.
REGISTRY: dict[str, ExampleFile] = {
    "G-Si-2nm.npy": ExampleFile(
        "AtomNet/exp_data/G-Si-2nm.npy",
        _COMMIT_IMAGES,
        "ccb7c5654f400750f78411842e64d90fc01dca40c332963e1be8265d83739b66",
        "Graphene with one Si dopant, 256x256 px (about 2 nm), noisy.",
        sampling_A_per_px=0.079,
        reference="G-Si-2nm.coords.npy",
    ),
    "G-GrainBoundary-4nm.npy": ExampleFile(
        "AtomNet/exp_data/G-GrainBoundary-4nm.npy",
        _COMMIT_IMAGES,
        "7d4548fad41cd415e4840ee0b23470297b254440c972ada54e7fc5aa21cfd6ec",
        "A grain boundary in graphene (5- and 7-membered rings), 512x512 px (about 4 nm).",
        sampling_A_per_px=0.082,
        reference="G-GrainBoundary-4nm.coords.npy",
    ),
    "G-dimSi.npy": ExampleFile(
        "AtomNet/exp_data/G-dimtrimSi/G-dimSi.npy",
        _COMMIT_DIMER,
        "ffe0e6a073d455217f0bbfd69b3cb676ba0338d2eb7a27c8d34833d27b3c202c",
        "Graphene with a Si dimer (two bright atoms), 512x512 px; pixel size not recorded.",
    ),
    "G-Si-2nm.coords.npy": ExampleFile(
        "AtomNet/exp_data/G-Si-2nm-coord.npy",
        _COMMIT_COORDS,
        "5b8f630b6483d7d2f54d859208bee15579b43a4fa9672718d3c386479e2efaad",
        "AtomNet's atom positions in G-Si-2nm.npy (row, col, class in px).",
        kind="coordinates",
    ),
    "G-GrainBoundary-4nm.coords.npy": ExampleFile(
        "AtomNet/exp_data/G-GrainBoundary-4nm-coord.npy",
        _COMMIT_COORDS,
        "4d3405017f8fede2ca5dcee54cc100560b7a60b33da949d988312f09b222449e",
        "AtomNet's atom positions in G-GrainBoundary-4nm.npy (row, col, class in px).",
        kind="coordinates",
    ),
}

_LABEL = {"image": "Example image", "coordinates": "Reference coordinates"}
_CONSEQUENCE = {"image": "the real-image sections are skipped", "coordinates": "the comparison with them is skipped"}


@dataclass(frozen=True, eq=False)
class Example:
    """A real micrograph ready to use, with what is known about it.

    Attributes
    ----------
    name: its registry name, e.g. ``"G-Si-2nm.npy"``.
    image: (H, W) float32 intensities as recorded.
    sampling_A_per_px: pixel size in A, or None when unknown.
    reference_px: (n, 2) float64 atom positions (row, col) in px predicted by
        AtomNet, a reference with some errors; None when there are none.
    description: what it shows.
    path: the file it was read from.

    >>> Example("demo", np.zeros((2, 2), np.float32), None, None, "a demo", Path("demo.npy")).name
    'demo'
    """

    name: str
    image: np.ndarray
    sampling_A_per_px: float | None
    reference_px: np.ndarray | None
    description: str
    path: Path


def example_names() -> tuple[str, ...]:
    """The names of the example images (without their coordinate files).

    >>> "G-dimSi.npy" in example_names()
    True
    """
    return tuple(name for name, entry in REGISTRY.items() if entry.kind == "image")


def _lookup(name: str) -> tuple[str, ExampleFile]:
    key = name if name in REGISTRY else f"{name}.npy"
    if key not in REGISTRY:
        raise BadValueError(f"Unknown example {name!r}; the known ones are: {', '.join(REGISTRY)}.")
    return key, REGISTRY[key]


def example_url(name: str) -> str:
    """Where a file is fetched from: ``<base>/<commit>/<path>``; the base is ``$ELIT_EXAMPLES_URL`` when set.

    >>> example_url("G-dimSi.npy").endswith("/4642f7a5e216ac29af7e1fd2370c24f8adade773/AtomNet/exp_data/G-dimtrimSi/G-dimSi.npy")
    True
    """
    _, entry = _lookup(name)
    base = os.environ.get(EXAMPLES_URL_ENV) or DEFAULT_BASE_URL
    return f"{base.rstrip('/')}/{entry.commit}/{entry.upstream_path}"


def _fetching_allowed() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


def _download_folder() -> Path:
    return cache_dir() / "examples"


def _shared_copy(name: str, entry: ExampleFile) -> tuple[Path | None, str]:
    """A shared copy with the registered checksum, else None and a note on a refused one."""
    folder = experimental_dir()
    if folder is None or not (folder / name).is_file():
        return None, ""
    if file_sha256(folder / name) == entry.sha256:
        return folder / name, ""
    return None, f"the copy in {folder} has another checksum and was not used"


def _cached_copy(name: str, entry: ExampleFile) -> Path | None:
    """The cached download when intact; a damaged one is removed (it is ours, and useless)."""
    path = _download_folder() / name
    if not path.is_file():
        return None
    if file_sha256(path) == entry.sha256:
        return path
    path.unlink()
    return None


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """Silence pooch's own 'Downloading ...' messages: we print one line of our own."""
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _download(name: str, entry: ExampleFile) -> Path:
    import pooch

    downloader = pooch.HTTPDownloader(progressbar=False, timeout=FETCH_TIMEOUT_S)
    with _quiet(pooch.get_logger()):
        fetched = pooch.retrieve(example_url(name), known_hash=f"sha256:{entry.sha256}", fname=name, path=_download_folder(), downloader=downloader)
    return Path(fetched)


def _reason(error: Exception) -> str:
    """Why a download failed, in a few words."""
    if isinstance(error, ImportError):
        return "pooch is not installed; pip install pooch"
    import requests

    if isinstance(error, requests.Timeout):
        return f"no answer within {FETCH_TIMEOUT_S:g} s"
    if isinstance(error, requests.HTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code} from {error.response.url}"
    if isinstance(error, requests.ConnectionError):
        return "offline?"
    if isinstance(error, ValueError) and "hash" in str(error).lower():
        return "the downloaded file's checksum differs from the registered one"
    return f"{type(error).__name__}: {error}"


def _obtain(name: str, entry: ExampleFile, note: str) -> tuple[Path | None, str]:
    """The cached or downloaded file, or None and why not."""
    if (cached := _cached_copy(name, entry)) is not None:
        return cached, ""
    if not _fetching_allowed():
        return None, f"{OFFLINE_ENV}=1 and no local copy"
    try:
        path = _download(name, entry)
    except (ImportError, OSError, ValueError) as error:  # requests' errors are OSErrors; pooch's checksum error is a ValueError
        return None, _reason(error)
    print(f"Fetched {name} from {example_url(name)}" + (f" ({note})." if note else "."))
    return path, ""


def example_path(name: str) -> Path | None:
    """A verified local file of an example (shared copy, cache or download), or None with one line saying why.

    Raises :class:`~elit_utils.errors.BadValueError` for an unknown name; never
    for a failed download (offline, HTTP error, timeout, checksum mismatch).

    >>> example_path("graphene.png")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    elit_utils.errors.BadValueError: Unknown example 'graphene.png'; the known ones are: G-Si-2nm.npy, ...
    >>> example_path("G-Si-2nm.npy")  # doctest: +SKIP
    PosixPath('/root/.cache/elit-lab/examples/G-Si-2nm.npy')
    """
    key, entry = _lookup(name)
    shared, note = _shared_copy(key, entry)
    if shared is not None:
        return shared
    path, reason = _obtain(key, entry, note)
    if path is None:
        because = f"{reason}; {note}" if note else reason
        print(f"{_LABEL[entry.kind]} {key} could not be fetched ({because}); {_CONSEQUENCE[entry.kind]}.")
    return path


def _reference_px(name: str | None) -> np.ndarray | None:
    path = example_path(name) if name is not None else None
    if path is None:
        return None
    return np.load(path, allow_pickle=False)[:, :2].astype(np.float64)


def load_example(name: str) -> Example | None:
    """An example image as float32 with its pixel size and reference atoms, or None when unavailable.

    The name may leave out ``.npy``. The reference coordinates are None when
    there are none, or when they alone could not be had.

    >>> load_example("G-Si-2nm.coords.npy")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    elit_utils.errors.BadValueError: G-Si-2nm.coords.npy holds coordinates, not an image; load one of: G-Si-2nm.npy, ...
    >>> example = load_example("G-Si-2nm")  # doctest: +SKIP
    >>> example.image.dtype, example.sampling_A_per_px, example.reference_px.shape  # doctest: +SKIP
    (dtype('float32'), 0.079, (140, 2))
    """
    key, entry = _lookup(name)
    if entry.kind != "image":
        raise BadValueError(f"{key} holds coordinates, not an image; load one of: {', '.join(example_names())}.")
    path = example_path(key)
    if path is None:
        return None
    loaded = load_image(path, sampling_A_per_px=entry.sampling_A_per_px)
    return Example(key, loaded.image, loaded.sampling_A_per_px, _reference_px(entry.reference), entry.description, path)


def available_examples(names: Iterable[str] | None = None) -> dict[str, Example]:
    """The examples that could be had, by name (all images when ``names`` is None); one line per missing one.

    Every name is checked before anything is fetched, so a typo fails at once.

    >>> available_examples([])
    {}
    >>> sorted(available_examples())  # doctest: +SKIP
    ['G-GrainBoundary-4nm.npy', 'G-Si-2nm.npy', 'G-dimSi.npy']
    """
    chosen = example_names() if names is None else [_lookup(name)[0] for name in names]
    loaded = {name: load_example(name) for name in chosen}
    return {name: example for name, example in loaded.items() if example is not None}
