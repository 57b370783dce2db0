"""Where generated data lives, and how it is written without ever losing data.

Generated data sets and trained ensembles are cached under a folder keyed by a
hash of the configuration that made them, with a JSON record of that
configuration and the package versions beside each entry.

The cache folder is, in order: ``$ELIT_CACHE``; ``data/cache/`` of the
repository when the package runs from a checkout; otherwise a user cache folder
(``$XDG_CACHE_HOME/elit-lab`` or ``~/.cache/elit-lab``), which is what a
notebook opened alone in Colab gets.

Every file is written atomically: to a temporary file in the same folder, flushed
to disk, given the mode the user's umask asks for (like any new file), then
renamed over the target (and the folder flushed), so an interrupted run or a
power cut never leaves half a file.

Example
-------
>>> import numpy as np, tempfile
>>> folder = tempfile.mkdtemp()
>>> arrays = cached_arrays("demo", {"n": 3}, lambda: {"x": np.arange(3)}, cache_root=folder)
>>> arrays["x"].tolist()
[0, 1, 2]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .config import CACHE_ENV, config_hash, to_jsonable

PACKAGE_ROOT = Path(__file__).resolve().parent
_UMASK_LOCK = threading.Lock()


def repository_root() -> Path | None:
    """The repository checkout the package runs from, or None when installed alone.

    >>> root = repository_root()
    >>> root is None or (root / "pyproject.toml").exists()
    True
    """
    candidate = PACKAGE_ROOT.parent
    if (candidate / "pyproject.toml").exists() and (candidate / "data").is_dir():
        return candidate
    return None


def cache_dir() -> Path:
    """The folder for generated data and trained models (created if missing).

    >>> cache_dir().is_dir()
    True
    """
    if os.environ.get(CACHE_ENV):
        folder = Path(os.environ[CACHE_ENV]).expanduser()
    elif (root := repository_root()) is not None:
        folder = root / "data" / "cache"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        folder = base / "elit-lab"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def current_umask() -> int:
    """The process's file-creation mask (umask), read without changing it where the OS allows.

    Linux shows it in ``/proc/self/status``; elsewhere it is read by setting and restoring it
    (under a lock, so that two threads of ours never race).

    >>> 0 <= current_umask() <= 0o777
    True
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk; a no-op where the OS does not allow it (Windows)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    If the block raises, the temporary file is removed and ``target`` is untouched.
    On success the file is flushed to disk, given mode ``0o666 & ~umask`` (the mode any
    new file gets; the temporary file itself is private, 0600), renamed, and the folder
    flushed.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_path(out) as tmp:
    ...     _ = tmp.write_text("hello")
    >>> out.read_text(), oct(out.stat().st_mode & 0o777) == oct(0o666 & ~current_umask())
    ('hello', True)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
        _fsync_folder(target.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (hex), as recorded for every member's weights and every example file.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "empty"; _ = path.write_bytes(b"")
    >>> file_sha256(path)[:12]
    'e3b0c44298fc'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically.

    >>> import tempfile, pathlib, json
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "r.json"
    >>> write_json_atomic(out, {"f1": 0.99})
    >>> json.loads(out.read_text())
    {'f1': 0.99}
    """
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_jsonable(data), indent=2, sort_keys=True, allow_nan=False) + "\n")


def save_npz_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Save arrays to a compressed ``.npz`` atomically (no pickled objects allowed).

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.npz"
    >>> save_npz_atomic(out, {"x": np.zeros(2)})
    >>> sorted(np.load(out).files)
    ['x']
    """
    for name, array in arrays.items():
        if np.asarray(array).dtype == object:
            raise TypeError(f"Array {name!r} has dtype object; only numeric arrays can be cached.")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)


def package_versions() -> dict[str, str]:
    """Versions of Python and the main libraries, for the records beside caches.

    >>> "numpy" in package_versions()
    True
    """
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("elit-lab", "numpy", "scipy", "torch", "atomai", "scikit-image"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def cached_arrays(
    kind: str,
    config: Any,
    build: Callable[[], dict[str, np.ndarray]],
    cache_root: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """Return the arrays made by ``build()`` for ``config``, from the cache when present.

    The entry is ``<cache>/<kind>/<hash>.npz`` with ``<hash>.json`` beside it
    (the configuration and package versions). A corrupt entry is rebuilt.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> float(cached_arrays("demo", {"n": 2}, lambda: {"x": np.ones(2)}, cache_root=folder)["x"].sum())
    2.0
    """
    key = config_hash(config)
    folder = Path(cache_root) if cache_root is not None else cache_dir()
    npz_path = folder / kind / f"{key}.npz"
    if npz_path.exists():
        try:
            with np.load(npz_path, allow_pickle=False) as stored:
                return {name: stored[name] for name in stored.files}
        except (OSError, ValueError, zipfile.BadZipFile):  # a damaged entry: rebuild it below
            pass
    arrays = build()
    save_npz_atomic(npz_path, arrays)
    write_json_atomic(
        npz_path.with_suffix(".json"),
        {"kind": kind, "config_hash": key, "config": config, "versions": package_versions()},
    )
    return arrays
