import json
import subprocess
import sys

import nbformat
import numpy as np
import pytest

from elit_utils.cli import build_parser, main


def test_help_lists_the_subcommands():
    result = subprocess.run([sys.executable, "-m", "elit_utils.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("reproduce", "simulate", "train", "predict", "adapt", "info"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["reproduce", "simulate", "train", "predict", "adapt", "info"])
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


def test_bad_arguments_are_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["simulate", "--domain", "moon", "--out", str(tmp_path)])
    assert main(["simulate", "-n", "0", "--out", str(tmp_path / "x")]) == 2
    assert "positive number" in capsys.readouterr().err


def _tiny_notebook(path, body):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("profile = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


def test_reproduce_runs_notebooks_and_writes_report(tmp_path):
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
    assert main(["reproduce", "--profile", "smoke", "--out", str(out), "--notebooks", str(notebooks)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["demo"] == {"profile": "smoke", "config_hash": metrics["demo"]["config_hash"], "values": {"members": 2}}
    assert "01_demo" in metrics["reproduce"]["values"]["notebook_seconds"]
    assert json.loads((out / "metrics.previous.json").read_text()) == {"old": {"values": {}}}
    assert (out / "figures" / "demo.png").exists() and (out / "notebooks" / "01_demo.ipynb").exists()
    assert "| members | 2 |" in (out / "summary.md").read_text()


def test_reproduce_fails_loudly_when_a_notebook_fails(tmp_path):
    notebooks = tmp_path / "nbs"
    notebooks.mkdir()
    _tiny_notebook(notebooks / "01_broken.ipynb", "raise RuntimeError('boom')")
    with pytest.raises(Exception, match="boom"):
        main(["reproduce", "--profile", "smoke", "--out", str(tmp_path / "r"), "--notebooks", str(notebooks)])


def test_train_then_predict_writes_atoms_with_uncertainty(tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["train", "--profile", "smoke", "--members", "2", "--iterations", "2", "--images", "4", "--out", str(model)]) == 0
    assert sorted(p.name for p in model.glob("member_*.safetensors")) == ["member_0000.safetensors", "member_0001.safetensors"]
    image = tmp_path / "frame.npy"
    np.save(image, np.random.default_rng(0).random((40, 48)))
    assert main(["predict", str(image), "--model", str(model), "--out", str(tmp_path / "out")]) == 2
    assert "no pixel size" in capsys.readouterr().err
    assert (model / "shift_detector.safetensors").exists()  # elit train fits one on fresh frames
    assert main(["predict", str(image), "--model", str(model), "--sampling", "0.1", "--out", str(tmp_path / "out")]) == 0
    assert "feature distance" in capsys.readouterr().out
    frames = (tmp_path / "out" / "frames.csv").read_text().splitlines()
    assert frames[0] == "image,atoms,mean_mi_nats,feature_distance,flag_limit,out_of_distribution" and frames[1].startswith("frame.npy,")
    assert frames[1].split(",")[-1] == "True"  # uniform noise is nothing like a graphene frame
    header = (tmp_path / "out" / "frame.csv").read_text().splitlines()[0]
    assert header == "row_px,col_px,y_A,x_A,class,uncertainty_mi_nats,entropy_nats,variance,vote_fraction"
    assert (tmp_path / "out" / "frame.png").stat().st_size > 0
    assert main(["predict", str(image), "--model", str(model), "--sampling", "0.1", "--out", str(tmp_path / "out")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_adapt_writes_rounds_history_and_atoms_and_refuses_bad_frames(tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["train", "--profile", "smoke", "--members", "2", "--iterations", "2", "--images", "4", "--out", str(model)]) == 0
    rng = np.random.default_rng(0)
    frames = [tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "broken.npy"]
    for frame, image in zip(frames, [rng.random((48, 48)), rng.random((40, 64)), np.full((48, 48), np.nan)]):
        np.save(frame, image)
    out = tmp_path / "adapted"

    def adapt(*options_and_frames):
        return main(["adapt", "--model", str(model), "--rounds", "1", "--iterations", "2", "--out", str(out), *map(str, options_and_frames)])

    assert adapt(*frames[:2]) == 2
    assert "no pixel size" in capsys.readouterr().err
    assert adapt("--sampling", "0.1", *frames) == 2
    assert "broken.npy" in (err := capsys.readouterr().err) and "NaN" in err
    assert adapt("--sampling", "0.1", *frames[:2]) == 0
    assert (out / "round_1" / "member_0000.safetensors").exists()
    assert (out / "history.csv").read_text().startswith("round,")
    assert (out / "atoms" / "a.csv").read_text().startswith("row_px,col_px")
    before = (out / "atoms" / "b.csv").read_text()
    assert adapt("--sampling", "0.1", *frames[:2]) == 2
    assert "already exist" in capsys.readouterr().err
    assert (out / "atoms" / "b.csv").read_text() == before
