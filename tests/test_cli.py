import hashlib
import json
import os
import re
import subprocess
import sys

import nbformat
import numpy as np
import pytest

from elit_utils.cli import build_parser, main


def test_help_lists_the_subcommands():
    result = subprocess.run([sys.executable, "-m", "elit_utils.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("reproduce", "simulate", "train", "predict", "adapt", "watch", "info"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["reproduce", "simulate", "train", "predict", "adapt", "watch", "info"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: elit " + command in capsys.readouterr().out


def test_simulate_writes_images_masks_and_atoms_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", "--domain", "low_dose", "-n", "2", "--size", "48", "--out", str(out)]) == 0
    with np.load(out / "dataset.npz") as stored:
        assert stored["images"].shape == (2, 48, 48) and stored["label_mask"].shape == (2, 48, 48)
        n_atoms = len(stored["atoms"])
    lines = (out / "atoms.csv").read_text().splitlines()
    assert lines[0].startswith("frame,row_px,col_px,class") and len(lines) == n_atoms + 1
    assert json.loads((out / "conditions.json").read_text())["domain"] == "low_dose"
    before = (out / "atoms.csv").read_text()
    assert main(["simulate", "-n", "1", "--size", "32", "--out", str(out)]) == 2
    assert "already exist" in capsys.readouterr().err
    assert (out / "atoms.csv").read_text() == before


def test_bad_arguments_are_rejected_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate", "--domain", "moon", "--out", str(tmp_path)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "-n", "0", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: argument -n: 0 is out of range: use 1 to") and err.count("\n") == 1 and "elit simulate --help" in err
    assert not (tmp_path / "x").exists()


def _tiny_notebook(path, body):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("profile = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


def test_reproduce_runs_notebooks_quietly_and_keeps_every_earlier_metrics_file(tmp_path, capfd):
    notebooks = tmp_path / "nbs"
    notebooks.mkdir()
    body = "\n".join(
        [
            "import elit_utils, matplotlib.pyplot as plt",
            "run = elit_utils.setup(profile=profile)",
            "elit_utils.record_metrics('demo', {'members': run.n_members}, profile=run.name)",
            "elit_utils.save_figure(plt.figure(), 'demo')",
        ]
    )
    _tiny_notebook(notebooks / "01_demo.ipynb", body)
    out = tmp_path / "results"
    out.mkdir()
    (out / "metrics.json").write_text('{"old": {"values": {}}}')
    capfd.readouterr()
    assert main(["reproduce", "--profile", "smoke", "--out", str(out), "--notebooks", str(notebooks)]) == 0
    captured = capfd.readouterr()  # capfd: the kernel is a child process writing to the inherited stderr
    assert "without encryption" not in captured.out + captured.err
    progress = [line for line in captured.out.splitlines() if line.startswith("[smoke] ")]
    assert len(progress) == 1 and re.fullmatch(r"\[smoke\] 01_demo\.ipynb  \d+\.\d s", progress[0])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["demo"] == {"profile": "smoke", "config_hash": metrics["demo"]["config_hash"], "values": {"members": 2}}
    assert "01_demo" in metrics["reproduce"]["values"]["notebook_seconds"]
    kept = sorted(out.glob("metrics.2*.json"))
    assert len(kept) == 1 and re.fullmatch(r"metrics\.\d{8}-\d{6}\.json", kept[0].name)
    assert json.loads(kept[0].read_text()) == {"old": {"values": {}}}
    assert (out / "figures" / "demo.png").exists() and (out / "notebooks" / "01_demo.ipynb").exists()
    assert "| members | 2 |" in (out / "summary.md").read_text()
    assert main(["reproduce", "--profile", "smoke", "--out", str(out), "--notebooks", str(notebooks)]) == 0
    assert len(list(out.glob("metrics.2*.json"))) == 2  # the second run keeps the first run's numbers too


def test_reproduce_fails_in_one_line_naming_the_notebook(tmp_path, capsys):
    notebooks = tmp_path / "nbs"
    notebooks.mkdir()
    _tiny_notebook(notebooks / "01_broken.ipynb", "raise RuntimeError('boom')")
    assert main(["reproduce", "--profile", "smoke", "--out", str(tmp_path / "r"), "--notebooks", str(notebooks)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 01_broken.ipynb failed (RuntimeError: boom)") and err.count("\n") == 1
    with pytest.raises(Exception, match="boom"):
        main(["--debug", "reproduce", "--profile", "smoke", "--out", str(tmp_path / "r"), "--notebooks", str(notebooks)])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """One model folder trained by ``elit train`` (2 members, 2 iterations, smoke profile) for this module."""
    folder = tmp_path_factory.mktemp("cli") / "model"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ELIT_CACHE", str(folder.parent / "cache"))
        patch.setenv("ELIT_PROFILE", "smoke")
        assert main(["train", "--profile", "smoke", "--members", "2", "--iterations", "2", "--images", "4", "--out", str(folder)]) == 0
    return folder


def test_train_then_predict_writes_atoms_with_uncertainty(model, tmp_path, capsys):
    assert sorted(p.name for p in model.glob("member_*.safetensors")) == ["member_0000.safetensors", "member_0001.safetensors"]
    image = tmp_path / "frame.npy"
    np.save(image, np.random.default_rng(0).random((120, 128)))
    assert main(["predict", str(image), "--model", str(model), "--out", str(tmp_path / "out")]) == 2
    assert "no pixel size" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing is created before the inputs are checked
    assert (model / "shift_detector.safetensors").exists()  # elit train fits one on fresh frames
    assert main(["predict", str(image), "--model", str(model), "--sampling", "0.1", "--out", str(tmp_path / "out")]) == 0
    assert "feature distance" in capsys.readouterr().out
    frames = (tmp_path / "out" / "frames.csv").read_text().splitlines()
    assert frames[0] == "image,atoms,mean_mi_nats,feature_distance,flag_limit,out_of_distribution" and frames[1].startswith("frame.npy,")
    assert frames[1].split(",")[-1] == "True"  # uniform noise is nothing like a graphene frame
    header = (tmp_path / "out" / "frame.npy.csv").read_text().splitlines()[0]
    assert header == "row_px,col_px,y_A,x_A,class,uncertainty_mi_nats,entropy_nats,variance,vote_fraction,trusted"
    assert (tmp_path / "out" / "frame.npy.png").stat().st_size > 0
    made = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert made == ["frame.npy.csv", "frame.npy.png", "frame.npy_untrusted.png", "frames.csv"]  # no staging left
    assert main(["predict", str(image), "--model", str(model), "--sampling", "0.1", "--out", str(tmp_path / "out")]) == 2
    assert "already exist" in capsys.readouterr().err


def _digests(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_predict_into_the_inputs_folder_never_touches_the_inputs(model, tmp_path, capsys):
    """a.npy and a.tif, and an input called frames.npy, in the folder that receives the results, with --overwrite."""
    import tifffile

    rng = np.random.default_rng(1)
    np.save(tmp_path / "a.npy", rng.random((112, 112)))
    tifffile.imwrite(tmp_path / "a.tif", rng.random((112, 112)).astype(np.float32))
    np.save(tmp_path / "frames.npy", rng.random((112, 112)))
    inputs = _digests(tmp_path)
    names = [str(tmp_path / n) for n in ("a.npy", "a.tif", "frames.npy")]
    assert main(["predict", *names, "--model", str(model), "--sampling", "0.1", "--out", str(tmp_path), "--overwrite"]) == 0
    assert {p: d for p, d in _digests(tmp_path).items() if p in inputs} == inputs
    made = {p.name for p in tmp_path.iterdir()} - {p.name for p in inputs}
    per_input = {name + suffix for name in ("a.npy", "a.tif", "frames.npy") for suffix in (".csv", ".png", "_untrusted.png")}
    assert made == per_input | {"frames.csv"}
    assert len((tmp_path / "frames.csv").read_text().splitlines()) == 4
    capsys.readouterr()


def test_a_failed_predict_leaves_nothing_behind(model, tmp_path, capsys):
    np.save(tmp_path / "good.npy", np.random.default_rng(0).random((112, 112)))
    np.save(tmp_path / "bad.npy", np.full((112, 112), np.nan))
    out = tmp_path / "new" / "out"
    assert main(["predict", str(tmp_path / "good.npy"), str(tmp_path / "bad.npy"), "--model", str(model), "--sampling", "0.1", "--out", str(out)]) == 2
    assert "bad.npy" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_ctrl_c_keeps_what_is_finished_and_says_how_to_resume(model, tmp_path, capsys, monkeypatch):
    from elit_utils import ensemble

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ensemble, "train_ensemble", interrupted)
    assert main(["train", "--members", "2", "--iterations", "2", "--images", "4", "--out", str(tmp_path / "m")]) == 130
    err = capsys.readouterr().err
    assert err == f"stopped: finished members are kept in {tmp_path / 'm'}/; rerun the same command to resume.\n"
    np.save(tmp_path / "a.npy", np.random.default_rng(0).random((112, 112)))
    monkeypatch.setattr(ensemble.Ensemble, "_analysed", interrupted)  # behind both predict and analyse
    assert main(["predict", str(tmp_path / "a.npy"), "--model", str(model), "--sampling", "0.1", "--out", str(tmp_path / "o")]) == 130
    assert capsys.readouterr().err.startswith("stopped: nothing was written to") and not (tmp_path / "o").exists()


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    from elit_utils import simulate

    def broken(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(simulate, "dataset", broken)
    assert main(["simulate", "-n", "1", "--size", "32", "--out", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unexpected KeyError: 'oops'") and "--debug" in err and err.count("\n") == 1
    with pytest.raises(KeyError):
        main(["--debug", "simulate", "-n", "1", "--size", "32", "--out", str(tmp_path / "s")])


def test_pixel_size_given_wins_over_the_files_with_a_warning(model, tmp_path, capsys):
    import h5py

    with h5py.File(tmp_path / "a.h5", "w") as handle:
        handle["haadf"] = np.random.default_rng(0).random((112, 112))
        handle["haadf"].attrs["sampling_A_per_px"] = "0.0115 nm"
    assert main(["predict", str(tmp_path / "a.h5"), "--model", str(model), "--sampling", "0.1", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "warning: " in err and "--sampling 0.1 A/px differs from the file's 0.115 A/px; using --sampling 0.1 as given" in err


def test_a_pixel_size_in_the_wrong_unit_is_refused_before_any_work(model, tmp_path, capsys):
    np.save(tmp_path / "frame.npy", np.random.default_rng(0).random((256, 256)))
    argv = ["predict", str(tmp_path / "frame.npy"), "--model", str(model), "--out", str(tmp_path / "o")]
    assert main([*argv, "--sampling", "5.0"]) == 2
    err = capsys.readouterr().err
    assert "5 A/px is 50 times the model's 0.1 A/px" in err and "wrong unit" in err and "--allow-resample" in err
    assert main([*argv, "--sampling", "5.0", "--allow-resample"]) == 2
    assert "over the limit of 4096x4096 px" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_adapt_writes_rounds_history_and_atoms_and_refuses_bad_frames(model, tmp_path, capsys):
    rng = np.random.default_rng(0)
    frames = [tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "broken.npy"]
    for frame, image in zip(frames, [rng.random((104, 104)), rng.random((104, 128)), np.full((104, 104), np.nan)]):
        np.save(frame, image)
    out = tmp_path / "adapted"

    def adapt(*options_and_frames):
        return main(["adapt", "--model", str(model), "--rounds", "1", "--iterations", "2", "--out", str(out), *map(str, options_and_frames)])

    assert adapt(*frames[:2]) == 2
    assert "no pixel size" in capsys.readouterr().err
    assert adapt("--sampling", "0.1", *frames) == 2
    assert "broken.npy" in (err := capsys.readouterr().err) and "NaN" in err
    assert not out.exists()
    assert adapt("--sampling", "0.1", *frames[:2]) == 0
    assert (out / "round_1" / "member_0000.safetensors").exists()
    assert (out / "history.csv").read_text().startswith("round,")
    assert (out / "atoms" / "a.npy.csv").read_text().startswith("row_px,col_px")
    assert not list(out.glob(".staging*"))
    before = (out / "atoms" / "b.npy.csv").read_text()
    assert adapt("--sampling", "0.1", *frames[:2]) == 2
    assert "already exist" in capsys.readouterr().err
    assert (out / "atoms" / "b.npy.csv").read_text() == before


def test_the_graphene_lattice_checks_the_pixel_size_and_measures_it_on_request(model, tmp_path, capsys):
    from elit_utils.simulate import dataset

    np.save(tmp_path / "graphene.npy", dataset("source", n=1, seed=0, image_size_px=128, cache=False).images[0])  # 0.1 A/px
    np.save(tmp_path / "noise.npy", np.random.default_rng(0).random((128, 128)))

    def predict(*options):
        return main(["predict", str(tmp_path / "graphene.npy"), "--model", str(model), "--out", str(tmp_path / "o"), "--overwrite", *options])

    assert predict("--sampling", "0.13") == 0
    err = capsys.readouterr().err
    assert re.search(r"warning: .*graphene\.npy: the pixel size given \(0\.13 A/px\) differs by \d+% from the 0\.\d+ A/px", err), err
    assert predict("--sampling", "0.1") == 0
    assert "warning" not in capsys.readouterr().err
    assert predict("--sampling", "auto") == 0
    measured = re.search(r"note: .*graphene\.npy: --sampling auto: ([\d.]+) A/px from the graphene lattice", capsys.readouterr().err)
    assert measured and abs(float(measured.group(1)) / 0.1 - 1) < 0.05
    assert main(["predict", str(tmp_path / "noise.npy"), "--model", str(model), "--out", str(tmp_path / "n"), "--sampling", "auto"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'noise.npy'}: --sampling auto found no graphene lattice") and err.count("\n") == 1
    assert not (tmp_path / "n").exists()


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    from elit_utils import cli

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cli.tempfile, "TemporaryFile", refused)  # what a read-only folder does (root may write anywhere)
    (tmp_path / "ro").mkdir()
    assert main(["simulate", "-n", "1", "--size", "32", "--out", str(tmp_path / "ro")]) == 2
    assert capsys.readouterr().err == f"error: --out {tmp_path / 'ro'} is not writable (Permission denied); choose another folder.\n"
    assert main(["simulate", "-n", "1", "--size", "32", "--out", str(tmp_path / "ro" / "new")]) == 2
    assert f"--out {tmp_path / 'ro' / 'new'} cannot be created in {tmp_path / 'ro'} (Permission denied)" in capsys.readouterr().err
    assert list((tmp_path / "ro").iterdir()) == []


def test_an_input_name_that_is_not_utf8_is_predicted(model, tmp_path, capsys):
    name = os.fsdecode(b"caf\xe9.npy")
    np.save(tmp_path / name, np.random.default_rng(0).random((112, 112)))
    assert main(["predict", str(tmp_path / name), "--model", str(model), "--sampling", "0.1", "--out", str(tmp_path / "o")]) == 0
    assert "caf\ufffd.npy: " in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["caf\ufffd.npy.csv", "caf\ufffd.npy.png", "caf\ufffd.npy_untrusted.png", "frames.csv"]
    assert (tmp_path / "o" / "frames.csv").read_text(encoding="utf-8").splitlines()[1].startswith("caf\ufffd.npy,")


def test_a_predict_failing_half_way_leaves_no_half_results(model, tmp_path, capsys, monkeypatch):
    from elit_utils import ensemble

    real, calls = ensemble.Ensemble._analysed, []  # behind both predict and analyse

    def fails_on_the_second_frame(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the GPU fell over")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ensemble.Ensemble, "_analysed", fails_on_the_second_frame)
    for name in ("a.npy", "b.npy"):
        np.save(tmp_path / name, np.random.default_rng(0).random((112, 112)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    images = [str(tmp_path / "a.npy"), str(tmp_path / "b.npy")]
    assert main(["predict", *images, "--model", str(model), "--sampling", "0.1", "--out", str(out)]) == 1
    assert capsys.readouterr().err.startswith("error: unexpected RuntimeError: the GPU fell over")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]  # neither a.npy's results nor a staging folder


def test_train_into_a_folder_of_another_size_is_refused_before_any_data_is_made(tmp_path, capsys, monkeypatch):
    from elit_utils import simulate

    folder = tmp_path / "model"
    small = ["train", "--profile", "smoke", "--iterations", "2", "--images", "4", "--out", str(folder)]
    assert main([*small, "--members", "2"]) == 0
    capsys.readouterr()

    def no_data(*args, **kwargs):
        raise AssertionError("training data was simulated before the folder was checked")

    monkeypatch.setattr(simulate, "dataset", no_data)
    assert main([*small, "--members", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds an ensemble of 2 members" in err and "--resize" in err
    assert main([*small, "--members", "2", "--seed", "1"]) == 2
    assert "another --seed?" in capsys.readouterr().err


def test_outputs_that_appear_meanwhile_are_never_replaced(tmp_path):
    """Two runs into one folder at once: the later one's move fails and takes its own files back."""
    from elit_utils import cli
    from elit_utils.errors import OutputConflictError

    staging, folder = tmp_path / "staging", tmp_path / "out"
    staging.mkdir()
    folder.mkdir()
    (staging / "a.npy.csv").write_text("mine")
    (staging / "frames.csv").write_text("mine")
    (folder / "frames.csv").write_text("the other run's")
    with pytest.raises(OutputConflictError, match="frames.csv appeared while this command ran"):
        cli._move_into(staging, folder, overwrite=False)
    assert sorted(p.name for p in folder.iterdir()) == ["frames.csv"] and (folder / "frames.csv").read_text() == "the other run's"
    assert cli._move_into(staging, folder, overwrite=True) == ["a.npy.csv", "frames.csv"]
    assert (folder / "frames.csv").read_text() == "mine"


def test_predict_a_folder_on_workers_writes_every_frame_and_a_rerun_finishes_only_the_rest(model, tmp_path, capsys, monkeypatch):
    pytest.importorskip("distributed")
    from elit_utils import cli
    from elit_utils.simulate import dataset

    frames = dataset("source", n=12, seed=3, image_size_px=112, cache=False).images
    names = [f"frame_{index:02d}.npy" for index in range(len(frames))]
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, frame in zip(names, frames):
        np.save(inputs / name, frame)
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    argv = ["predict", str(inputs), "--model", str(model), "--sampling", "0.1", "--out", str(out), "--scheduler", "local:2"]
    real_say, reported = cli._say, []

    def stop_after_five_frames(text, error=False):  # Ctrl-C just after the fifth frame is reported
        real_say(text, error)
        if text.startswith("frame_"):
            reported.append(text.split(":")[0])
            if len(reported) == 5:
                raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_say", stop_after_five_frames)
    assert main(argv) == 130
    monkeypatch.undo()
    assert "finish the rest" in capsys.readouterr().err and not (out / "frames.csv").exists()
    done = set(json.loads((out / "predict_run.json").read_text())["done"])
    assert done == set(reported) and len(done) == 5
    done |= {row.name.removesuffix(".row") for row in (out / ".predict_rows").glob("*.row")}  # finished on a worker, not yet reported
    assert all((out / f"{name}.csv").is_file() and (out / f"{name}.png").is_file() and (out / f"{name}_untrusted.png").is_file() for name in done)
    stamps = {name: (out / f"{name}.csv").stat().st_mtime_ns for name in done}

    assert main(argv) == 0
    said = capsys.readouterr().out
    assert f"Resuming: {len(done)} of 12 frames" in said and "1 other files skipped" in said
    again = [line.split(":")[0] for line in said.splitlines() if line.startswith("frame_")]
    assert sorted(again) == sorted(set(names) - set(done)), "the rerun predicted a finished frame again, or missed one"
    assert all((out / f"{name}.csv").stat().st_mtime_ns == stamps[name] for name in done)
    summary = (out / "frames.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in summary[1:]] == names
    assert all(line.split(",")[-1] in ("True", "False") for line in summary[1:]), "each frame is checked for a shift on the workers too"
    assert not (out / ".predict_rows").exists(), "the workers' rows are removed once the summary holds them"

    assert main(["predict", str(inputs / names[0]), "--model", str(model), "--sampling", "0.1", "--out", str(tmp_path / "serial")]) == 0
    for suffix in (".csv", "_untrusted.png"):
        assert (tmp_path / "serial" / f"{names[0]}{suffix}").read_bytes() == (out / f"{names[0]}{suffix}").read_bytes()
    assert (tmp_path / "serial" / "frames.csv").read_text().splitlines()[1] == summary[1]

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main([*argv, "--threshold", "0.7"]) == 2
    assert "holds a predict run of other options" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_bad_scheduler_is_refused_before_any_work(model, tmp_path, capsys):
    np.save(tmp_path / "a.npy", np.random.default_rng(0).random((64, 64)))
    assert main(["predict", str(tmp_path / "a.npy"), "--model", str(model), "--sampling", "0.1", "--out", str(tmp_path / "o"), "--scheduler", "local:x"]) == 2
    assert "the number of workers must be a whole number" in capsys.readouterr().err
    assert main(["train", "--members", "1", "--iterations", "1", "--images", "2", "--out", str(tmp_path / "m"), "--scheduler", "cluster"]) == 2
    assert "is neither local[:N]" in capsys.readouterr().err and not (tmp_path / "m").exists() and not (tmp_path / "o").exists()


def test_train_on_local_workers_writes_a_loadable_ensemble(tmp_path, capsys):
    pytest.importorskip("distributed")
    from elit_utils.ensemble import Ensemble

    assert main(["train", "--members", "2", "--iterations", "2", "--images", "4", "--out", str(tmp_path / "m"), "--scheduler", "local:2"]) == 0
    assert Ensemble.load(tmp_path / "m").seeds == [0, 1]


def _mask(path):
    from PIL import Image

    with Image.open(path) as image:
        return image.mode, np.asarray(image)


def test_trust_regions_are_fitted_by_train_and_give_a_mask_and_a_trusted_column(model, tmp_path, capsys):
    import shutil

    from elit_utils.clutter import TrustRegions
    from elit_utils.ensemble import Ensemble

    trust = TrustRegions.load(model / "trust_regions.json", ensemble=Ensemble.load(model))  # fitted on these members
    frame = np.random.default_rng(2).random((112, 120))
    frame[20:60, 30:80] = np.random.default_rng(3).random((40, 50)) * 3  # something no graphene frame looks like
    np.save(tmp_path / "a.npy", frame)
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "a.npy"), "--model", str(model), "--sampling", "0.1", "--out", str(out)]) == 0
    assert "in untrusted regions" in capsys.readouterr().out
    mode, mask = _mask(out / "a.npy_untrusted.png")
    assert mode == "L" and mask.shape == frame.shape and set(np.unique(mask)) <= {0, 255}
    prediction = Ensemble.load(model).predict(frame, sampling_A_per_px=0.1)
    assert np.array_equal(mask == 255, trust.untrusted(prediction))
    rows = [line.split(",") for line in (out / "a.npy.csv").read_text().splitlines()[1:]]
    expected = [str(not mask[round(float(r[0])), round(float(r[1]))]) for r in rows]
    assert [r[-1] for r in rows] == expected
    (out / "a.npy.csv").unlink()
    (out / "a.npy.png").unlink()
    (out / "frames.csv").unlink()  # only the mask is left: it alone stops a second run
    assert main(["predict", str(tmp_path / "a.npy"), "--model", str(model), "--sampling", "0.1", "--out", str(out)]) == 2
    assert "a.npy_untrusted.png already exists" in capsys.readouterr().err

    bare = tmp_path / "bare"
    shutil.copytree(model, bare)
    (bare / "trust_regions.json").unlink()
    assert main(["predict", str(tmp_path / "a.npy"), "--model", str(bare), "--sampling", "0.1", "--out", str(out), "--overwrite"]) == 0
    assert "removed" in capsys.readouterr().out and not (out / "a.npy_untrusted.png").exists()  # no stale mask beside the new atoms
    assert main(["predict", str(tmp_path / "a.npy"), "--model", str(bare), "--sampling", "0.1", "--out", str(tmp_path / "o2")]) == 0
    assert "has no trust_regions.json" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["a.npy.csv", "a.npy.png", "frames.csv"]
    assert (tmp_path / "o2" / "a.npy.csv").read_text().splitlines()[0].endswith(",vote_fraction")


def test_two_class_train_and_predict_fill_the_class_column(model, tmp_path, capsys, monkeypatch):
    two = tmp_path / "two"
    argv = ["train", "--profile", "smoke", "--members", "2", "--iterations", "2", "--images", "4", "--out", str(two), "--classes", "2"]
    assert main([*argv[:-2], "--dopant-rich-share", "0.5"]) == 2
    assert "add --classes 2" in capsys.readouterr().err and not two.exists()
    assert main([*argv, "--dopant-rich-share", "0.5"]) == 0
    said = capsys.readouterr().out
    assert "two-class" in said and "50% of them dopant_rich" in said
    assert json.loads((two / "ensemble.json").read_text())["architecture"]["nb_classes"] == 2
    assert (two / "trust_regions.json").exists()
    np.save(tmp_path / "a.npy", np.random.default_rng(0).random((112, 112)))
    predict = ["predict", str(tmp_path / "a.npy"), "--sampling", "0.1"]
    from elit_utils import viz

    legends = []

    def drawn(*args, **kwargs):  # the real figure, its legend kept for the check below
        figure = show(*args, **kwargs)
        legends.append([text.get_text() for text in figure.axes[0].get_legend().get_texts()])
        return figure

    show = viz.show_atoms_with_uncertainty
    monkeypatch.setattr(viz, "show_atoms_with_uncertainty", drawn)
    assert main([*predict, "--model", str(two), "--out", str(tmp_path / "o"), "--classes", "2"]) == 0
    lines = (tmp_path / "o" / "a.npy.csv").read_text().splitlines()
    n_si = sum(line.split(",")[4] == "1" for line in lines[1:])
    assert legends == [[f"C: {len(lines) - 1 - n_si} atom{'s' * (len(lines) - 1 - n_si != 1)}", f"Si (probability > 0.5): {n_si} atom{'s' * (n_si != 1)}"]]
    assert lines[0].endswith(",vote_fraction,si_probability,si_uncertainty,trusted")
    rows = [line.split(",") for line in lines[1:]]
    assert all(0 <= float(row[10]) <= 0.5 for row in rows)  # a standard deviation of probabilities
    clear = [row for row in rows if abs(float(row[9]) - 0.5) > 0.001]  # not at the rounding of the CSV's 3 decimals
    assert clear and all(row[4] == ("1" if float(row[9]) > 0.5 else "0") for row in clear)

    capsys.readouterr()
    assert main([*predict, "--model", str(model), "--out", str(tmp_path / "o1"), "--classes", "2"]) == 2
    err = capsys.readouterr().err
    assert "--classes 2" in err and "is a 1-class model" in err and "elit train --classes 2" in err and not (tmp_path / "o1").exists()
    assert main([*predict, "--model", str(model), "--out", str(tmp_path / "o1"), "--classes", "2", "--scheduler", "local:1"]) == 2
    assert "is a 1-class model" in capsys.readouterr().err and not (tmp_path / "o1").exists()
    assert main(["adapt", str(tmp_path / "a.npy"), "--model", str(two), "--sampling", "0.1", "--out", str(tmp_path / "ad")]) == 2
    assert "adapts one-class models only" in capsys.readouterr().err and not (tmp_path / "ad").exists()
