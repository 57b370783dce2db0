"""Reading microscope images from files, with clear errors, and normalising them.

:func:`load_image` reads ``.npy``, ``.tif``/``.tiff``, ``.png``, ``.h5``/``.hdf5``
and, through rosettasciio, ``.dm3``/``.dm4``/``.emd``. It returns a
:class:`LoadedImage`: a 2D float32 array, its pixel size in A (from the file's
metadata when it has one, else from the argument) and the source metadata.

Bad input raises :class:`~elit_utils.errors.BadImageError` (also known here by its
old name, :data:`ImageLoadError`) naming the file and the fix; a bad pixel size
given as a number raises :class:`~elit_utils.errors.BadValueError`.

What is refused, and why:

- empty arrays, bool masks, complex values, text or Python objects: not intensities;
- NaN/inf pixels and constant frames: no image to find atoms in;
- frames under :data:`MIN_SIDE_PX` px on a side or :data:`MIN_FIELD_OF_VIEW_A` A
  across: too few lattice constants for the networks to see a lattice;
- colour images whose channels differ: a false-colour rendering, whose brightness
  is not the detector signal (grey images stored as RGB are read as grey).

Example
-------
>>> import numpy as np, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "frame.npy"
>>> np.save(path, np.random.default_rng(0).random((32, 32)))
>>> loaded = load_image(path, sampling_A_per_px=0.5)
>>> loaded.image.shape, loaded.image.dtype.name, loaded.sampling_A_per_px
((32, 32), 'float32', 0.5)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cache import repository_root
from .config import EXPERIMENTAL_ENV
from .errors import BadImageError, BadValueError

SUPPORTED_SUFFIXES = (".npy", ".tif", ".tiff", ".png", ".h5", ".hdf5", ".dm3", ".dm4", ".emd")
#: Pixel sizes outside this range (A/px) are almost surely in the wrong unit.
PLAUSIBLE_SAMPLING_A_PER_PX = (0.01, 5.0)
#: The smallest frame side, in pixels, that :func:`load_image` accepts.
MIN_SIDE_PX = 32
#: The smallest field of view, in A, on each side: about four graphene lattice constants (2.46 A).
MIN_FIELD_OF_VIEW_A = 10.0
_UNIT_TO_A = {"a": 1.0, "å": 1.0, "angstrom": 1.0, "nm": 10.0, "pm": 0.01, "um": 1e4, "µm": 1e4, "μm": 1e4}
_LENGTH = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([^\s/]*)\s*(?:/\s*(?:px|pixels?))?\s*")

#: The old name of :class:`~elit_utils.errors.BadImageError`, kept so that existing code works.
ImageLoadError = BadImageError


@dataclass(frozen=True)
class LoadedImage:
    """A 2D micrograph read from a file.

    Attributes
    ----------
    image: (H, W) float32.
    sampling_A_per_px: pixel size in A, or None when neither file nor caller gave one.
    metadata: what the file said about itself (format, axes, original dtype, the file's own
        pixel size ``file_sampling_A_per_px`` when it has one, ...).
    path: the file it came from.
    """

    image: np.ndarray
    sampling_A_per_px: float | None
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def check_sampling(sampling_A_per_px: float | None, source: str = "sampling_A_per_px") -> float | None:
    """Check a pixel size in A/px; catch values that look like nm or pm.

    Raises :class:`~elit_utils.errors.BadValueError` naming ``source``.

    >>> check_sampling(0.08)
    0.08
    >>> check_sampling(0.02)  # unusually fine, but possible
    0.02
    >>> check_sampling(0.0079)
    Traceback (most recent call last):
    ...
    elit_utils.errors.BadValueError: sampling_A_per_px=0.0079 A/px is outside 0.01-5.0 A/px; is it in the wrong unit (nm/px? multiply by 10)?
    """
    if sampling_A_per_px is None:
        return None
    try:
        value = float(sampling_A_per_px)
    except (TypeError, ValueError):
        raise BadValueError(f"{source}={sampling_A_per_px!r} is not a number; give the pixel size in A/px (e.g. 0.08).") from None
    low, high = PLAUSIBLE_SAMPLING_A_PER_PX
    if not np.isfinite(value) or value <= 0:
        raise BadValueError(f"{source}={sampling_A_per_px!r} is not a positive pixel size in A/px.")
    if not low <= value <= high:
        hint = "nm/px? multiply by 10" if value < low else "pm/px? divide by 100"
        raise BadValueError(f"{source}={value} A/px is outside {low}-{high} A/px; is it in the wrong unit ({hint})?")
    return value


def parse_sampling(value: object, source: str = "pixel size") -> float:
    """A pixel size in A/px from a number (in A) or a text with a unit, such as ``"0.079 A"`` or ``"0.0079 nm/px"``.

    Raises :class:`~elit_utils.errors.BadValueError` naming ``source`` when the text is not a length.

    >>> parse_sampling("0.0079 nm"), parse_sampling(b"0.079 A/px"), parse_sampling(0.08)
    (0.079, 0.079, 0.08)
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return parse_sampling(value.item(), source)
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    match = _LENGTH.fullmatch(str(value))
    unit = match.group(2).lower() if match else ""
    if match is None or (unit and unit not in _UNIT_TO_A):
        raise BadValueError(f"{source} = {value!r} is not a pixel size; store a number in A/px (e.g. 0.08) or a length with a unit (A, nm, pm).")
    return round(float(match.group(1)) * _UNIT_TO_A.get(unit, 1.0), 12)


def _fail(path: Path, problem: str, fix: str) -> BadImageError:
    return BadImageError(f"{path}: {problem}. {fix}")


def _read_npy(path: Path, dataset: str | None) -> tuple[np.ndarray, float | None, dict]:
    with open(path, "rb") as handle:
        start = handle.read(64)
    if not start.startswith(b"\x93NUMPY"):
        kind = "a .npz archive" if start.startswith(b"PK") else "text" if start and _looks_like_text(start) else "something else"
        raise _fail(path, f"is not a NumPy .npy file (it holds {kind})", "Save the array with numpy.save, or give the file its real suffix.")
    try:
        return np.load(path, allow_pickle=False), None, {}
    except ValueError as error:
        if "allow_pickle" not in str(error):
            raise
        raise _fail(path, "holds Python objects (dtype object), not numbers", "Save a numeric array (e.g. np.save(path, image.astype(np.float32))).") from None


def _looks_like_text(start: bytes) -> bool:
    try:
        text = start.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(character.isprintable() or character in "\t\r\n" for character in text)


def _read_png(path: Path, dataset: str | None) -> tuple[np.ndarray, float | None, dict]:
    from PIL import Image

    with Image.open(path) as picture:
        mode = picture.mode
        if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
            picture = picture.convert("RGBA" if "A" in mode or "transparency" in picture.info else "RGB")
        array = np.asarray(picture)
    if mode == "LA":
        array = array[..., 0]
    return array, None, {"mode": mode}


def _read_tiff(path: Path, dataset: str | None) -> tuple[np.ndarray, float | None, dict]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        array = tif.asarray()
        meta: dict[str, Any] = {}
        sampling = None
        if tif.imagej_metadata:
            meta["imagej"] = {k: v for k, v in tif.imagej_metadata.items() if isinstance(v, (str, int, float))}
        tags = tif.pages[0].tags
        if "XResolution" in tags:
            numerator, denominator = tags["XResolution"].value
            unit = str(meta.get("imagej", {}).get("unit", "")).lower()
            if numerator > 0 and unit in _UNIT_TO_A:
                sampling = denominator / numerator * _UNIT_TO_A[unit]
                meta["resolution_unit"] = unit
    return array, sampling, meta


def _read_hdf5(path: Path, dataset: str | None) -> tuple[np.ndarray, float | None, dict]:
    import h5py

    with h5py.File(path, "r") as handle:
        names: list[str] = []
        handle.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim >= 2 else None)
        if dataset is None:
            if len(names) != 1:
                listing = ", ".join(names) or "none"
                raise _fail(path, f"holds {len(names)} image-like datasets ({listing})", "Choose one with dataset='NAME'.")
            dataset = names[0]
        if dataset not in handle:
            raise _fail(path, f"has no dataset {dataset!r}", f"Image-like datasets here: {', '.join(names) or 'none'}.")
        node = handle[dataset]
        array = node[()]
        attrs = {k: (v.item() if hasattr(v, "item") and np.ndim(v) == 0 else v) for k, v in node.attrs.items()}
    sampling = attrs.get("sampling_A_per_px")
    if sampling is not None:
        try:
            sampling = parse_sampling(sampling, f"attribute sampling_A_per_px of dataset {dataset!r}")
        except BadValueError as error:
            raise BadImageError(f"{path}: {error}") from None
    return array, sampling, {"dataset": dataset, "attrs": {k: str(v) for k, v in attrs.items()}}


def _read_rsciio(path: Path, dataset: str | None) -> tuple[np.ndarray, float | None, dict]:
    if path.suffix.lower() == ".emd":
        from rsciio.emd import file_reader
    else:
        from rsciio.digitalmicrograph import file_reader
    signals = [s for s in file_reader(str(path)) if np.ndim(s["data"]) >= 2]
    if not signals:
        raise _fail(path, "holds no image", "Check that it is a 2D micrograph.")
    if len(signals) > 1 and dataset is None:
        titles = [s.get("metadata", {}).get("General", {}).get("title", f"#{i}") for i, s in enumerate(signals)]
        raise _fail(path, f"holds {len(signals)} images ({', '.join(map(str, titles))})", "Choose one with dataset='TITLE'.")
    if dataset is not None:
        chosen = [s for i, s in enumerate(signals) if dataset in (s.get("metadata", {}).get("General", {}).get("title"), f"#{i}")]
        if not chosen:
            raise _fail(path, f"has no image titled {dataset!r}", "Leave dataset unset to list the images.")
        signals = chosen
    signal = signals[0]
    axes = signal.get("axes", [])[-2:]
    sampling = None
    if axes:
        unit = str(axes[-1].get("units", "")).strip().lower()
        if unit in _UNIT_TO_A and axes[-1].get("scale"):
            sampling = float(axes[-1]["scale"]) * _UNIT_TO_A[unit]
    meta = {"axes": [{k: a.get(k) for k in ("name", "scale", "units", "size")} for a in axes]}
    return np.asarray(signal["data"]), sampling, meta


_READERS = {
    ".npy": _read_npy,
    ".png": _read_png,
    ".tif": _read_tiff,
    ".tiff": _read_tiff,
    ".h5": _read_hdf5,
    ".hdf5": _read_hdf5,
    ".dm3": _read_rsciio,
    ".dm4": _read_rsciio,
    ".emd": _read_rsciio,
}


def load_image(
    path: str | os.PathLike,
    sampling_A_per_px: float | None = None,
    frame: int | None = None,
    dataset: str | None = None,
    require_sampling: bool = False,
    override_file_sampling: bool = False,
) -> LoadedImage:
    """Read one 2D micrograph as float32 with its pixel size in A.

    Parameters
    ----------
    path: the file (.npy, .tif/.tiff, .png, .h5/.hdf5, .dm3/.dm4/.emd).
    sampling_A_per_px: pixel size to use when the file has none (the file's own wins,
        unless ``override_file_sampling``).
    frame: which frame of a 3D stack to take.
    dataset: which dataset of an HDF5 file (or titled image of an EMD file).
    require_sampling: raise when no pixel size is known.
    override_file_sampling: use ``sampling_A_per_px`` even when the file has a pixel size of
        its own (kept in ``metadata["file_sampling_A_per_px"]`` for the caller to compare).

    Raises :class:`~elit_utils.errors.BadImageError` (alias :data:`ImageLoadError`) for a file
    that cannot be used, and ``FileNotFoundError`` for a missing one.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "stack.npy"
    >>> np.save(path, np.random.default_rng(0).random((3, 48, 48)))
    >>> load_image(path, frame=2).image.shape
    (48, 48)
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file. Check the path (relative paths start at {Path.cwd()}).")
    if not path.is_file():
        raise _fail(path, "is a folder, not an image file", "Name the image files themselves.")
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        raise _fail(path, f"unknown image format {suffix or '(no suffix)'!r}", f"Convert it to one of: {', '.join(SUPPORTED_SUFFIXES)}.")
    try:
        array, file_sampling, meta = _READERS[suffix](path, dataset)
    except BadImageError:
        raise
    except MemoryError:
        raise _fail(path, "is too large to read into memory", "Crop or bin it first.") from None
    except Exception as error:  # the readers' own errors on damaged files vary by library
        raise _fail(path, f"could not be read as {suffix} ({type(error).__name__}: {error})", "The file may be corrupt or truncated; re-export it.") from error
    array = np.asarray(array)
    meta = {"format": suffix.lstrip("."), "original_dtype": str(array.dtype), "original_shape": list(array.shape), **meta}
    if array.size == 0:
        raise _fail(path, f"is empty (shape {array.shape})", "Check the export: it holds no pixels.")
    image = _checked_pixels(path, _select_frame(path, array, frame))
    sampling = _chosen_sampling(path, file_sampling, sampling_A_per_px, override_file_sampling, meta)
    if require_sampling and sampling is None:
        raise _fail(path, "has no pixel size in its metadata", "Pass sampling_A_per_px (A per pixel; e.g. 0.08), or --sampling on the command line.")
    check_frame_size(path, image.shape, sampling)
    return LoadedImage(image, sampling, meta, path)


def _checked_pixels(path: Path, array: np.ndarray) -> np.ndarray:
    """The frame as float32, refusing what is not a real-valued, finite, non-constant image."""
    if array.dtype == bool:
        raise _fail(path, "holds True/False values (a mask?), not intensities", "Load the micrograph itself, not a mask.")
    if np.iscomplexobj(array):
        raise _fail(path, f"holds complex numbers (dtype {array.dtype})", "Save the intensity (e.g. np.abs(image)) or the real part.")
    if not np.issubdtype(array.dtype, np.number):
        raise _fail(path, f"has dtype {array.dtype}, not real numbers", "Save the image as real-valued intensities.")
    image = array.astype(np.float32)
    bad = ~np.isfinite(image)
    if bad.any():
        raise _fail(path, f"contains {int(bad.sum())} NaN/inf pixels", "Replace them (e.g. np.nan_to_num or inpainting) before loading.")
    if image.max() == image.min():
        raise _fail(path, f"is constant (every pixel = {image.flat[0]})", "It holds no image; check the acquisition or the export.")
    return image


def _chosen_sampling(path: Path, file_sampling: float | None, given: float | None, override: bool, meta: dict) -> float | None:
    """The pixel size to use (the file's, unless the caller overrides it), recorded in ``meta``."""
    if file_sampling is not None:
        meta["file_sampling_A_per_px"] = file_sampling
    if file_sampling is not None and not (override and given is not None):
        try:
            sampling = check_sampling(file_sampling, f"{path}: pixel size in the file")
        except BadValueError as error:
            raise BadImageError(f"{error} Pass the right one with sampling_A_per_px (--sampling) to override it.") from None
        meta["sampling_source"] = "file"
        return sampling
    sampling = check_sampling(given)
    meta["sampling_source"] = "argument" if sampling is not None else "unknown"
    return sampling


def check_frame_size(path: str | os.PathLike, shape: tuple[int, ...], sampling_A_per_px: float | None) -> None:
    """Refuse frames too small to show a lattice: under :data:`MIN_SIDE_PX` px or :data:`MIN_FIELD_OF_VIEW_A` A on a side.

    >>> check_frame_size("a.npy", (256, 256), 0.1)
    >>> try:
    ...     check_frame_size("a.npy", (64, 64), 0.1)
    ... except BadImageError as error:
    ...     print(str(error).split(".")[1])
    npy: covers only 6
    """
    path = Path(path)
    height, width = shape
    if min(height, width) < MIN_SIDE_PX:
        raise _fail(path, f"is only {height}x{width} px", f"Atoms can only be found in frames of at least {MIN_SIDE_PX} px on each side; use a larger crop.")
    if sampling_A_per_px is not None and min(height, width) * sampling_A_per_px < MIN_FIELD_OF_VIEW_A:
        raise _fail(
            path,
            f"covers only {height * sampling_A_per_px:.3g} x {width * sampling_A_per_px:.3g} A at {sampling_A_per_px} A/px",
            f"A frame must span at least {MIN_FIELD_OF_VIEW_A:g} A (about four graphene lattice constants) on each side; check the pixel size.",
        )


def _select_frame(path: Path, array: np.ndarray, frame: int | None) -> np.ndarray:
    squeezed = array.squeeze() if array.ndim > 2 else array
    if squeezed.ndim == 3 and squeezed.shape[-1] in (3, 4) and squeezed.shape[0] > 4:  # RGB(A) pixels
        return _grey(path, squeezed)
    if squeezed.ndim == 2:
        if frame not in (None, 0):
            raise _fail(path, f"is a single 2D image, so frame={frame} does not exist", "Leave frame unset.")
        return squeezed
    if squeezed.ndim == 3:
        if frame is None:
            raise _fail(
                path,
                f"is a stack of {squeezed.shape[0]} frames of {squeezed.shape[1]}x{squeezed.shape[2]} px",
                f"Choose one with frame=0..{squeezed.shape[0] - 1}.",
            )
        if not -squeezed.shape[0] <= frame < squeezed.shape[0]:
            raise _fail(path, f"has {squeezed.shape[0]} frames, so frame={frame} is out of range", f"Use frame=0..{squeezed.shape[0] - 1}.")
        return squeezed[frame]
    raise _fail(path, f"has shape {array.shape}, not a 2D image or a 3D stack", "Export a single 2D frame.")


def _grey(path: Path, pixels: np.ndarray) -> np.ndarray:
    """A grey image stored as RGB(A): its one channel. A real colour image is refused: its
    brightness (a colour map, an annotation) is not the detector signal.

    >>> grey = np.arange(48 * 48).reshape(48, 48)
    >>> _grey(Path("a.png"), np.stack([grey] * 3, axis=-1)).shape
    (48, 48)
    """
    colour = pixels[..., :3]
    if np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2]):
        return colour[..., 0]
    raise _fail(
        path,
        f"is a colour image ({pixels.shape[2]} channels that differ): its brightness is a rendering, not the detector signal",
        "Export the raw grey-scale data (e.g. .tif or .npy from the microscope software).",
    )


def normalize_image(image: np.ndarray, low_percentile: float = 1.0, high_percentile: float = 99.0) -> np.ndarray:
    """Robust scaling to about [0, 1]: the percentiles map to 0 and 1, outliers are clipped.

    Works on one image (H, W) or a stack (n, H, W), each frame on its own.

    >>> out = normalize_image(np.arange(100.0).reshape(10, 10))
    >>> float(out.min()), float(out.max())
    (0.0, 1.0)
    """
    image = np.asarray(image, np.float32)
    if image.ndim not in (2, 3):
        raise ValueError(f"normalize_image expects (H, W) or (n, H, W), got shape {image.shape}")
    frames = image[None] if image.ndim == 2 else image
    low = np.percentile(frames, low_percentile, axis=(1, 2), keepdims=True)
    high = np.percentile(frames, high_percentile, axis=(1, 2), keepdims=True)
    scaled = np.clip((frames - low) / np.maximum(high - low, 1e-12), 0.0, 1.0)
    return scaled[0] if image.ndim == 2 else scaled


def experimental_dir() -> Path | None:
    """The folder of shared experimental images, or None when absent.

    ``$ELIT_EXPERIMENTAL_DIR`` when set (and None when it names no folder: the variable
    is obeyed, never silently replaced), else ``../shared/data/experimental`` beside the
    repository checkout, then beside the working folder.

    >>> folder = experimental_dir()
    >>> folder is None or folder.is_dir()
    True
    """
    if os.environ.get(EXPERIMENTAL_ENV):
        chosen = Path(os.environ[EXPERIMENTAL_ENV])
        return chosen if chosen.is_dir() else None
    candidates = []
    if (root := repository_root()) is not None:
        candidates.append(root.parent / "shared" / "data" / "experimental")
    candidates += [Path.cwd().parent / "shared" / "data" / "experimental", Path.cwd().parent.parent / "shared" / "data" / "experimental"]
    return next((c for c in candidates if c.is_dir()), None)
