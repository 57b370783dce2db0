"""Nothing a user types loses data or hangs: every bad input gets one clear line (issue #15).

Each case runs ``elit`` in-process (``elit_utils.cli.main``) or calls the Python API with one
bad input, and checks that

- the exit code is 2 (the API: the expected exception type);
- the message is one line, starts with ``error:`` and names the file or value at fault;
- no traceback is printed and nothing is printed on stdout (the command stopped before any work);
- no file changed: every file of the case's input folder and of the model folder hashes the
  same before and after, and the fresh output folder was not created.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from elit_utils import ensemble, io, locate, report, simulate
from elit_utils.cli import main
from elit_utils.errors import BadImageError, BadValueError

from .conftest import tiny_ensemble

RNG = np.random.default_rng(15)
FRAME = RNG.random((128, 128))
BIG_FRAME = RNG.random((256, 256))
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
Writer = Callable[[Path, Path], None]  # (path to create, the good model folder)


def npy(array: np.ndarray, **save: object) -> Writer:
    return lambda path, model: np.save(path, array, **save)


def text(content: str) -> Writer:
    return lambda path, model: path.write_text(content)


def folder(path: Path, model: Path) -> None:
    path.mkdir()


def loop(path: Path, model: Path) -> None:
    os.symlink(path, path)  # a link to itself: a loop


def dangling(path: Path, model: Path) -> None:
    os.symlink(path.parent / "nowhere", path)


def read_only(path: Path, model: Path) -> None:
    path.mkdir()
    path.chmod(0o555)


def model_with(record: str | None, members: bool = False) -> Writer:
    """A model folder: ``ensemble.json`` holding ``record`` (or the good model's), with or without members."""

    def write(path: Path, model: Path) -> None:
        path.mkdir()
        (path / "ensemble.json").write_text((model / "ensemble.json").read_text() if record is None else record)
        if members:
            for member in model.glob("member_*"):
                shutil.copy(member, path / member.name)

    return write


def model_copy(mutate: Callable[[Path], object]) -> Writer:
    """A copy of the good model folder, changed by ``mutate``."""

    def write(path: Path, model: Path) -> None:
        shutil.copytree(model, path)
        mutate(path)

    return write


def swap(first: Path, second: Path) -> None:
    first.rename(first.with_suffix(".tmp"))
    second.rename(first)
    first.with_suffix(".tmp").rename(second)


def extra_member(folder_: Path) -> None:
    for suffix in (".json", ".safetensors"):
        shutil.copy(folder_ / f"member_0001{suffix}", folder_ / f"member_0007{suffix}")


def foreign_detector(folder_: Path) -> None:
    from elit_utils.ood import SHIFT_DETECTOR_FILE, ShiftDetector

    ShiftDetector(np.zeros(2), np.eye(2), 3.0, {"0": "ab"}).save(folder_ / SHIFT_DETECTOR_FILE)  # fitted on other members


def png_colour(path: Path, model: Path) -> None:
    Image.fromarray((RNG.random((128, 128, 3)) * 255).astype(np.uint8)).save(path)


def h5(attrs: dict, datasets: tuple[str, ...] = ("haadf",)) -> Writer:
    def write(path: Path, model: Path) -> None:
        with h5py.File(path, "w") as handle:
            for name in datasets:
                handle[name] = FRAME
                handle[name].attrs.update(attrs)

    return write


def garbage(path: Path, model: Path) -> None:
    path.write_bytes(b"\x00garbage" * 10)


GOOD = npy(FRAME)
UNDECODABLE = os.fsdecode(b"caf\xe9.npy")  # a file name that is not UTF-8


@dataclass(frozen=True)
class Case:
    """One bad command line: ``argv`` with {in}, {out} and {model} filled in, the files it needs, and a
    piece of the one-line message (the file or value at fault)."""

    argv: list[str]
    expect: str
    files: dict[str, Writer] = field(default_factory=dict)


def predict(*extra: str, files: dict[str, Writer] | None = None, expect: str, image: str = "{in}/f.npy") -> Case:
    argv = ["predict", image, "--model", "{model}", "--out", "{out}", *extra]
    return Case(argv, expect, {"f.npy": GOOD} if files is None else files)


def adapt(*extra: str, files: dict[str, Writer] | None = None, expect: str, frames: tuple[str, ...] = ("{in}/f.npy",)) -> Case:
    argv = ["adapt", *frames, "--model", "{model}", "--out", "{out}", "--rounds", "1", "--iterations", "1", *extra]
    return Case(argv, expect, {"f.npy": GOOD} if files is None else files)


def simulate_case(*extra: str, expect: str, files: dict[str, Writer] | None = None) -> Case:
    return Case(["simulate", "--out", "{out}", "-n", "1", "--size", "32", *extra], expect, files or {})


def train(*extra: str, expect: str, files: dict[str, Writer] | None = None) -> Case:
    return Case(["train", "--out", "{out}", *extra], expect, files or {})


def predict_to(out: str = "{out}", model: str = "{model}", *, expect: str, files: dict[str, Writer] | None = None) -> Case:
    """A good frame and pixel size, predicted with ``model`` into ``out``."""
    return Case(["predict", "{in}/f.npy", "--sampling", S01, "--model", model, "--out", out], expect, {"f.npy": GOOD, **(files or {})})


S01 = "0.1"
CASES: dict[str, Case] = {
    # simulate: values and the output folder
    "simulate -n 0": simulate_case("-n", "0", expect="argument -n: 0 is out of range"),
    "simulate -n -3": simulate_case("-n", "-3", expect="-3 is out of range"),
    "simulate -n abc": simulate_case("-n", "abc", expect="'abc' is not a whole number"),
    "simulate -n 100000": simulate_case("-n", "100000", expect="100000 is out of range"),
    "simulate --size 1000000": simulate_case("--size", "1000000", expect="argument --size: 1000000 is out of range: use 32 to 4096"),
    "simulate --size 8": simulate_case("--size", "8", expect="argument --size: 8 is out of range"),
    "simulate --size 0": simulate_case("--size", "0", expect="argument --size: 0"),
    "simulate --seed -1": simulate_case("--seed", "-1", expect="argument --seed: -1"),
    "simulate --domain moon": simulate_case("--domain", "moon", expect="'moon'"),
    "simulate too many pixels": simulate_case("-n", "10000", "--size", "4096", expect="-n 10000 images of 4096x4096 px"),
    "simulate --out is a file": Case(["simulate", "-n", "1", "--size", "32", "--out", "{in}/taken"], "{in}/taken is a file", {"taken": text("mine")}),
    "simulate --out under a file": Case(["simulate", "-n", "1", "--size", "32", "--out", "{in}/taken/sub"], "{in}/taken/sub", {"taken": text("mine")}),
    "simulate --out is a link loop": Case(["simulate", "-n", "1", "--size", "32", "--out", "{in}/loop"], "{in}/loop cannot be used", {"loop": loop}),
    "simulate --out dangling link": Case(["simulate", "-n", "1", "--size", "32", "--out", "{in}/link"], "{in}/link is a symbolic link", {"link": dangling}),
    "simulate outputs exist": Case(
        ["simulate", "-n", "1", "--size", "32", "--out", "{in}/old"],
        "{in}/old/dataset.npz, {in}/old/atoms.csv, {in}/old/conditions.json already exist; choose another --out or pass --overwrite",
        {"old": folder, "old/dataset.npz": text("x"), "old/atoms.csv": text("x"), "old/conditions.json": text("{}")},
    ),
    # train: values and the output folder
    "train --members 0": train("--members", "0", expect="argument --members: 0 is out of range"),
    "train --members -1": train("--members", "-1", expect="argument --members: -1"),
    "train --members 1000": train("--members", "1000", expect="argument --members: 1000 is out of range"),
    "train --iterations 0": train("--iterations", "0", expect="argument --iterations: 0 is out of range"),
    "train --iterations 1.5": train("--iterations", "1.5", expect="'1.5' is not a whole number"),
    "train --images 0": train("--images", "0", expect="argument --images: 0"),
    "train --seed -5": train("--seed", "-5", expect="argument --seed: -5"),
    "train --profile bogus": train("--profile", "bogus", expect="'bogus'"),
    "train --out is a file": Case(["train", "--out", "{in}/taken", "--members", "1"], "{in}/taken is a file", {"taken": text("mine")}),
    "train --out is a link loop": Case(["train", "--out", "{in}/loop"], "{in}/loop cannot be used", {"loop": loop}),
    # predict: the image files
    "predict missing file": predict(image="{in}/nothere.npy", expect="{in}/nothere.npy: no such file", files={}),
    "predict 8x8 frame": predict("--sampling", S01, files={"f.npy": npy(RNG.random((8, 8)))}, expect="{in}/f.npy: is only 8x8 px"),
    "predict 2x2 frame": predict("--sampling", S01, files={"f.npy": npy(RNG.random((2, 2)))}, expect="{in}/f.npy: is only 2x2 px"),
    "predict 1x256 frame": predict("--sampling", S01, files={"f.npy": npy(RNG.random((1, 256)))}, expect="{in}/f.npy: is only 1x256 px"),
    "predict 0x0 frame": predict("--sampling", S01, files={"f.npy": npy(np.zeros((0, 0)))}, expect="{in}/f.npy: is empty (shape (0, 0))"),
    "predict 64 px at 0.1 A/px": predict("--sampling", S01, files={"f.npy": npy(RNG.random((64, 64)))}, expect="{in}/f.npy: covers only 6.4 x 6.4 A"),
    "predict text as .npy": predict("--sampling", S01, files={"f.npy": text("1 2 3\n4 5 6\n")}, expect="{in}/f.npy: is not a NumPy .npy file (it holds text)"),
    "predict object .npy": predict(
        "--sampling", S01, files={"f.npy": npy(np.array([{"a": 1}], dtype=object), allow_pickle=True)}, expect="{in}/f.npy: holds Python objects"
    ),
    "predict NaN frame": predict("--sampling", S01, files={"f.npy": npy(np.where(FRAME > 0.5, np.nan, FRAME))}, expect="{in}/f.npy: contains"),
    "predict constant frame": predict("--sampling", S01, files={"f.npy": npy(np.full((128, 128), 7.0))}, expect="{in}/f.npy: is constant"),
    "predict bool frame": predict("--sampling", S01, files={"f.npy": npy(FRAME > 0.5)}, expect="{in}/f.npy: holds True/False values"),
    "predict complex frame": predict("--sampling", S01, files={"f.npy": npy(FRAME.astype(complex))}, expect="{in}/f.npy: holds complex numbers"),
    "predict 4D array": predict("--sampling", S01, files={"f.npy": npy(np.zeros((2, 3, 40, 40)))}, expect="{in}/f.npy: has shape (2, 3, 40, 40)"),
    "predict colour PNG": predict("--sampling", S01, image="{in}/f.png", files={"f.png": png_colour}, expect="{in}/f.png: is a colour image"),
    "predict stack without --frame": predict("--sampling", S01, files={"f.npy": npy(np.stack([FRAME] * 3))}, expect="{in}/f.npy: is a stack of 3 frames"),
    "predict --frame 5 of 3": predict(
        "--sampling", S01, "--frame", "5", files={"f.npy": npy(np.stack([FRAME] * 3))}, expect="{in}/f.npy: has 3 frames, so frame=5 is out of range"
    ),
    "predict --frame -1": predict("--sampling", S01, "--frame", "-1", expect="argument --frame: -1 is out of range"),
    "predict unknown format": predict("--sampling", S01, image="{in}/f.jpg", files={"f.jpg": text("x")}, expect="{in}/f.jpg: unknown image format '.jpg'"),
    "predict folder without images": predict("--sampling", S01, files={"f.npy": folder}, expect="{in}/f.npy: is a folder with no image files in it"),
    "predict corrupt TIFF": predict("--sampling", S01, image="{in}/f.tif", files={"f.tif": garbage}, expect="{in}/f.tif: could not be read as .tif"),
    "predict HDF5 of two images": predict(
        image="{in}/f.h5", files={"f.h5": h5({"sampling_A_per_px": 0.1}, ("bf", "haadf"))}, expect="{in}/f.h5: holds 2 image-like datasets (bf, haadf)"
    ),
    "predict HDF5 pixel size in furlongs": predict(
        image="{in}/f.h5", files={"f.h5": h5({"sampling_A_per_px": "0.1 furlongs"})}, expect="attribute sampling_A_per_px of dataset 'haadf' = '0.1 furlongs'"
    ),
    "predict HDF5 pixel size in the wrong unit": predict(
        image="{in}/f.h5", files={"f.h5": h5({"sampling_A_per_px": 10.0})}, expect="{in}/f.h5: pixel size in the file=10.0 A/px is outside"
    ),
    "predict non-UTF-8 name": predict(
        "--sampling", S01, image="{in}/" + UNDECODABLE, files={UNDECODABLE: npy(RNG.random((8, 8)))}, expect="caf\ufffd.npy: is only 8x8 px"
    ),
    # predict: values
    "predict --threshold 2": predict("--sampling", S01, "--threshold", "2", expect="argument --threshold: '2' is not a probability"),
    "predict --threshold -1": predict("--sampling", S01, "--threshold", "-1", expect="argument --threshold: '-1' is not a probability"),
    "predict --threshold nan": predict("--sampling", S01, "--threshold", "nan", expect="argument --threshold: 'nan' is not a probability"),
    "predict --threshold 0": predict("--sampling", S01, "--threshold", "0", expect="argument --threshold: '0'"),
    "predict --threshold 1": predict("--sampling", S01, "--threshold", "1", expect="argument --threshold: '1'"),
    "predict --threshold inf": predict("--sampling", S01, "--threshold", "inf", expect="argument --threshold: 'inf'"),
    "predict --sampling 0": predict("--sampling", "0", expect="--sampling='0' is not a positive pixel size"),
    "predict --sampling -0.1": predict("--sampling", "-0.1", expect="--sampling='-0.1' is not a positive pixel size"),
    "predict --sampling nan": predict("--sampling", "nan", expect="--sampling='nan'"),
    "predict --sampling in nm": predict("--sampling", "0.0008", expect="--sampling=0.0008 A/px is outside 0.01-5.0 A/px; is it in the wrong unit (nm/px"),
    "predict --sampling in pm": predict("--sampling", "50", expect="--sampling=50.0 A/px is outside 0.01-5.0 A/px; is it in the wrong unit (pm/px"),
    "predict --sampling 0.1A": predict("--sampling", "0.1A", expect="--sampling='0.1A' is not a number"),
    "predict no pixel size": predict(expect="{in}/f.npy: has no pixel size"),
    "predict --sampling auto on noise": predict("--sampling", "auto", expect="{in}/f.npy: --sampling auto found no graphene lattice"),
    "predict --sampling 5 (50x)": predict(
        "--sampling", "5.0", files={"f.npy": npy(BIG_FRAME)}, expect="{in}/f.npy: its pixel size 5 A/px is 50 times the model's 0.1 A/px"
    ),
    "predict --sampling 0.02 (1/5)": predict(
        "--sampling", "0.02", files={"f.npy": npy(RNG.random((512, 512)))}, expect="{in}/f.npy: its pixel size 0.02 A/px is 0.2 times the model's"
    ),
    "predict over the pixel budget": predict(
        "--sampling", "2.0", "--allow-resample", files={"f.npy": npy(BIG_FRAME)}, expect="would be 5120x5120 px, over the limit of 4096x4096 px"
    ),
    # predict: the model folder
    "predict --model missing": predict_to(model="{in}/nomodel", expect="--model {in}/nomodel: no such folder"),
    "predict --model is a file": predict_to(model="{in}/m", expect="--model {in}/m is a file", files={"m": text("x")}),
    "predict --model without ensemble.json": predict_to(model="{in}/m", expect="--model {in}/m has no ensemble.json", files={"m": folder}),
    "predict --model ensemble.json {}": predict_to(
        model="{in}/m", expect="{in}/m/ensemble.json lacks architecture, sampling_A_per_px", files={"m": model_with("{}", members=True)}
    ),
    "predict --model invalid JSON": predict_to(
        model="{in}/m", expect="{in}/m/ensemble.json is not valid JSON", files={"m": model_with("{broken", members=True)}
    ),
    "predict --model sampling -1": predict_to(
        model="{in}/m",
        expect="{in}/m/ensemble.json: sampling_A_per_px=-1 is not a positive pixel size",
        files={"m": model_with(json.dumps({"architecture": {}, "sampling_A_per_px": -1}), members=True)},
    ),
    "predict --model without members": predict_to(model="{in}/m", expect="--model {in}/m holds no finished members", files={"m": model_with(None)}),
    # predict: a model folder whose members do not add up (checked by Ensemble.load)
    "predict --model member weights missing": predict_to(
        model="{in}/m", expect="{in}/m/member_0001.json has no weights file", files={"m": model_copy(lambda m: (m / "member_0001.safetensors").unlink())}
    ),
    "predict --model member record missing": predict_to(
        model="{in}/m", expect="{in}/m/member_0001.safetensors has no member_0001.json", files={"m": model_copy(lambda m: (m / "member_0001.json").unlink())}
    ),
    "predict --model extra member": predict_to(
        model="{in}/m", expect="{in}/m/member_0007.json is not one of this ensemble's members", files={"m": model_copy(extra_member)}
    ),
    "predict --model swapped weights": predict_to(
        model="{in}/m",
        expect="{in}/m/member_0000.safetensors is not the file member_0000.json describes",
        files={"m": model_copy(lambda m: swap(m / "member_0000.safetensors", m / "member_0001.safetensors"))},
    ),
    "predict --model member record not JSON": predict_to(
        model="{in}/m", expect="{in}/m/member_0000.json is not readable JSON", files={"m": model_copy(lambda m: (m / "member_0000.json").write_text("{bad"))}
    ),
    "predict --model shift detector of other members": predict_to(
        model="{in}/m", expect="{in}/m/shift_detector.safetensors", files={"m": model_copy(foreign_detector)}
    ),
    "predict --model shift detector damaged": predict_to(
        model="{in}/m",
        expect="{in}/m/shift_detector.safetensors is not a readable shift detector",
        files={"m": model_copy(lambda m: (m / "shift_detector.safetensors").write_bytes(b"garbage"))},
    ),
    # predict: the outputs
    "predict --out is a file": predict_to(out="{in}/f.npy", expect="--out {in}/f.npy is a file"),
    "predict --out is a link loop": predict_to(out="{in}/loop", expect="--out {in}/loop cannot be used", files={"loop": loop}),
    "predict --out dangling link": predict_to(out="{in}/link", expect="--out {in}/link is a symbolic link", files={"link": dangling}),
    "predict --out read-only": pytest.param(
        predict_to(out="{in}/ro", expect="--out {in}/ro is not writable", files={"ro": read_only}),
        marks=pytest.mark.skipif(IS_ROOT, reason="root may write anywhere"),
    ),
    "predict the same image twice": Case(
        ["predict", "{in}/f.npy", "{in}/./f.npy", "--sampling", S01, "--model", "{model}", "--out", "{out}"], "{in}/f.npy is given twice", {"f.npy": GOOD}
    ),
    "predict two images of one name": Case(
        ["predict", "{in}/a/f.npy", "{in}/b/f.npy", "--sampling", S01, "--model", "{model}", "--out", "{out}"],
        "{in}/a/f.npy and {in}/b/f.npy would both write {out}/f.npy.csv",
        {"a": folder, "a/f.npy": GOOD, "b": folder, "b/f.npy": GOOD},
    ),
    "predict outputs exist": Case(
        ["predict", "{in}/f.npy", "--sampling", S01, "--model", "{model}", "--out", "{in}"],
        "{in}/f.npy.csv already exists; choose another --out or pass --overwrite",
        {"f.npy": GOOD, "f.npy.csv": text("my atoms")},
    ),
    "predict output would replace an input": Case(
        ["predict", "{in}/f.npy", "{in}/f.npy.png", "--sampling", S01, "--model", "{model}", "--out", "{in}", "--overwrite"],
        "{in}/f.npy.png would replace the input {in}/f.npy.png",
        {"f.npy": GOOD, "f.npy.png": lambda path, model: Image.fromarray((FRAME * 255).astype(np.uint8)).save(path)},
    ),
    "predict output is a folder": Case(
        ["predict", "{in}/f.npy", "--sampling", S01, "--model", "{model}", "--out", "{in}", "--overwrite"],
        "{in}/f.npy.csv is a folder where an output file would go",
        {"f.npy": GOOD, "f.npy.csv": folder},
    ),
    # adapt
    "adapt --rounds 0": adapt("--sampling", S01, "--rounds", "0", expect="argument --rounds: 0 is out of range"),
    "adapt --rounds -1": adapt("--sampling", S01, "--rounds", "-1", expect="argument --rounds: -1"),
    "adapt --iterations 0": adapt("--sampling", S01, "--iterations", "0", expect="argument --iterations: 0 is out of range"),
    "adapt 8x8 frame": adapt("--sampling", S01, files={"f.npy": npy(RNG.random((8, 8)))}, expect="{in}/f.npy: is only 8x8 px"),
    "adapt no pixel size": adapt(expect="{in}/f.npy: has no pixel size"),
    "adapt --sampling 5 (50x)": adapt("--sampling", "5", files={"f.npy": npy(BIG_FRAME)}, expect="{in}/f.npy: its pixel size 5 A/px is 50 times"),
    "adapt one broken frame of two": adapt(
        "--sampling",
        S01,
        frames=("{in}/f.npy", "{in}/g.npy"),
        files={"f.npy": GOOD, "g.npy": npy(np.full((128, 128), np.inf))},
        expect="{in}/g.npy: contains",
    ),
    "adapt the same frame twice": adapt("--sampling", S01, frames=("{in}/f.npy", "{in}/f.npy"), expect="{in}/f.npy is given twice"),
    "adapt --out is a file": Case(
        ["adapt", "{in}/f.npy", "--sampling", S01, "--model", "{model}", "--out", "{in}/f.npy"], "--out {in}/f.npy is a file", {"f.npy": GOOD}
    ),
    "adapt --model ensemble.json {}": Case(
        ["adapt", "{in}/f.npy", "--sampling", S01, "--model", "{in}/m", "--out", "{out}"],
        "{in}/m/ensemble.json lacks architecture",
        {"f.npy": GOOD, "m": model_with("{}", members=True)},
    ),
    "adapt atoms exist": Case(
        ["adapt", "{in}/f.npy", "--sampling", S01, "--model", "{model}", "--out", "{in}/run"],
        "{in}/run/atoms/f.npy.csv already exists",
        {"f.npy": GOOD, "run": folder, "run/atoms": folder, "run/atoms/f.npy.csv": text("my atoms")},
    ),
}


def _fill(text_: str, inputs: Path, out: Path, model: Path) -> str:
    return text_.replace("{in}", str(inputs)).replace("{out}", str(out)).replace("{model}", str(model))


def _digests(*folders: Path) -> dict[str, str]:
    """sha256 of every regular file under the folders (links are not followed)."""
    found = {}
    for top in folders:
        for root, _, names in os.walk(top):
            for name in names:
                path = Path(root) / name
                if path.is_file() and not path.is_symlink():
                    found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny 2-member ensemble (0.1 A/px), trained once for the whole file."""
    folder = tmp_path_factory.mktemp("bad_inputs") / "model"
    tiny_ensemble(folder, 2)
    return folder


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_info:  # argparse's own refusals
        return exit_info.code


def _params() -> list:
    """One pytest parameter per case, named by its key (keeping the marks of those given as pytest.param)."""
    return [pytest.param(case, id=name) if isinstance(case, Case) else pytest.param(*case.values, marks=case.marks, id=name) for name, case in CASES.items()]


@pytest.mark.parametrize("case", _params())
def test_a_bad_command_line_gets_one_line_and_changes_nothing(case, model, tmp_path, capsys):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for name, write in case.files.items():
        write(inputs / name, model)
    capsys.readouterr()
    before = _digests(inputs, model)
    code = _run([_fill(arg, inputs, out, model) for arg in case.argv])
    captured = capsys.readouterr()
    expected = _fill(case.expect, inputs, out, model)
    assert code == 2, captured.err
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert expected in captured.err, captured.err
    assert "Traceback" not in captured.err + captured.out and captured.out == ""
    if os.environ.get("ELIT_SHOW_MESSAGES"):
        print(f"\n{captured.err.strip()}", file=sys.__stderr__)
    assert _digests(inputs, model) == before
    assert not out.exists()


@dataclass(frozen=True)
class ApiCase:
    """A bad call of the Python API: ``call(folder)``, the exception it must raise and a piece of its message."""

    call: Callable[[Path], object]
    error: type[BaseException]
    expect: str


def _saved(name: str, write: Writer) -> Callable[[Path], Path]:
    def make(folder_: Path) -> Path:
        write(folder_ / name, folder_)
        return folder_ / name

    return make


API_CASES: dict[str, ApiCase] = {
    "load_image missing": ApiCase(lambda d: io.load_image(d / "x.npy"), FileNotFoundError, "x.npy: no such file"),
    "load_image text .npy": ApiCase(lambda d: io.load_image(_saved("t.npy", text("1 2"))(d)), BadImageError, "t.npy: is not a NumPy .npy file"),
    "load_image 0x0": ApiCase(lambda d: io.load_image(_saved("e.npy", npy(np.zeros((0, 0))))(d)), BadImageError, "e.npy: is empty"),
    "load_image 8x8": ApiCase(lambda d: io.load_image(_saved("s.npy", npy(RNG.random((8, 8))))(d)), BadImageError, "s.npy: is only 8x8 px"),
    "load_image colour": ApiCase(lambda d: io.load_image(_saved("c.png", png_colour)(d)), BadImageError, "c.png: is a colour image"),
    "load_image bool": ApiCase(lambda d: io.load_image(_saved("b.npy", npy(FRAME > 0.5))(d)), BadImageError, "b.npy: holds True/False"),
    "load_image sampling in nm": ApiCase(lambda d: io.load_image(_saved("f.npy", GOOD)(d), sampling_A_per_px=0.008), BadValueError, "nm/px"),
    "load_image HDF5 string unit": ApiCase(
        lambda d: io.load_image(_saved("f.h5", h5({"sampling_A_per_px": "1 parsec"}))(d)), BadImageError, "= '1 parsec' is not a pixel size"
    ),
    "check_sampling -1": ApiCase(lambda d: io.check_sampling(-1.0), BadValueError, "sampling_A_per_px=-1.0 is not a positive pixel size"),
    "check_sampling nan": ApiCase(lambda d: io.check_sampling(float("nan")), BadValueError, "sampling_A_per_px=nan"),
    "check_sampling text": ApiCase(lambda d: io.check_sampling("0.1 A"), BadValueError, "'0.1 A' is not a number"),
    "parse_sampling furlongs": ApiCase(lambda d: io.parse_sampling("3 furlongs"), BadValueError, "'3 furlongs' is not a pixel size"),
    "checked_images channel axis": ApiCase(
        lambda d: ensemble.checked_images(np.zeros((64, 64, 1))), BadImageError, "(64, 64, 1): a channel axis? pass image[..., 0]"
    ),
    "find_atoms threshold 2": ApiCase(lambda d: locate.find_atoms(np.zeros((16, 16)), threshold=2), ValueError, "threshold must lie strictly between 0 and 1"),
    "find_atoms threshold nan": ApiCase(lambda d: locate.find_atoms(np.zeros((16, 16)), threshold=float("nan")), ValueError, "got nan"),
    "find_atoms 3D map": ApiCase(lambda d: locate.find_atoms(np.zeros((2, 16, 16))), ValueError, "one 2D probability map"),
    "find_atoms NaN map": ApiCase(lambda d: locate.find_atoms(np.full((16, 16), np.nan)), ValueError, "NaN or inf"),
    "dataset n=0": ApiCase(lambda d: simulate.dataset("source", n=0, cache=False), ValueError, "got 0"),
    "dataset unknown domain": ApiCase(lambda d: simulate.dataset("moon", n=1, cache=False), ValueError, "'moon'"),
    "load_metrics broken": ApiCase(
        lambda d: report.load_metrics(_saved("metrics.json", text("{broken"))(d).parent), BadValueError, "metrics.json is not valid JSON"
    ),
}


@pytest.mark.parametrize("case", list(API_CASES.values()), ids=list(API_CASES))
def test_a_bad_api_call_raises_one_clear_line(case, tmp_path):
    with pytest.raises(case.error) as error:
        case.call(tmp_path)
    message = str(error.value)
    assert case.expect in message and "\n" not in message, message


def test_the_suite_is_large_enough():
    assert len(CASES) + len(API_CASES) >= 60
