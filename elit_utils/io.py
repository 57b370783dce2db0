"""Reading microscope images from files, with clear errors, and normalising them.

:func:`load_image` reads ``.npy``, ``.tif``/``.tiff``, ``.png``, ``.h5``/``.hdf5``
and, through rosettasciio, ``.dm3``/``.dm4``/``.emd``. It returns a
:class:`LoadedImage`: a 2D float32 array, its pixel size in A (from the file's
metadata when it has one, else from the argument) and the source metadata.

Bad input raises :class:`ImageLoadError` naming the file and the fix.

Example
-------
>>> import numpy as np, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "frame.npy"
>>> np.save(path, np.random.default_rng(0).random((32, 32)))
>>> loaded = load_image(path, sampling_A_per_px=0.1)
>>> loaded.image.shape, loaded.image.dtype.name, loaded.sampling_A_per_px
((32, 32), 'float32', 0.1)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .cache import repository_root
from .config import EXPERIMENTAL_ENV

SUPPORTED_SUFFIXES = (".npy", ".tif", ".tiff", ".png", ".h5", ".hdf5", ".dm3", ".dm4", ".emd")
#: Pixel sizes outside this range (A/px) are almost surely in the wrong unit.
PLAUSIBLE_SAMPLING_A_PER_PX = (0.01, 5.0)
_UNIT_TO_A = {"a": 1.0, "å": 1.0, "angstrom": 1.0, "nm": 10.0, "pm": 0.01, "um": 1e4, "µm": 1e4, "μm": 1e4}


class ImageLoadError(ValueError):
    """An image file could not be used; the message names the file and the fix."""


@dataclass(frozen=True)
class LoadedImage:
    """A 2D micrograph read from a file.

    Attributes
    ----------
    image: (H, W) float32.
    sampling_A_per_px: pixel size in A, or None when neither file nor caller gave one.
    metadata: what the file said about itself (format, axes, original dtype, ...).
    path: the file it came from.
    """

    image: np.ndarray
    sampling_A_per_px: float | None
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def check_sampling(sampling_A_per_px: float | None, source: str = "sampling_A_per_px") -> float | None:
    """Check a pixel size in A/px; catch values that look like nm or pm.

    >>> check_sampling(0.08)
    0.08
    >>> check_sampling(0.02)  # unusually fine, but possible
    0.02
    """
    if sampling_A_per_px is None:
        return None
    value = float(sampling_A_per_px)
    low, high = PLAUSIBLE_SAMPLING_A_PER_PX
    if not np.isfinite(value) or value <= 0:
        raise ImageLoadError(f"{source}={sampling_A_per_px!r} is not a positive pixel size in A/px.")
    if not low <= value <= high:
        hint = "nm/px? multiply by 10" if value < low else "pm/px? divide by 100"
        raise ImageLoadError(f"{source}={value} A/px is outside {low}-{high} A/px; is it in the wrong unit ({hint}).")
    return value


def _fail(path: Path, problem: str, fix: str) -> ImageLoadError:
    return ImageLoadError(f"{path}: {problem}. {fix}")


def _read_npy(path: Path, dataset: str | None) -> tuple[np.ndarray, float | None, dict]:
    return np.load(path, allow_pickle=False), None, {}


def _read_png(path: Path, dataset: str | None) -> tuple[np.ndarray, float | None, dict]:
    from PIL import Image

    with Image.open(path) as picture:
        mode = picture.mode
        array = np.asarray(picture.convert("F") if mode in ("RGB", "RGBA", "P", "LA") else picture)
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
    return array, (float(sampling) if sampling is not None else None), {"dataset": dataset, "attrs": {k: str(v) for k, v in attrs.items()}}


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
) -> LoadedImage:
    """Read one 2D micrograph as float32 with its pixel size in A.

    Parameters
    ----------
    path: the file (.npy, .tif/.tiff, .png, .h5/.hdf5, .dm3/.dm4/.emd).
    sampling_A_per_px: pixel size to use when the file has none (the file's own wins).
    frame: which frame of a 3D stack to take.
    dataset: which dataset of an HDF5 file (or titled image of an EMD file).
    require_sampling: raise when no pixel size is known.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "stack.npy"
    >>> np.save(path, np.random.default_rng(0).random((3, 16, 16)))
    >>> load_image(path, frame=2).image.shape
    (16, 16)
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file. Check the path (relative paths start at {Path.cwd()}).")
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        raise _fail(path, f"unknown image format {suffix or '(no suffix)'!r}", f"Convert it to one of: {', '.join(SUPPORTED_SUFFIXES)}.")
    try:
        array, file_sampling, meta = _READERS[suffix](path, dataset)
    except ImageLoadError:
        raise
    except Exception as error:  # the readers' own errors on damaged files vary by library
        raise _fail(path, f"could not be read as {suffix} ({type(error).__name__}: {error})", "The file may be corrupt or truncated; re-export it.") from error
    array = np.asarray(array)
    meta = {"format": suffix.lstrip("."), "original_dtype": str(array.dtype), "original_shape": list(array.shape), **meta}
    array = _select_frame(path, array, frame)
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise _fail(path, f"has dtype {array.dtype}, not real numbers", "Save the image as real-valued intensities.")
    image = array.astype(np.float32)
    bad = ~np.isfinite(image)
    if bad.any():
        raise _fail(path, f"contains {int(bad.sum())} NaN/inf pixels", "Replace them (e.g. np.nan_to_num or inpainting) before loading.")
    if image.max() == image.min():
        raise _fail(path, f"is constant (every pixel = {image.flat[0]})", "It holds no image; check the acquisition or the export.")
    sampling = check_sampling(file_sampling, f"{path} pixel size") if file_sampling is not None else check_sampling(sampling_A_per_px)
    meta["sampling_source"] = "file" if file_sampling is not None else ("argument" if sampling is not None else "unknown")
    if require_sampling and sampling is None:
        raise _fail(path, "has no pixel size in its metadata", "Pass sampling_A_per_px (A per pixel; e.g. 0.08), or --sampling on the command line.")
    return LoadedImage(image, sampling, meta, path)


def _select_frame(path: Path, array: np.ndarray, frame: int | None) -> np.ndarray:
    squeezed = array.squeeze() if array.ndim > 2 else array
    if squeezed.ndim == 3 and squeezed.shape[-1] in (3, 4) and squeezed.shape[0] > 4:  # RGB(A) pixels
        return squeezed[..., :3].mean(axis=-1)
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

    Looks at ``$ELIT_EXPERIMENTAL_DIR``, then ``../shared/data/experimental``
    beside the repository checkout, then beside the working folder.

    >>> folder = experimental_dir()
    >>> folder is None or folder.is_dir()
    True
    """
    candidates = []
    if os.environ.get(EXPERIMENTAL_ENV):
        candidates.append(Path(os.environ[EXPERIMENTAL_ENV]))
    if (root := repository_root()) is not None:
        candidates.append(root.parent / "shared" / "data" / "experimental")
    candidates += [Path.cwd().parent / "shared" / "data" / "experimental", Path.cwd().parent.parent / "shared" / "data" / "experimental"]
    return next((c for c in candidates if c.is_dir()), None)
