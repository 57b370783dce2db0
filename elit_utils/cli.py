"""The ``elit`` command line: ``reproduce``, ``simulate``, ``train``, ``predict``, ``adapt``, ``watch``, ``info``.

Run ``elit --help`` or ``elit SUBCOMMAND --help``.

Every command checks its inputs, its values and its output folder before it
computes anything, and writes its outputs at the end (``predict`` and
``simulate`` through a hidden staging folder inside ``--out``), so a bad input
never costs a long run and a failure never leaves half the results.

Every problem a user can fix is printed as one line, ``error: ...``, with exit
code 2; ``elit --debug COMMAND ...`` shows the traceback instead. Ctrl-C exits
with code 130 and one line saying what was kept and how to resume.

Example
-------
>>> main(["simulate", "-n", "0", "--out", "unused"])
Traceback (most recent call last):
...
SystemExit: 2
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from .config import MAX_WORK_PX, PROFILES
from .errors import BadImageError, BadModelFolderError, BadValueError, ElitError, OutputConflictError

#: The largest simulated frame side, and the smallest.
MAX_SIDE_PX = 4096
MIN_SIDE_PX = 32
#: The most images one ``simulate`` or ``train`` may make, and the most pixels all together.
MAX_IMAGES = 10_000
MAX_SIMULATED_PX = 2**28
MAX_MEMBERS = 100
MAX_ITERATIONS = 1_000_000
MAX_ROUNDS = 100
#: Resampling a frame to the model's pixel size by more than this factor (either way) needs --allow-resample.
MAX_RESAMPLE_FACTOR = 4.0
#: Names of outputs: each input's results are named after its full file name plus these.
PREDICT_SUFFIXES = (".csv", ".png")
#: The name of each input's "do not trust" mask (8-bit PNG, 255 untrusted), after its full file name; written
#: when the model folder has trust regions.
UNTRUSTED_SUFFIX = "_untrusted.png"
FRAMES_FILE = "frames.csv"
#: The record of a ``predict --scheduler`` run in its --out: model, options, frames, and the frames done (resumable).
PREDICT_RUN_FILE = "predict_run.json"
#: A hidden folder in that --out where each worker leaves a finished frame's row of the summary (NAME.row), after its
#: outputs: a rerun then knows every frame finished, even one whose result had not reached ``elit predict`` when it stopped.
PREDICT_ROWS_FOLDER = ".predict_rows"


# --------------------------------------------------------------------------- messages


def _printable(text: str) -> str:
    """``text`` with undecodable file-name bytes shown as U+FFFD, so that printing it never fails.

    >>> _printable("caf\\udce9.npy")
    'caf\ufffd.npy'
    """
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _shown(path: str | os.PathLike) -> str:
    """A path as text that can be printed, plotted and written to a CSV."""
    return _printable(os.fspath(path))


def _one_line(text: str) -> str:
    """``text`` on one line (newlines and runs of spaces become one space).

    >>> _one_line("a\\n  b")
    'a b'
    """
    return _printable(" ".join(str(text).split()))


def _say(text: str, error: bool = False) -> None:
    print(_printable(text), file=sys.stderr if error else sys.stdout, flush=True)


def _message(error: BaseException) -> str:
    """One line for an exception: its own message, or for an OS error its reason and file."""
    if isinstance(error, MemoryError):
        return "out of memory (MemoryError); use fewer or smaller images."
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        return _one_line(f"{_shown(error.filename)}: {error.strerror}")
    return _one_line(str(error) or type(error).__name__)


def _interrupted(args: argparse.Namespace) -> str:
    """What Ctrl-C leaves behind, and how to go on, for each command."""
    out = _shown(getattr(args, "out", "") or "")
    return {
        "train": f"stopped: finished members are kept in {out}/; rerun the same command to resume.",
        "adapt": f"stopped: finished rounds are kept in {out}/; rerun the same command to resume.",
        "predict": f"stopped: the frames finished so far are kept in {out}/ ({PREDICT_RUN_FILE}); rerun the same command to finish the rest."
        if getattr(args, "scheduler", None)
        else f"stopped: nothing was written to {out}/; rerun the same command to start again.",
        "simulate": f"stopped: nothing was written to {out}/; rerun the same command to start again.",
        "reproduce": f"stopped: the notebooks run so far are in {out}/notebooks/ (an earlier metrics.json is kept as metrics.<time>.json); "
        "rerun the same command to start again.",
    }.get(args.command, "stopped.")


# --------------------------------------------------------------------------- values


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line gets one line (``error: ...``) and exit code 2, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, _printable(f"error: {message} (see {self.prog} --help)\n"))


def _whole(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``.

    >>> _whole(1, 100)("3")
    3
    >>> _whole(1, 100)("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: 0 is out of range: use 1 to 100
    """

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: use {low} to {high}")
        return value

    return whole


def _probability(text: str) -> float:
    """An argparse type: a probability strictly between 0 and 1.

    >>> _probability("0.5")
    0.5
    >>> _probability("nan")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: 'nan' is not a probability strictly between 0 and 1 (e.g. 0.5)
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value < 1):
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability strictly between 0 and 1 (e.g. 0.5)")
    return value


def _share(text: str) -> float:
    """An argparse type: a share from 0 to 1.

    >>> _share("0.5")
    0.5
    >>> _share("2")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: '2' is not a share from 0 to 1 (e.g. 0.5)
    """
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise argparse.ArgumentTypeError(f"{text!r} is not a share from 0 to 1 (e.g. 0.5)")
    return value


def _sampling(text: str) -> float | str:
    """An argparse type: a pixel size in A/px (0.01 to 5), or ``auto`` (measured from the graphene lattice).

    >>> _sampling("0.1"), _sampling("AUTO")
    (0.1, 'auto')
    """
    if text.strip().lower() == "auto":
        return "auto"
    from .io import check_sampling

    try:
        return check_sampling(text, "--sampling")
    except BadValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# --------------------------------------------------------------------------- output folders


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists."""
    for candidate in (path, *path.parents):
        try:
            os.stat(candidate)
        except FileNotFoundError:
            continue
        return candidate
    return Path(path.anchor or ".")


def _check_out_folder(out: Path, option: str = "--out") -> None:
    """Refuse, before any work, an output folder that cannot receive files: a file, a
    broken link or a loop of links, a place where nothing can be written.

    >>> _check_out_folder(Path(tempfile.mkdtemp()) / "new" / "folder")
    """
    shown = _shown(out)
    try:
        mode = os.stat(out).st_mode
    except FileNotFoundError:
        if out.is_symlink():
            raise BadValueError(f"{option} {shown} is a symbolic link to a missing target; remove it or choose another folder.") from None
        ancestor = _nearest_existing(out.absolute())
        if not ancestor.is_dir():
            raise OutputConflictError(f"{option} {shown} cannot be created: {_shown(ancestor)} is a file, not a folder.") from None
        _check_writable(ancestor, f"{option} {shown} cannot be created in {_shown(ancestor)}")
        return
    except OSError as error:
        raise BadValueError(f"{option} {shown} cannot be used ({error.strerror}); choose another folder.") from None
    if not stat.S_ISDIR(mode):
        raise OutputConflictError(f"{option} {shown} is a file, not a folder; choose a folder (it is created if missing).")
    _check_writable(out, f"{option} {shown} is not writable")


def _check_writable(folder: Path, problem: str) -> None:
    """Create and delete a file in ``folder``: the one sure test (permissions, ACLs, read-only disks)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise BadValueError(f"{problem} ({error.strerror}); choose another folder.") from None


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first (what ``mkdir -p`` would create)."""
    missing = []
    for candidate in (folder, *folder.parents):
        if os.path.lexists(candidate):
            break
        missing.append(candidate)
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders a failed command created, deepest first, as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (links and ``..`` included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        try:
            return a.absolute().resolve() == b.absolute().resolve()
        except (OSError, RuntimeError):
            return False


def _output_files(paths: list[Path], folder: Path, suffixes: tuple[str, ...], reserved: tuple[str, ...] = ()) -> dict[Path, list[Path]]:
    """Each input's output files in ``folder``, named after its full file name (``a.npy`` -> ``a.npy.csv``),
    refusing an input given twice and two inputs of one name (from two folders).

    >>> files = _output_files([Path("x/a.npy"), Path("a.tif")], Path("out"), (".csv",))
    >>> [target.name for targets in files.values() for target in targets]
    ['a.npy.csv', 'a.tif.csv']
    """
    owner: dict[str, Path | None] = dict.fromkeys(reserved)
    files = {}
    for path in paths:
        names = [_shown(path.name) + suffix for suffix in suffixes]
        for name in names:
            if name in owner:
                other = owner[name]
                if other is not None and _same_file(other, path):
                    raise OutputConflictError(f"{_shown(path)} is given twice; name each file once.")
                with_what = f"{_shown(other)} and {_shown(path)} would both write" if other is not None else f"{_shown(path)} would overwrite"
                raise OutputConflictError(f"{with_what} {_shown(folder / name)}; rename one of them or run them separately.")
            owner[name] = path
        files[path] = [folder / name for name in names]
    return files


def _check_targets(targets: list[Path], inputs: list[Path], overwrite: bool) -> None:
    """Refuse an output that is an input (whatever --overwrite says), a folder, or (without --overwrite) any existing file."""
    for target in targets:
        for path in inputs:
            if _same_file(target, path):
                raise OutputConflictError(f"{_shown(target)} would replace the input {_shown(path)}; choose another --out (--overwrite never replaces inputs).")
        if target.is_dir():
            raise OutputConflictError(f"{_shown(target)} is a folder where an output file would go; move it or choose another --out.")
    existing = [_shown(t) for t in targets if os.path.lexists(t)]
    if existing and not overwrite:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        verb = "exists" if len(existing) == 1 else "exist"
        raise OutputConflictError(f"{', '.join(existing[:3])}{more} already {verb}; choose another --out or pass --overwrite.")


def _move_into(staging: Path, folder: Path, overwrite: bool) -> list[str]:
    """Move every file of ``staging`` into ``folder``; return their names.

    With ``overwrite`` each file replaces its target (an atomic rename). Without it, each is
    hard-linked into place, which fails rather than replace a file that appeared meanwhile (another
    run writing into the same folder at the same time): then the files this call placed are taken
    back and nothing of the other run's is lost.
    """
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in staging.iterdir())
    if overwrite:
        for name in names:
            os.replace(staging / name, folder / name)
        return names
    placed = []
    try:
        for name in names:
            os.link(staging / name, folder / name)
            placed.append(folder / name)
    except FileExistsError as error:
        for path in placed:
            path.unlink(missing_ok=True)
        raise OutputConflictError(
            f"{_shown(Path(error.filename2 or folder / name))} appeared while this command ran (another run writing into {_shown(folder)}?); "
            "nothing of this run was kept: rerun it into another --out."
        ) from None
    return names


# --------------------------------------------------------------------------- frames for predict and adapt


@dataclass(frozen=True)
class _Frame:
    """One checked frame: its file, a printable name, the image and its pixel size."""

    path: Path
    name: str
    image: Any
    sampling_A_per_px: float


def _model_record(model: Path) -> dict:
    """The model folder's ``ensemble.json``, checked enough to plan the work (pixel size, members)."""
    from .ensemble import RECORD_FILE
    from .io import check_sampling

    shown = _shown(model)
    if not model.exists():
        raise BadModelFolderError(f"--model {shown}: no such folder; train one with elit train --out {shown}.")
    if not model.is_dir():
        raise BadModelFolderError(f"--model {shown} is a file, not a model folder written by elit train.")
    path = model / RECORD_FILE
    if not path.is_file():
        raise BadModelFolderError(f"--model {shown} has no {RECORD_FILE}: not a model folder written by elit train.")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadModelFolderError(f"{_shown(path)} is not valid JSON ({error}); the model folder is damaged: retrain into a fresh folder.") from None
    missing = [key for key in ("architecture", "sampling_A_per_px") if not isinstance(record, dict) or key not in record]
    if missing:
        raise BadModelFolderError(f"{_shown(path)} lacks {', '.join(missing)}: not written by elit train, or damaged; retrain into a fresh folder.")
    try:
        check_sampling(record["sampling_A_per_px"], f"{_shown(path)}: sampling_A_per_px")
    except BadValueError as error:
        raise BadModelFolderError(f"{error} The model folder is damaged; retrain into a fresh folder.") from None
    if not any(model.glob("member_*.json")):
        raise BadModelFolderError(f"--model {shown} holds no finished members; run elit train --out {shown} to train them (an interrupted run resumes).")
    return record


def _model_classes(record: dict) -> int:
    """The model's output classes as its record states them (1 when it does not say: loading checks the architecture).

    >>> _model_classes({"architecture": {"nb_classes": 2}}), _model_classes({"architecture": "damaged"})
    (2, 1)
    """
    architecture = record["architecture"]
    classes = architecture.get("nb_classes", 1) if isinstance(architecture, dict) else 1
    return classes if isinstance(classes, int) and not isinstance(classes, bool) else 1


def _load_frames(paths: list[Path], args: argparse.Namespace, model_sampling: float) -> list[_Frame]:
    """Read and check every frame, its pixel size and its scale against the model's, before any work."""
    from .io import load_image

    frames = []
    for path in paths:
        given = args.sampling if isinstance(args.sampling, float) else None
        loaded = load_image(path, sampling_A_per_px=given, frame=args.frame, require_sampling=args.sampling is None, override_file_sampling=True)
        sampling = _frame_sampling(path, loaded, args.sampling)
        _check_scale(_shown(path), loaded.image.shape, sampling, model_sampling, args.allow_resample)
        frames.append(_Frame(path, _shown(path.name), loaded.image, sampling))
    return frames


def _frame_sampling(path: Path, loaded: Any, given: float | str | None) -> float:
    """The frame's pixel size: ``--sampling`` when given (warning when the file says otherwise), the
    lattice's estimate for ``auto``, else the file's; warns when the lattice disagrees."""
    from . import lattice
    from .io import check_frame_size, check_sampling

    shown = _shown(path)
    in_file = loaded.metadata.get("file_sampling_A_per_px")
    if given == "auto":
        try:
            estimate = lattice.estimate_sampling(loaded.image).sampling_A_per_px
        except BadImageError as error:
            raise BadImageError(f"{shown}: --sampling auto found no graphene lattice ({_one_line(str(error))}); give --sampling in A/px.") from None
        estimate = check_sampling(estimate, f"{shown}: the lattice's pixel size")
        also = f" (the file says {in_file:g})" if in_file else ""
        _say(f"note: {shown}: --sampling auto: {estimate:.4g} A/px from the graphene lattice{also}", error=True)
        check_frame_size(path, loaded.image.shape, estimate)
        return estimate
    sampling = loaded.sampling_A_per_px
    if isinstance(given, float) and in_file and abs(given / in_file - 1) > 0.02:
        _say(f"warning: {shown}: --sampling {given:g} A/px differs from the file's {in_file:g} A/px; using --sampling {given:g} as given.", error=True)
    warning = lattice.compare_with_lattice(loaded.image, sampling)  # None where it agrees or shows no lattice
    if warning:
        _say(f"warning: {shown}: {warning}", error=True)
    return sampling


def _check_scale(name: str, shape: tuple[int, int], sampling_A_per_px: float, model_sampling_A_per_px: float, allow_resample: bool) -> tuple[int, int]:
    """The frame's shape at the model's pixel size; refuses a change of scale over 4x (unless allowed),
    a frame too large to predict in reasonable time, or one too small to hold a lattice.

    >>> _check_scale("a.npy", (256, 256), 0.2, 0.1, False)
    (512, 512)
    >>> try:
    ...     _check_scale("a.npy", (256, 256), 5.0, 0.1, False)
    ... except BadValueError as error:
    ...     print(str(error).split(", so")[0])
    a.npy: its pixel size 5 A/px is 50 times the model's 0.1 A/px
    """
    factor = sampling_A_per_px / model_sampling_A_per_px
    height, width = shape if abs(factor - 1) <= 0.02 else (max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor)))
    if not allow_resample and not 1 / MAX_RESAMPLE_FACTOR <= factor <= MAX_RESAMPLE_FACTOR:
        raise BadValueError(
            f"{name}: its pixel size {sampling_A_per_px:g} A/px is {factor:.3g} times the model's {model_sampling_A_per_px:g} A/px, "
            f"so the frame would be resampled from {shape[0]}x{shape[1]} to {height}x{width} px; "
            "is --sampling in the wrong unit (it is in A/px)? If it is right, pass --allow-resample."
        )
    if height * width > MAX_WORK_PX:
        side = math.isqrt(MAX_WORK_PX)
        raise BadValueError(
            f"{name}: at the model's pixel size ({model_sampling_A_per_px:g} A/px) the frame would be {height}x{width} px, over the limit of {side}x{side} px; "
            "crop or bin it first (or check --sampling)."
        )
    if min(height, width) < MIN_SIDE_PX:
        raise BadImageError(
            f"{name}: at the model's pixel size ({model_sampling_A_per_px:g} A/px) the frame would be only {height}x{width} px; "
            f"at least {MIN_SIDE_PX} px per side are needed (or check --sampling)."
        )
    return height, width


# --------------------------------------------------------------------------- commands


def _reproduce(args: argparse.Namespace) -> int:
    from .reproduce import reproduce

    _check_out_folder(Path(args.out))
    reproduce(profile=args.profile, out=args.out, notebook_dir=args.notebooks, log_output=args.verbose)
    return 0


def _simulate(args: argparse.Namespace) -> int:
    import numpy as np

    from .cache import atomic_path, save_npz_atomic, write_json_atomic
    from .config import to_jsonable
    from .simulate import dataset, get_domain

    side = args.size or get_domain(args.domain).conditions.image_size_px
    total = args.n * side * side
    if total > MAX_SIMULATED_PX:
        raise BadValueError(f"-n {args.n} images of {side}x{side} px are {total:,} px, over the limit of {MAX_SIMULATED_PX:,}; make fewer or smaller ones.")
    out = Path(args.out)
    _check_out_folder(out)
    targets = [out / "dataset.npz", out / "atoms.csv", out / "conditions.json"]
    _check_targets(targets, [], args.overwrite)
    data = dataset(args.domain, args.n, seed=args.seed, image_size_px=args.size, cache=False)
    sampling = data.conditions.sampling_A_per_px
    rows = ["frame,row_px,col_px,class,class_name,y_A,x_A"]
    rows += [f"{int(f)},{r:.3f},{c:.3f},{int(k)},{'Si' if k else 'C'},{r * sampling:.3f},{c * sampling:.3f}" for f, r, c, k in data.atoms]
    conditions = {"domain": data.domain, "n": len(data), "seed": data.seed, "conditions": to_jsonable(data.conditions), "sample": to_jsonable(data.sample)}

    def write(staging: Path) -> None:
        save_npz_atomic(staging / targets[0].name, {"images": data.images, "label_mask": data.label_mask, "atoms": data.atoms})
        with atomic_path(staging / targets[1].name) as tmp:
            tmp.write_text("\n".join(rows) + "\n")
        write_json_atomic(staging / targets[2].name, conditions)

    _write_staged(out, write, args.overwrite)
    n_si = int(np.sum(data.atoms[:, 3] == 1))
    _say(f"Wrote {len(data)} images of {data.images.shape[1]}x{data.images.shape[2]} px ({len(data.atoms)} atoms, {n_si} Si) to {_shown(out)}/")
    return 0


def _write_staged(out: Path, write: Callable[[Path], None], overwrite: bool, into: Path | None = None) -> list[str]:
    """Run ``write(staging)`` in a hidden staging folder inside ``out``, then move its files into
    ``into`` (default ``out``). On any failure nothing is left: no staging folder, and no ``out``
    when this call created it."""
    created = _missing_folders(out)
    staging, done = None, False
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{os.getpid()}-", dir=out))
        write(staging)
        names = _move_into(staging, into or out, overwrite)
        done = True
        return names
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if not done:
            _remove_if_empty(created)


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .clutter import ensure_trust_regions
    from .config import TRUST_REGIONS_FILE, get_profile
    from .distributed import parse_scheduler
    from .ensemble import check_planned_members, profile_training, simulated_training_data, train_ensemble
    from .ood import SHIFT_DETECTOR_FILE, ensure_shift_detector

    out = Path(args.out)
    _check_out_folder(out)
    profile = get_profile(args.profile)
    architecture, config = profile_training(profile)
    architecture = replace(architecture, nb_classes=args.classes)
    if args.iterations is not None:
        config = replace(config, n_iterations=args.iterations, swa_iterations=min(config.swa_iterations, args.iterations))
    members = args.members or profile.n_members
    if args.dopant_rich_share and args.classes != 2:
        raise BadValueError(f"--dopant-rich-share {args.dopant_rich_share:g} is for two-class models (Si frames teach Si); add --classes 2.")
    check_planned_members(out, members, first_seed=args.seed * 1000, resize=args.resize)  # before any data is made
    if args.scheduler:
        parse_scheduler(args.scheduler)  # a bad spec is refused before any data is made
    created = _missing_folders(out)
    try:
        n_images = args.images or profile.n_train_images
        images, masks, sampling = simulated_training_data(args.domain, n_images, args.seed, profile.image_size_px, args.classes, args.dopant_rich_share)
        kind = "two-class (atom, Si) " if args.classes == 2 else ""
        mix = f" ({args.dopant_rich_share:.0%} of them dopant_rich)" if args.dopant_rich_share else ""
        _say(f"Training {members} {kind}members on {n_images} {args.domain} images{mix} ({profile.name} profile) into {_shown(out)}/")
        with _client(args.scheduler) as client:
            ensemble = train_ensemble(
                images,
                masks,
                out,
                members,
                sampling,
                architecture,
                config,
                first_seed=args.seed * 1000,
                resize=args.resize,
                client=client,
            )
    except Exception:
        _remove_if_empty(created)
        raise
    final = ensemble.loss_histories()[-10:].mean(axis=0)
    _say(f"Done: {ensemble.n_members} members; final loss per member: {', '.join(f'{v:.3f}' for v in final)}")
    # fitted on fresh frames of the training domain (not the training images); refitted when missing or fitted on other members
    fresh = (profile.n_shift_reference_images, args.seed + 4000, profile.image_size_px, args.domain)
    detector, fitted = ensure_shift_detector(ensemble, *fresh)
    if fitted:
        _say(f"Shift detector fitted on {profile.n_shift_reference_images} fresh {args.domain} frames (limit {detector.limit:.1f}) -> {SHIFT_DETECTOR_FILE}")
    trust, fitted = ensure_trust_regions(ensemble, *fresh)  # the same fresh frames' settings as the shift detector
    if fitted:
        _say(
            f"Trust regions fitted on {profile.n_shift_reference_images} fresh {args.domain} frames "
            f"(smoothed entropy over {trust.limit_nats:.3f} nats: {trust.source_area:.0%} of their area) -> {TRUST_REGIONS_FILE}"
        )
    return 0


def _client(scheduler: str | None) -> contextlib.AbstractContextManager:
    """A Dask client for ``--scheduler`` (closed, with the cluster it started, on exit), or None without one."""
    if not scheduler:
        return contextlib.nullcontext()
    from .distributed import client_for

    return client_for(scheduler)


def _image_files(arguments: list[str]) -> list[Path]:
    """The image files named on the command line, each folder replaced by the image files in it (sorted by name).

    In a folder, a file counts as an image when :mod:`elit_utils.io` reads its suffix, except hidden files
    (an unfinished atomic write) and the outputs of another file there (``a.npy.png``, ``a.npy_untrusted.png``),
    so that a folder predicted into itself can be predicted again. A file named on its own is always taken.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in ("b.npy", "a.tif", "a.tif.png", "notes.txt", ".a.npy.tmp"):
    ...     _ = (folder / name).write_bytes(b"")
    >>> [path.name for path in _image_files([str(folder)])]  # doctest: +ELLIPSIS
    note: ...: 2 image files; 2 other files skipped (not images, or outputs of an earlier run)
    ['a.tif', 'b.npy']
    """
    from .io import SUPPORTED_SUFFIXES

    paths: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if not path.is_dir():
            paths.append(path)
            continue
        files = sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith("."))
        names = {f.name for f in files}
        outputs = {f.name + suffix for f in files for suffix in (*PREDICT_SUFFIXES, UNTRUSTED_SUFFIX)}
        images = [f for f in files if f.suffix.lower() in SUPPORTED_SUFFIXES and f.name not in outputs]
        if not images:
            raise BadImageError(
                f"{_shown(path)}: is a folder with no image files in it ({' '.join(SUPPORTED_SUFFIXES)}); name the image files, or their folder."
            )
        skipped = len(names) - len(images)
        if skipped:
            _say(f"note: {_shown(path)}: {len(images)} image files; {skipped} other files skipped (not images, or outputs of an earlier run)")
        paths.extend(images)
    return paths


def _predict(args: argparse.Namespace) -> int:
    from .ensemble import Ensemble

    paths, out, model = _image_files(args.images), Path(args.out), Path(args.model)
    _check_out_folder(out)
    if args.scheduler:
        return _predict_on_workers(args, paths, out, model)
    suffixes = PREDICT_SUFFIXES + ((UNTRUSTED_SUFFIX,) if _has_trust_regions(model) else ())
    outputs = _output_files(paths, out, suffixes, reserved=(FRAMES_FILE,))
    _check_targets([t for files in outputs.values() for t in files] + [out / FRAMES_FILE], paths, args.overwrite)
    record = _model_record(model)
    _check_classes(model, record, args.classes)
    frames = _load_frames(paths, args, float(record["sampling_A_per_px"]))
    ensemble = Ensemble.load(model)
    detector, trust = _shift_detector(model, ensemble), _trust_regions(model, ensemble)
    summaries: list[str] = []
    names = _write_staged(out, lambda staging: summaries.extend(_predict_into(staging, frames, ensemble, detector, args.threshold, trust)), args.overwrite)
    for line in summaries:
        _say(line)
    if trust is None and args.overwrite:  # a mask of an earlier run would pass for this run's
        for stale in (out / f"{frame.name}{UNTRUSTED_SUFFIX}" for frame in frames):
            if stale.exists():
                stale.unlink()
                _say(f"removed {_shown(stale)}: an earlier run's mask, which this model (without trust regions) does not replace")
    masks = f", NAME{UNTRUSTED_SUFFIX} (where not to trust the atoms)" if trust is not None else ""
    _say(f"Wrote {len(names)} files to {_shown(out)}/: per image NAME.csv (atoms) and NAME.png (plot){masks}, and {FRAMES_FILE}")
    return 0


def _check_classes(model: Path, record: dict, classes: int | None) -> None:
    """Refuse ``--classes`` that the model does not have (before any work); None: any model."""
    trained = _model_classes(record)
    if classes is not None and classes != trained:
        remedy = "train one with elit train --classes 2" if classes == 2 else "leave out --classes"
        raise BadValueError(
            f"--classes {classes}: {_shown(model)} is a {trained}-class model ({'atom' if trained == 1 else 'atom and Si'}); "
            f"{remedy}, or pass --model of a {classes}-class model."
        )


def _has_trust_regions(model: Path) -> bool:
    from .config import TRUST_REGIONS_FILE

    return (model / TRUST_REGIONS_FILE).exists()


def _trust_regions(model: Path, ensemble: object) -> object | None:
    """The model folder's trust regions (checked against ``ensemble``'s members), or None (with a note) when it has none."""
    from .config import TRUST_REGIONS_FILE

    if not _has_trust_regions(model):
        _say(f"note: {_shown(model)} has no {TRUST_REGIONS_FILE} (elit train writes one), so no NAME{UNTRUSTED_SUFFIX} masks are written.")
    return _trust_regions_or_none(model, ensemble)


def _trust_regions_or_none(model: Path, ensemble: object) -> object | None:
    """The model folder's trust regions (checked against ``ensemble``'s members), or None when it has none."""
    from .clutter import TrustRegions
    from .config import TRUST_REGIONS_FILE

    return TrustRegions.load(model / TRUST_REGIONS_FILE, ensemble=ensemble) if _has_trust_regions(model) else None


def _frame_atoms(prediction: Any, threshold: float, trust: Any | None) -> tuple[Any, Any | None]:
    """One frame's atoms (with ``trusted`` where there are trust regions) and its "do not trust" mask (None without)."""
    from .locate import locate_atoms

    atoms = locate_atoms(prediction, threshold=threshold)
    if trust is None:
        return atoms, None
    untrusted = trust.untrusted(prediction)
    return atoms.with_trust(untrusted), untrusted


def _write_untrusted(path: Path, untrusted: Any) -> None:
    """Write a "do not trust" mask as an 8-bit PNG (255 untrusted, 0 trusted), atomically."""
    import numpy as np
    from PIL import Image

    from .cache import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(np.where(untrusted, 255, 0).astype(np.uint8)).save(tmp, format="PNG")


def _untrusted_note(atoms: Any) -> str:
    """`` (k in untrusted regions)`` for a line of output, or nothing without trust regions."""
    return "" if atoms.trusted is None else f" ({int((~atoms.trusted).sum())} in untrusted regions)"


SUMMARY_HEADER = "image,atoms,mean_mi_nats,feature_distance,flag_limit,out_of_distribution"


def _predict_frame(folder: Path, frame: _Frame, ensemble: Any, detector: Any | None, threshold: float, trust: Any | None) -> tuple[str, str]:
    """Find one frame's atoms and write its "do not trust" mask (with ``trust``), its plot and then its atoms
    (NAME.csv, last, so that a frame whose CSV exists is complete), each atomically, into ``folder``.
    Returns the frame's row of :data:`FRAMES_FILE` and a line for the user. The same on a Dask worker and here."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .cache import atomic_path
    from .viz import show_atoms_with_uncertainty

    if detector is None:
        prediction, features = ensemble.predict(frame.image, sampling_A_per_px=frame.sampling_A_per_px), None
    else:  # one pass of the members gives both
        prediction, features = ensemble.analyse(frame.image, sampling_A_per_px=frame.sampling_A_per_px)
    atoms, untrusted = _frame_atoms(prediction, threshold, trust)
    if untrusted is not None:
        _write_untrusted(folder / f"{frame.name}{UNTRUSTED_SUFFIX}", untrusted)
    is_si = None if atoms.si_probability is None else atoms.classes == 1  # two-class models: Si squared, with a legend
    figure = show_atoms_with_uncertainty(frame.image, atoms.rows_px, atoms.cols_px, atoms.mutual_information, frame.sampling_A_per_px, frame.name, is_si=is_si)
    with atomic_path(folder / f"{frame.name}.png") as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    atoms.to_csv(folder / f"{frame.name}.csv")
    mean_mi = float(prediction.mutual_information.mean())
    fields, shift = _shift_check(detector, features)
    row = f"{_csv_field(frame.name)},{len(atoms)},{mean_mi:.5f},{fields}"
    return row, f"{frame.name}: {len(atoms)} atoms{_untrusted_note(atoms)}, mean frame MI {mean_mi:.4f} nats{shift}"


def _predict_into(staging: Path, frames: list[_Frame], ensemble: Any, detector: Any | None, threshold: float, trust: Any | None) -> list[str]:
    """:func:`_predict_frame` for every frame into ``staging``, and the summary; return one line per frame."""
    from .cache import atomic_path

    rows, lines = [SUMMARY_HEADER], []
    for frame in frames:
        row, line = _predict_frame(staging, frame, ensemble, detector, threshold, trust)
        rows.append(row)
        lines.append(line)
    with atomic_path(staging / FRAMES_FILE) as tmp:
        tmp.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return lines


def _predict_on_workers(args: argparse.Namespace, paths: list[Path], out: Path, model: Path) -> int:
    """``predict --scheduler``: each frame is a Dask task that reads its file, finds its atoms and writes its
    outputs into --out as soon as it is done (workers load the model once); the summary comes at the end. Frames
    are checked here first (and read again on the workers), so a bad file stops the run before any work. A run
    record (:data:`PREDICT_RUN_FILE`, and the rows of :data:`PREDICT_ROWS_FOLDER`) makes a stopped run resumable: the
    same command finishes the frames not yet written; another model, options or list of frames into it is refused."""
    from .cache import atomic_path, write_json_atomic
    from .distributed import parse_scheduler
    from .ensemble import Ensemble

    parse_scheduler(args.scheduler)
    suffixes = PREDICT_SUFFIXES + ((UNTRUSTED_SUFFIX,) if _has_trust_regions(model) else ())
    outputs = _output_files(paths, out, suffixes, reserved=(FRAMES_FILE, PREDICT_RUN_FILE))
    record = _model_record(model)
    _check_classes(model, record, args.classes)
    ensemble = Ensemble.load(model)
    _shift_detector(model, ensemble), _trust_regions(model, ensemble)  # checked (and noted when missing) here, used on the workers
    planned = {
        "model": _shown(model.absolute()),
        "weights_sha256": {str(seed): sha for seed, sha in ensemble.weights_sha256.items()},
        "options": {"threshold": args.threshold, "sampling": args.sampling, "frame": args.frame, "allow_resample": args.allow_resample},
        "frames": [_shown(path.name) for path in paths],
    }
    run = _resumed_run(out, planned, [t for files in outputs.values() for t in files] + [out / FRAMES_FILE], paths, args.overwrite)
    todo = [path for path in paths if _shown(path.name) not in run["done"]]
    if len(todo) < len(paths):
        _say(f"Resuming: {len(paths) - len(todo)} of {len(paths)} frames already written to {_shown(out)}/ by this run; predicting the other {len(todo)}")
    model_sampling = float(record["sampling_A_per_px"])
    checked = [_Frame(f.path, f.name, None, f.sampling_A_per_px) for path in todo for f in _load_frames([path], args, model_sampling)]
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / PREDICT_RUN_FILE, run)
    with _client(args.scheduler) as client:
        from distributed import as_completed

        members = tuple(sorted(ensemble.weights_sha256.items()))
        task = {"out": out.absolute(), "model": model.absolute(), "members": members, "threshold": args.threshold, "stack_frame": args.frame}
        futures = {client.submit(_predict_file_task, frame, **task, pure=False): frame for frame in checked}
        for future in as_completed(futures):
            row, line = future.result()
            run["done"][futures[future].name] = row
            write_json_atomic(out / PREDICT_RUN_FILE, run)
            _say(line)
            future.release()
    rows = [SUMMARY_HEADER] + [run["done"][name] for name in planned["frames"]]
    with atomic_path(out / FRAMES_FILE) as tmp:
        tmp.write_text("\n".join(rows) + "\n", encoding="utf-8")
    shutil.rmtree(out / PREDICT_ROWS_FOLDER, ignore_errors=True)  # every row is in the record and the summary now
    masks = f", NAME{UNTRUSTED_SUFFIX}" if _has_trust_regions(model) else ""
    _say(f"Wrote {len(paths)} frames to {_shown(out)}/: per image NAME.csv (atoms) and NAME.png (plot){masks}, and {FRAMES_FILE}")
    return 0


#: What a Dask worker keeps of the model it predicts with: (model folder, members' sha256) -> (ensemble, detector, trust regions).
_MODEL_ON_WORKER: dict[tuple[str, tuple[tuple[int, str], ...]], tuple[Any, Any, Any]] = {}


def _predict_file_task(
    frame: _Frame, out: Path, model: Path, members: tuple[tuple[int, str], ...], threshold: float, stack_frame: int | None
) -> tuple[str, str]:
    """On a Dask worker: read one checked frame's file and :func:`_predict_frame` it into ``out``. The model folder's
    ensemble, shift detector and trust regions are loaded once per worker (the members checked against ``members``)."""
    from .cache import atomic_path
    from .ensemble import ensemble_on_worker, torch_on_worker
    from .io import load_image
    from .ood import SHIFT_DETECTOR_FILE, ShiftDetector

    image = load_image(frame.path, sampling_A_per_px=frame.sampling_A_per_px, frame=stack_frame, require_sampling=False, override_file_sampling=True).image
    with torch_on_worker():
        key = (str(model), members)
        if key not in _MODEL_ON_WORKER:
            ensemble = ensemble_on_worker(model, members)
            detector = ShiftDetector.load(model / SHIFT_DETECTOR_FILE, ensemble=ensemble) if (model / SHIFT_DETECTOR_FILE).exists() else None
            _MODEL_ON_WORKER.clear()
            _MODEL_ON_WORKER[key] = (ensemble, detector, _trust_regions_or_none(model, ensemble))
        ensemble, detector, trust = _MODEL_ON_WORKER[key]
        row, line = _predict_frame(out, _Frame(frame.path, frame.name, image, frame.sampling_A_per_px), ensemble, detector, threshold, trust)
    with atomic_path(out / PREDICT_ROWS_FOLDER / f"{frame.name}.row") as tmp:
        tmp.write_text(row, encoding="utf-8")
    return row, line


def _resumed_run(out: Path, planned: dict, targets: list[Path], inputs: list[Path], overwrite: bool) -> dict:
    """The run record to go on with: a fresh one (checking, as without --scheduler, that no output exists unless
    --overwrite), or the record in ``out`` of this same run, whose frames done (recorded, or left in
    :data:`PREDICT_ROWS_FOLDER` by a worker) and still present are kept."""
    path = out / PREDICT_RUN_FILE
    if overwrite or not path.exists():
        _check_targets(targets, inputs, overwrite)
        shutil.rmtree(out / PREDICT_ROWS_FOLDER, ignore_errors=True)  # rows of an earlier run are not this run's
        return {**planned, "done": {}}
    _check_targets(targets, inputs, overwrite=True)  # outputs never replace inputs, even when resuming
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
        differs = [key for key in planned if earlier[key] != planned[key]]
        done = dict(earlier["done"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise OutputConflictError(f"{_shown(path)} is not a predict run record ({_message(error)}); choose another --out, or pass --overwrite.") from None
    if differs:
        what = {"model": "another model folder", "weights_sha256": "other members", "options": "other options", "frames": "other frames"}
        raise OutputConflictError(
            f"{_shown(out)} holds a predict run of {', '.join(what[key] for key in differs)} ({_shown(path)}); rerun it with the same model, "
            "options and frames to finish it, choose another --out, or pass --overwrite to start again there."
        )
    rows = out / PREDICT_ROWS_FOLDER
    left = {row.name.removesuffix(".row"): row for row in rows.glob("*.row")} if rows.is_dir() else {}
    done |= {name: row.read_text(encoding="utf-8") for name, row in left.items() if name in planned["frames"] and name not in done}
    kept = {name: line for name, line in done.items() if (out / f"{name}.csv").is_file()}
    return {**planned, "done": kept}


def _csv_field(text: str) -> str:
    """``text`` as one CSV field (quoted when it holds a comma or a quote).

    >>> _csv_field("a.npy"), _csv_field('a,"b".npy')
    ('a.npy', '"a,""b"".npy"')
    """
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if any(c in text for c in ',"\n') else text


def _shift_check(detector: object | None, features: Any | None) -> tuple[str, str]:
    """For one frame's ``features``: CSV fields (feature distance, limit, out of distribution) and a sentence; blank without a detector."""
    if detector is None:
        return ",,", ""
    distance = float(detector.score(features)[0])
    flagged = distance > detector.limit
    verdict = "OUT OF DISTRIBUTION: check the atoms, or adapt the model (elit adapt)" if flagged else "like the training frames"
    return f"{distance:.2f},{detector.limit:.2f},{flagged}", f", feature distance {distance:.1f} (limit {detector.limit:.1f}): {verdict}"


def _shift_detector(model: Path, ensemble: object) -> object | None:
    """The model folder's shift detector (checked against ``ensemble``'s members where ood can), or None (with a note) when it has none."""
    from .ood import SHIFT_DETECTOR_FILE, ShiftDetector

    if not (model / SHIFT_DETECTOR_FILE).exists():
        _say(f"note: {_shown(model)} has no {SHIFT_DETECTOR_FILE} (elit train writes one), so frames are not checked for a shift.")
        return None
    return ShiftDetector.load(model / SHIFT_DETECTOR_FILE, ensemble=ensemble)


def _adapt(args: argparse.Namespace) -> int:
    paths, out, model = _image_files(args.frames), Path(args.out), Path(args.model)
    _check_out_folder(out)
    atom_files = _output_files(paths, out / "atoms", (".csv",))
    _check_targets([files[0] for files in atom_files.values()], paths, args.overwrite)
    record = _model_record(model)
    if _model_classes(record) != 1:
        raise BadValueError(f"{_shown(model)} is a two-class model (atom and Si); elit adapt adapts one-class models only: pass --model of one.")
    frames = _load_frames(paths, args, float(record["sampling_A_per_px"]))
    created = _missing_folders(out)
    try:
        result = _run_adapt(frames, model, out, args)
    except Exception:
        _remove_if_empty(created)
        raise
    for row in result.history:
        labels = f", {row['pseudo_labels']} pseudo-labels" if "pseudo_labels" in row else ""
        _say(f"round {row['round']}: {row['atoms_found']} atoms, mean MI {row['mean_mi_nats']:.4f} nats{labels}")

    def write(staging: Path) -> None:
        from .locate import locate_atoms

        for frame in frames:
            locate_atoms(result.ensemble.predict(frame.image, sampling_A_per_px=frame.sampling_A_per_px)).to_csv(staging / f"{frame.name}.csv")

    _write_staged(out, write, args.overwrite, into=out / "atoms")
    final = out / f"round_{result.history[-1]['round']}"
    _say(f"adapted ensemble: {_shown(final)}/; history: {_shown(out / 'history.csv')}; atoms: {_shown(out / 'atoms')}/ (NAME.csv per frame)")
    return 0


def _run_adapt(frames: list[_Frame], model: Path, out: Path, args: argparse.Namespace) -> Any:
    """Load the ensemble and adapt it to ``frames`` (with simulated source frames mixed in unless --no-source)."""
    from .ensemble import Ensemble
    from .iterate import AdaptConfig, adapt
    from .simulate import dataset

    ensemble = Ensemble.load(model)
    source = None
    if not args.no_source:
        simulated = dataset("source", n=64, seed=0, image_size_px=128)
        if abs(simulated.conditions.sampling_A_per_px - ensemble.sampling_A_per_px) < 1e-6:
            source = (simulated.images, simulated.atom_mask)
        else:
            _say(f"note: the model's pixel size ({ensemble.sampling_A_per_px} A/px) differs from the simulated source frames'; adapting without source mixing.")
    config = AdaptConfig(rounds=args.rounds, iterations_per_round=args.iterations)
    return adapt(ensemble, [f.image for f in frames], [f.sampling_A_per_px for f in frames], out, config, source=source)


def _info(args: argparse.Namespace) -> int:
    from .cache import cache_dir, package_versions
    from .config import get_profile
    from .report import results_dir
    from .simulate import DOMAINS

    _say(f"profile: {get_profile().name} (choose with ELIT_PROFILE or --profile)")
    for profile in PROFILES.values():
        _say(f"  {profile.name}: {profile.n_members} members, {profile.n_iterations} iterations, {profile.image_size_px} px images")
    _say(f"cache: {cache_dir()}")
    _say(f"results: {results_dir()}")
    _say("domains: " + ", ".join(DOMAINS))
    _say("versions: " + ", ".join(f"{k} {v}" for k, v in package_versions().items()))
    return 0


# --------------------------------------------------------------------------- watch

#: The decisions log of ``elit watch`` in its --out: one JSON object per line (a frame, a start, or a swap of models).
WATCH_LOG_FILE = "decisions.jsonl"
#: A file in the watched folder is read once its size and modification time have stayed the same for this long, s
#: (a microscope may still be writing it).
SETTLE_S = 1.0
#: Fresh simulated source frames (seeded ``ood.MONITOR_SEED``) that fit a model's frame error monitor (of the watched frames' size) and an adapted model's
#: shift detector (of the profile's size, as ``elit train`` fits it).
MONITOR_FRAMES = 40


@dataclass
class _WatchState:
    """Where a watch run stands, replayed from its log: the model in use, the trigger's run of flagged frames (since the
    last swap), the latest run of flagged frames (whichever model flagged them: :func:`~elit_utils.stream.extend_flagged_run`),
    frames collected to adapt on."""

    model: Path
    run_files: list[str] = dataclasses.field(default_factory=list)
    latest_flagged: list[str] = dataclasses.field(default_factory=list)
    handed_over: set[str] = dataclasses.field(default_factory=set)
    collecting: list[str] | None = None
    adaptations: int = 0
    done: set[str] = dataclasses.field(default_factory=set)


def _seconds(text: str) -> float:
    """An argparse type: a positive number of seconds, at most an hour.

    >>> _seconds("0.5")
    0.5
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and 0 < value <= 3600):
        raise argparse.ArgumentTypeError(f"{text} s must be above 0 and at most 3600")
    return value


def _read_watch_log(path: Path) -> list[dict]:
    """The lines of a watch log; a last line cut short (a run stopped while writing it) is removed, so its frame is redone."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
        data = data[: data.rfind(b"\n") + 1]
    try:
        return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OutputConflictError(f"{_shown(path)} is not a watch decisions log ({_message(error)}); choose another --out.") from None


def _append_line(path: Path, entry: dict) -> None:
    """Append one JSON line in a single write, flushed to disk (a stop leaves whole lines, or a cut last line that is dropped on restart)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, allow_nan=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _replay(lines: list[dict], model: Path, out: Path, adapt_frames: int) -> _WatchState:
    """The state a watch run reached, from its log; refuses a log of another model folder."""
    started = next((line for line in lines if line.get("event") == "start"), None)
    if started is not None and started["model"] != _shown(model.absolute()):
        raise OutputConflictError(
            f"{_shown(out)} holds a watch run of the model {started['model']}; rerun with --model {started['model']} to go on with it, or choose another --out."
        )
    state = _WatchState(model.absolute())
    for line in lines:
        if line.get("event") == "swap":
            state.model, state.collecting, state.run_files, state.adaptations = Path(line["model"]), None, [], state.adaptations + 1
            state.handed_over = set(line["frames"])
        elif line.get("event") == "frame":
            if line["decision"] == "unreadable" or (out / f"{line['file']}.csv").is_file():
                state.done.add(line["file"])
            _collect(state, line, adapt_frames)
    return state


def _collect(state: _WatchState, entry: dict, adapt_frames: int) -> None:
    """Update the trigger's run, the latest flagged run and the frames collected to adapt on with one frame's log entry
    (as it is written, or replayed)."""
    from .stream import extend_flagged_run

    decision = entry["decision"]
    if decision != "unreadable":
        state.latest_flagged = extend_flagged_run(state.latest_flagged, entry["over_limit"], entry["file"], adapt_frames)
    if decision == "trigger":  # the latest flagged frames are adapted on first
        state.collecting, state.run_files = list(entry.get("adapt_on", [])), []  # a log of an older release: none
    elif decision == "collect" and state.collecting is not None:
        state.collecting = [*state.collecting, entry["file"]][-adapt_frames:]
    elif decision in ("use", "flag"):
        state.run_files = [*state.run_files, entry["file"]] if entry["over_limit"] else []


def _ready_to_adapt(state: _WatchState, args: argparse.Namespace) -> bool:
    """Whether the frames collected make an adaptation (:func:`~elit_utils.stream.enough_to_adapt`, as the ELIT-triggered policy's)."""
    from .stream import enough_to_adapt

    return state.collecting is not None and enough_to_adapt(state.collecting, state.handed_over, args.adapt_frames, args.trigger_frames)


def _ready_files(folder: Path, done: set[str], seen: dict[str, tuple[int, int]]) -> tuple[list[Path], bool]:
    """Image files of ``folder`` not done yet whose size and time have settled (oldest first), and whether others are still settling."""
    from .io import SUPPORTED_SUFFIXES

    ready, waiting = [], False
    now = time.time()
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        name = _shown(path.name)
        if name in done or name.startswith(".") or path.suffix.lower() not in SUPPORTED_SUFFIXES or not path.is_file():
            continue
        try:
            status = path.stat()
        except FileNotFoundError:  # moved away since the folder was listed
            continue
        key = (status.st_size, status.st_mtime_ns)
        if seen.get(name) == key and now - status.st_mtime >= SETTLE_S:
            ready.append((status.st_mtime_ns, name, path))
        else:
            seen[name], waiting = key, True
    return [path for _, _, path in sorted(ready)], waiting


def _watched_model(model: Path) -> tuple[Any, Any, Any]:
    """The ensemble of ``model``, its shift detector and its trust regions (None where the folder has none)."""
    from .ensemble import Ensemble

    ensemble = Ensemble.load(model)
    return ensemble, _shift_detector(model, ensemble), _trust_regions(model, ensemble)


def _frame_monitor(ensemble: Any, frame: _Frame) -> Any:
    """The model's frame error monitor for frames of this one's size (at the model's pixel size), fitted on as many
    fresh source frames of that size, and saved beside the members, when it has none for that size."""
    from .ood import MONITOR_SEED, ensure_frame_error_monitor, error_monitor_path, monitor_side_px

    side = monitor_side_px(frame.image.shape, frame.sampling_A_per_px, ensemble.sampling_A_per_px)
    monitor, fitted = ensure_frame_error_monitor(ensemble, MONITOR_FRAMES, MONITOR_SEED, side)
    if fitted:
        _say(
            f"Frame error monitor fitted on {MONITOR_FRAMES} fresh source frames of {side} px (over {monitor.estimate_limit:.3f} in "
            f"{monitor.false_alarm_rate:.0%} of them; flags a frame over {monitor.flag_limit:.3f}) -> {_shown(error_monitor_path(ensemble.folder, side))}"
        )
    return monitor


def _watch_frame(path: Path, args: argparse.Namespace, out: Path, model: tuple, state: _WatchState) -> dict:
    """Find one frame's atoms, write NAME.csv, and decide: use, flag, trigger (the flagged run is adapted on, with the next
    frames up to --adapt-frames) or collect."""
    from .stream import Trigger, extend_flagged_run, triggered_decision

    ensemble, detector, trust = model
    entry = {"event": "frame", "file": _shown(path.name), "time": _now(), "model": _shown(state.model)}
    try:
        frame = _load_frames([path], args, ensemble.sampling_A_per_px)[0]
    except (BadImageError, BadValueError) as error:
        return {**entry, "decision": "unreadable", "error": _message(error), "run_over_limit": len(state.run_files)}
    monitor = _frame_monitor(ensemble, frame)
    prediction, features = ensemble.analyse(frame.image, sampling_A_per_px=frame.sampling_A_per_px, shared_pass=True)  # live: one pass
    atoms, untrusted = _frame_atoms(prediction, args.threshold, trust)
    if untrusted is not None:
        _write_untrusted(out / f"{frame.name}{UNTRUSTED_SUFFIX}", untrusted)
    atoms.to_csv(out / f"{frame.name}.csv")
    estimate = monitor.estimate(atoms.entropy)
    over = monitor.flags(estimate)
    shift = float(detector.score(features)[0]) if detector is not None else None
    trigger = Trigger(args.trigger_frames, flagged=list(state.run_files))
    decision = triggered_decision(over, trigger, collecting=state.collecting is not None, frame=entry["file"])
    adapt_on = {"adapt_on": extend_flagged_run(state.latest_flagged, over, entry["file"], args.adapt_frames)} if decision == "trigger" else {}
    return {
        **entry,
        "n_atoms": len(atoms),
        "shift_score": shift,
        "shift_flag": None if detector is None else bool(shift > detector.limit),
        "error_estimate": estimate,
        "error_limit": monitor.flag_limit,
        "over_limit": over,
        "run_over_limit": trigger.run,
        "decision": decision,
        **adapt_on,
    }


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _adapt_and_swap(args: argparse.Namespace, folder: Path, out: Path, state: _WatchState, log: Path) -> tuple:
    """Adapt the model in use to the collected frames (resuming rounds already on disk), fit its shift detector on
    fresh source frames, log the swap, and return the adapted model (its frame error monitor is fitted at its first frame)."""
    from .config import get_profile
    from .ood import MONITOR_SEED, ensure_shift_detector, member_fingerprint

    index = state.adaptations + 1
    adapt_out = out.absolute() / "models" / f"adapt_{index:03d}"  # absolute, so that a restart from elsewhere finds it
    record = _model_record(state.model)
    frames = _load_frames([folder / name for name in state.collecting], args, float(record["sampling_A_per_px"]))
    _say(f"Adapting {_shown(state.model)} to {len(frames)} frames into {_shown(adapt_out)}/ (frames wait meanwhile)")
    started = time.perf_counter()
    result = _run_adapt(frames, state.model, adapt_out, args)
    adapted = adapt_out / f"round_{result.history[-1]['round']}"
    ensure_shift_detector(result.ensemble, MONITOR_FRAMES, MONITOR_SEED, get_profile().image_size_px)  # as elit train fits it
    model = _watched_model(adapted)
    seconds = time.perf_counter() - started
    swap = {"event": "swap", "time": _now(), "model": _shown(adapted), "previous_model": _shown(state.model), "frames": list(state.collecting)}
    _append_line(log, {**swap, "members": member_fingerprint(model[0]), "seconds": round(seconds, 2)})
    _say(f"Swapped in the adapted model {_shown(adapted)} ({seconds:.0f} s)")
    state.model, state.collecting, state.run_files, state.adaptations, state.handed_over = adapted, None, [], index, set(state.collecting)
    return model


def _watch(args: argparse.Namespace) -> int:
    folder, out, model = Path(args.folder), Path(args.out), Path(args.model)
    if not folder.is_dir():
        raise BadValueError(f"{_shown(folder)} is not a folder: elit watch watches a folder that frames are written into.")
    _check_out_folder(out)
    if out.absolute() == folder.absolute():
        raise OutputConflictError(f"--out {_shown(out)} is the watched folder; choose another folder for the atoms and the log.")
    record = _model_record(model)
    if _model_classes(record) != 1:
        raise BadValueError(f"{_shown(model)} is a two-class model; elit watch adapts, which needs a one-class model: pass --model of one.")
    out.mkdir(parents=True, exist_ok=True)
    with _only_watcher(out):
        return _watch_folder(args, folder, out, model)


@contextlib.contextmanager
def _only_watcher(out: Path) -> Iterator[None]:
    """Hold a lock on ``out`` while watching, so that a second ``elit watch`` into it is refused (no lock where the OS has no flock)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(out / ".watch.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputConflictError(f"another elit watch is writing into {_shown(out)}; stop it first, or choose another --out.") from None
        yield


def _watch_folder(args: argparse.Namespace, folder: Path, out: Path, model: Path) -> int:
    """The watch loop: replay the log, then process settled frames one at a time, adapting when the trigger has collected enough."""
    import signal

    log = out / WATCH_LOG_FILE
    state = _replay(_read_watch_log(log), model, out, args.adapt_frames)
    if state.done:
        _say(f"Resuming: {len(state.done)} frames already in {_shown(log)}; model in use {_shown(state.model)}")
    options = {"trigger_frames": args.trigger_frames, "adapt_frames": args.adapt_frames, "threshold": args.threshold}
    _append_line(log, {"event": "start", "time": _now(), "model": _shown(model.absolute()), "model_in_use": _shown(state.model), "options": options})
    in_use = _watched_model(state.model)
    previous = signal.signal(signal.SIGTERM, _stop)
    seen: dict[str, tuple[int, int]] = {}
    try:
        while True:
            if _ready_to_adapt(state, args):
                in_use = _adapt_and_swap(args, folder, out, state, log)
            ready, waiting = _ready_files(folder, state.done, seen)
            if ready:  # one frame at a time, so that an adaptation happens right after the frame that completes it
                entry = _watch_frame(ready[0], args, out, in_use, state)
                _append_line(log, entry)
                state.done.add(entry["file"])
                _collect(state, entry, args.adapt_frames)
                _say(_watch_line(entry))
            if args.once and not ready and not waiting and not _ready_to_adapt(state, args):
                break
            if not ready:
                time.sleep(min(args.poll_s, SETTLE_S) if waiting else args.poll_s)
    except KeyboardInterrupt:
        _say(f"stopped: every frame in {_shown(log)} is done (its atoms are in {_shown(out)}/); rerun the same command to go on.", error=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    _say(f"Done: {len(state.done)} frames in {_shown(log)}; model in use {_shown(state.model)}")
    return 0


def _stop(signum: int, frame: object) -> None:
    """SIGTERM stops ``elit watch`` as Ctrl-C does: between writes, so that a restart goes on where it stopped."""
    raise KeyboardInterrupt


def _watch_line(entry: dict) -> str:
    """One line of output for a frame of ``elit watch``."""
    if entry["decision"] == "unreadable":
        return f"{entry['file']}: skipped, {entry['error']}"
    shift = "" if entry["shift_score"] is None else f", shift score {entry['shift_score']:.1f}{' (flagged)' if entry['shift_flag'] else ''}"
    estimate = f"error estimate {entry['error_estimate']:.3f} (limit {entry['error_limit']:.3f})"
    return f"{entry['file']}: {entry['n_atoms']} atoms, {estimate}{shift}: {entry['decision']}"


# --------------------------------------------------------------------------- the parser


def _add_frame_options(command: argparse.ArgumentParser, what: str) -> None:
    """Options shared by predict and adapt: model, pixel size, frame, scale guard."""
    command.add_argument("--model", required=True, help="model folder written by elit train")
    command.add_argument(
        "--sampling",
        type=_sampling,
        default=None,
        help=f"pixel size in A/px (0.01-5), used for every {what} even when a file has its own (a warning says so); "
        "'auto': measure it from the graphene lattice; default: each file's own",
    )
    command.add_argument("--frame", type=_whole(0, 10**9), default=None, help="frame index (from 0) for image stacks")
    command.add_argument(
        "--allow-resample",
        action="store_true",
        help=f"go ahead even when the pixel size differs from the model's by more than {MAX_RESAMPLE_FACTOR:g}x (usually a wrong unit)",
    )


def _add_scheduler_option(command: argparse.ArgumentParser, what: str) -> None:
    command.add_argument(
        "--scheduler",
        default=None,
        metavar="local[:N]|ADDRESS",
        help=f"run on Dask: local:N starts N worker processes here, tcp://host:8786 uses a running scheduler ({what}; docs/clusters.md)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``elit`` command."""
    from .simulate import DOMAINS

    parser = _Parser(prog="elit", description="ELIT Lab: ensemble learning and iterative training for atom finding in STEM images.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error instead of one line")
    debug = _Parser(add_help=False)  # --debug after the command works too
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error instead of one line")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=lambda **kw: _Parser(parents=[debug], **kw))
    commands.required = True
    seed = _whole(0, 2**32 - 1)

    reproduce = commands.add_parser("reproduce", help="run every notebook headless and write results/ (metrics.json, summary.md, figures)")
    reproduce.add_argument("--profile", choices=list(PROFILES), default=None, help="run profile (default: $ELIT_PROFILE or quick)")
    reproduce.add_argument("--out", default="results", help="results folder (default: results); an earlier metrics.json is kept as metrics.<time>.json")
    reproduce.add_argument("--notebooks", default=None, help="folder of numbered notebooks (default: the checkout's notebooks/)")
    reproduce.add_argument("--verbose", action="store_true", help="stream the notebooks' output")
    reproduce.set_defaults(handler=_reproduce)

    simulate = commands.add_parser("simulate", help="simulate labelled STEM images of graphene for a domain")
    simulate.add_argument("--domain", choices=list(DOMAINS), default="source", help="imaging domain (default: source)")
    simulate.add_argument("-n", type=_whole(1, MAX_IMAGES), default=10, help=f"number of images, 1-{MAX_IMAGES} (default: 10)")
    simulate.add_argument(
        "--size", type=_whole(MIN_SIDE_PX, MAX_SIDE_PX), default=None, help=f"image side in px, {MIN_SIDE_PX}-{MAX_SIDE_PX} (default: the domain's, 256)"
    )
    simulate.add_argument("--seed", type=seed, default=0, help="random seed, >= 0 (default: 0)")
    simulate.add_argument("--out", required=True, help="output folder: dataset.npz, atoms.csv, conditions.json (written together at the end)")
    simulate.add_argument("--overwrite", action="store_true", help="replace files already in --out")
    simulate.set_defaults(handler=_simulate)

    train = commands.add_parser("train", help="train an ensemble of U-Nets on simulated images (resumes an interrupted run)")
    train.add_argument("--domain", choices=list(DOMAINS), default="source", help="training domain (default: source)")
    train.add_argument("--members", type=_whole(1, MAX_MEMBERS), default=None, help=f"ensemble size, 1-{MAX_MEMBERS} (default: the profile's)")
    train.add_argument("--iterations", type=_whole(1, MAX_ITERATIONS), default=None, help="iterations per member, >= 1 (default: the profile's)")
    train.add_argument("--images", type=_whole(1, MAX_IMAGES), default=None, help=f"training images, 1-{MAX_IMAGES} (default: the profile's)")
    train.add_argument("--profile", choices=list(PROFILES), default=None, help="run profile (default: $ELIT_PROFILE or quick)")
    train.add_argument("--seed", type=seed, default=0, help="data and member seeds, >= 0 (default: 0)")
    train.add_argument("--out", required=True, help="model folder: ensemble.json and member_NNNN.safetensors/.json")
    train.add_argument(
        "--resize", action="store_true", help="change the size of the ensemble in --out to --members (trains the new members or removes the last ones)"
    )
    train.add_argument(
        "--classes",
        type=int,
        choices=(1, 2),
        default=1,
        help="output classes: 1, atom (the paper's, default); 2, atom and Si (predict then fills the class column)",
    )
    train.add_argument(
        "--dopant-rich-share",
        type=_share,
        default=0.0,
        help="with --classes 2: this share of the training images comes from the dopant_rich domain (source frames hold too few Si "
        "to learn it; 0.5 gave Si F1 0.99 in quick); default 0",
    )
    _add_scheduler_option(train, "each member is one task")
    train.set_defaults(handler=_train)

    predict = commands.add_parser(
        "predict",
        help="find atoms with uncertainty in micrographs (CSV and PNG per image) and check each frame for a shift (frames.csv)",
        description="Find atoms with uncertainty in micrographs. Each image's results are named after its full file name, "
        f"so that a.npy and a.tif never collide: a.npy gives a.npy.csv (atoms) and a.npy.png (plot), and, where the model has trust regions, "
        f"a.npy{UNTRUSTED_SUFFIX} (255 where the atoms are not to be trusted; the CSV's trusted column); {FRAMES_FILE} sums up every frame. "
        "Everything is written together at the end; a failure leaves --out as it was.",
    )
    predict.add_argument("images", nargs="+", help="image files (.npy .tif .png .h5 .dm3 .dm4 .emd), or folders of them")
    _add_frame_options(predict, "image")
    predict.add_argument("--threshold", type=_probability, default=0.5, help="probability threshold for atoms, strictly between 0 and 1 (default: 0.5)")
    predict.add_argument("--out", required=True, help="output folder (created if missing)")
    predict.add_argument("--overwrite", action="store_true", help="replace earlier outputs (never an input)")
    predict.add_argument(
        "--classes",
        type=int,
        choices=(1, 2),
        default=None,
        help="require a model of this many classes (2: atom and Si, class column filled); default: whatever the model has",
    )
    _add_scheduler_option(predict, f"each frame is one task, its outputs are written when it is done, and a stopped run resumes ({PREDICT_RUN_FILE})")
    predict.set_defaults(handler=_predict)

    adapt = commands.add_parser(
        "adapt",
        help="adapt an ensemble to new, unlabelled frames by iterative training on its own confident atoms",
        description="Adapt an ensemble to new, unlabelled frames. Each frame's atoms go to --out/atoms/ named after its full file name (a.npy -> a.npy.csv).",
    )
    adapt.add_argument("frames", nargs="+", help="unlabelled frames (any sizes): .npy .tif .png .h5 .dm3 .dm4 .emd files, or folders of them")
    _add_frame_options(adapt, "frame")
    adapt.add_argument("--rounds", type=_whole(1, MAX_ROUNDS), default=3, help="maximum rounds, >= 1 (default: 3; stops early when nothing changes)")
    adapt.add_argument("--iterations", type=_whole(1, MAX_ITERATIONS), default=100, help="fine-tuning steps per member and round, >= 1 (default: 100)")
    adapt.add_argument("--no-source", action="store_true", help="do not mix simulated source frames into fine-tuning")
    adapt.add_argument("--out", required=True, help="output folder: round_K/ ensembles, history.json/.csv, atoms/; an interrupted run resumes")
    adapt.add_argument("--overwrite", action="store_true", help="replace atom tables already in --out/atoms (never an input)")
    adapt.set_defaults(handler=_adapt)

    watch = commands.add_parser(
        "watch",
        help="process frames as they appear in a folder: atoms per frame, a decisions log, and adapting when the frames' atoms stay doubtful",
        description="Process image files as a microscope writes them into FOLDER (each once its size has settled): NAME.csv per frame "
        f"(as elit predict writes it) and one line per frame in {WATCH_LOG_FILE} (atoms, shift score, error estimate, trigger, decision). "
        "When --trigger-frames frames in a row have an error estimate over the model's flag limit (the limit set on source frames, "
        "or 10% of the atoms uncertain if higher), those frames and as many next ones as make --adapt-frames are collected (and read with "
        "the model in use), the model is adapted to them into --out/models/, and the adapted model is swapped in (frames wait while it "
        "adapts). Stop it with Ctrl-C or SIGTERM; the same command goes on where it stopped.",
    )
    watch.add_argument("folder", help="the folder frames appear in (.npy .tif .png .h5 .dm3 .dm4 .emd; others are ignored)")
    _add_frame_options(watch, "frame")
    watch.add_argument("--out", required=True, help=f"output folder: NAME.csv per frame, {WATCH_LOG_FILE}, models/ (adapted ensembles)")
    watch.add_argument("--poll-s", type=_seconds, default=2.0, help="seconds between looks at the folder (default: 2)")
    watch.add_argument("--once", action="store_true", help="process the frames there now and exit")
    watch.add_argument("--threshold", type=_probability, default=0.5, help="probability threshold for atoms, strictly between 0 and 1 (default: 0.5)")
    watch.add_argument("--trigger-frames", type=_whole(1, 1000), default=3, help="flagged frames in a row that trigger adapting (default: 3)")
    watch.add_argument(
        "--adapt-frames", type=_whole(1, 1000), default=8, help="frames to adapt on: the latest flagged frames first, then the next ones (default: 8)"
    )
    watch.add_argument("--rounds", type=_whole(1, MAX_ROUNDS), default=2, help="rounds of each adaptation (default: 2)")
    watch.add_argument("--iterations", type=_whole(1, MAX_ITERATIONS), default=50, help="fine-tuning steps per member and round (default: 50)")
    watch.add_argument("--no-source", action="store_true", help="do not mix simulated source frames into fine-tuning")
    watch.set_defaults(handler=_watch)

    info = commands.add_parser("info", help="show the profile, cache and results folders, domains and versions")
    info.set_defaults(handler=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``elit`` console script: run one command, and turn any error into one line.

    Exit codes: 0 done; 2 a problem with the input (``error: ...`` on stderr); 1 an unexpected
    error (a bug: rerun with ``elit --debug ...`` and report it); 130 stopped with Ctrl-C.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        _say(_interrupted(args), error=True)
        return 130
    except (ElitError, ValueError, OSError, MemoryError) as error:
        if args.debug:
            raise
        _say(f"error: {_message(error)}", error=True)
        return 2
    except Exception as error:
        if args.debug:
            raise
        _say(f"error: unexpected {type(error).__name__}: {_message(error)} (rerun as elit --debug {args.command} ... to see where, and report it)", error=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
