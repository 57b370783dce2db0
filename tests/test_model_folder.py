"""Model folders that check themselves: what Ensemble.load refuses, what a rerun repairs, resizing, kills."""

import json
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from elit_utils import ensemble as ens
from elit_utils import ood
from elit_utils.errors import BadModelFolderError
from elit_utils.unet import UnetArchitecture

TINY = UnetArchitecture(nb_filters=4)
FAST = ens.TrainingConfig(n_iterations=2, batch_size=2, swa_iterations=1, precision="fp32")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = rng.random((4, 32, 32)).astype(np.float32)
    return images, images > 0.9


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    """A finished 3-member folder, trained once; tests work on copies."""
    folder = tmp_path_factory.mktemp("model") / "run"
    _train(folder, data, 3)
    return folder


@pytest.fixture
def model(trained, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    return folder


def _train(folder, data, n, **kwargs):
    images, masks = data
    return ens.train_ensemble(images, masks, folder, n, 0.1, TINY, kwargs.pop("config", FAST), progress=False, **kwargs)


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _edit_record(folder, change):
    record = json.loads((folder / "ensemble.json").read_text())
    change(record)
    (folder / "ensemble.json").write_text(json.dumps(record))


def _refused(folder, match):
    with pytest.raises(BadModelFolderError, match=match) as caught:
        ens.Ensemble.load(folder)
    assert "\n" not in str(caught.value)  # one line, for the CLI
    return str(caught.value)


def test_record_lists_members_seeds_data_hash_and_weight_hashes(model):
    record = json.loads((model / "ensemble.json").read_text())
    assert record["format_version"] == 2 and record["seeds"] == [0, 1, 2] and len(record["data_hash"]) == 16
    for seed in (0, 1, 2):
        entry = record["members"][str(seed)]
        sha = ens.file_sha256(model / f"member_{seed:04d}.safetensors")
        assert entry == {"weights_sha256": sha, "precision": "fp32"}
        member = json.loads((model / f"member_{seed:04d}.json").read_text())
        assert member["weights_sha256"] == sha and member["precision"] == "fp32" and member["seed"] == seed
    loaded = ens.Ensemble.load(model)
    assert loaded.weights_sha256 == {s: record["members"][str(s)]["weights_sha256"] for s in (0, 1, 2)}
    assert loaded.precisions == {0: "fp32", 1: "fp32", 2: "fp32"}


def _swap_weights(folder):
    shutil.copy(folder / "member_0001.safetensors", folder / "member_0002.safetensors")


def _pickle_as_weights(folder):
    (folder / "member_0002.safetensors").write_bytes(pickle.dumps({"weight": np.zeros(3)}))


def _truncate(folder):
    path = folder / "member_0002.safetensors"
    path.write_bytes(path.read_bytes()[:100])


def _duplicate_seed(record):
    record["seeds"] = [0, 1, 1]


DAMAGE = {
    "member never trained": (lambda f: [(f / f"member_0002{s}").unlink() for s in (".json", ".safetensors")], r"holds 2 of the 3 members .*member_0002"),
    "weights without json": (lambda f: (f / "member_0002.json").unlink(), r"member_0002.safetensors has no member_0002.json"),
    "json without weights": (lambda f: (f / "member_0002.safetensors").unlink(), r"member_0002.json has no weights file"),
    "swapped weights": (_swap_weights, r"member_0002.safetensors is not the file member_0002.json describes \(sha256 differs"),
    "truncated weights": (_truncate, r"member_0002.safetensors .*sha256 differs"),
    "zero-byte weights": (lambda f: (f / "member_0002.safetensors").write_bytes(b""), r"member_0002.safetensors .*sha256 differs"),
    "pickle renamed": (_pickle_as_weights, r"member_0002.safetensors .*sha256 differs"),
    "invalid member json": (lambda f: (f / "member_0001.json").write_text("{oops"), r"member_0001.json is not readable JSON.*delete member_0001.json"),
    "empty record": (lambda f: (f / "ensemble.json").write_text("{}"), r"ensemble.json lacks format_version, architecture"),
    "invalid record": (lambda f: (f / "ensemble.json").write_text("not json"), r"ensemble.json is not readable JSON"),
    "record is a list": (lambda f: (f / "ensemble.json").write_text("[1]"), r"ensemble.json holds a JSON list"),
    "negative pixel size": (lambda f: _edit_record(f, lambda r: r.update(sampling_A_per_px=-1)), r"ensemble.json: sampling_A_per_px -1 is not a pixel size"),
    "duplicate seeds": (lambda f: _edit_record(f, _duplicate_seed), r"ensemble.json: seeds \[0, 1, 1\] is not a list of distinct"),
    "unrecorded member": (lambda f: _edit_record(f, lambda r: r["members"].pop("2")), r"member_0002.json finished but is not yet listed"),
    "ambiguous name": (
        lambda f: shutil.copy(f / "member_0001.json", f / "member_01.json"),
        r"member_01.json: a member file of seed 1 must be named member_0001.json",
    ),
    "no record": (lambda f: (f / "ensemble.json").unlink(), r"has no ensemble.json: not an ELIT Lab model folder"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_folder_is_refused_naming_the_file_and_the_remedy(model, damage, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling was attempted")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    change, match = DAMAGE[damage]
    change(model)
    message = _refused(model, match)
    assert any(word in message for word in ("rerun", "restore", "rename", "retrain", "pass the folder")), message


def test_members_of_another_training_are_refused(model, trained, tmp_path, data):
    images, masks = data
    ens.train_ensemble(images, masks, tmp_path / "big", 1, 0.1, UnetArchitecture(nb_filters=8), FAST, first_seed=2, progress=False)
    for suffix in (".json", ".safetensors"):  # a member of another training in place of member 2
        shutil.copy(tmp_path / "big" / f"member_0002{suffix}", model / f"member_0002{suffix}")
    _refused(model, r"member_0002.json belongs to another training \(architecture differ.*move member_0002.json and .safetensors out")
    for suffix in (".json", ".safetensors"):  # or beside the members
        shutil.copy(trained / f"member_0002{suffix}", model / f"member_0002{suffix}")
        shutil.copy(trained / f"member_0002{suffix}", model / f"member_0007{suffix}")
    _refused(model, r"member_0007.json is not one of this ensemble's members \(ensemble.json lists seeds 0-2\); move member_0007")


def test_an_edited_record_is_blamed_not_the_members(model):
    """When ensemble.json disagrees with every member and they agree with each other, ensemble.json was edited."""
    _edit_record(model, lambda record: record["architecture"].update(nb_filters=8))
    _refused(model, r"ensemble.json disagrees with all 3 members on architecture.*put back what the members record: architecture = \{.*\"nb_filters\": 4")


def test_a_backup_copy_is_not_a_member(model, capsys):
    shutil.copy(model / "member_0001.safetensors", model / "member_0001_old.safetensors")
    shutil.copy(model / "member_0001.json", model / "member_0001.json.bak")
    loaded = ens.Ensemble.load(model)
    assert loaded.seeds == [0, 1, 2]
    assert "note: ignoring member_0001.json.bak, member_0001_old.safetensors" in capsys.readouterr().out


def test_a_rerun_repairs_what_a_kill_leaves(model, data, monkeypatch):
    real = ens._train_pack
    calls = []
    monkeypatch.setattr(ens, "_train_pack", lambda *a, **k: (calls.append(a[2]), real(*a, **k))[1])
    _edit_record(model, lambda r: r["members"].pop("2"))  # killed between the member's record and its line in ensemble.json
    (model / "member_0001.json").unlink()  # killed between member 1's weights and its record
    assert _train(model, data, 3).n_members == 3
    assert calls == [[1]]  # member 1 retrained, member 2 only listed


@pytest.mark.parametrize("moment", ["before the member record", "before the ensemble record"])
def test_an_interruption_at_any_write_leaves_a_refused_folder_that_a_rerun_completes(tmp_path, data, monkeypatch, moment):
    real_write, real_record = ens.write_json_atomic, ens._record_member

    def failing_write(path, content):
        if path.name == "member_0001.json":
            raise KeyboardInterrupt
        return real_write(path, content)

    def failing_record(folder, seed, sha, precision):
        if seed == 1:
            raise KeyboardInterrupt
        return real_record(folder, seed, sha, precision)

    if moment == "before the member record":
        monkeypatch.setattr(ens, "write_json_atomic", failing_write)
    else:
        monkeypatch.setattr(ens, "_record_member", failing_record)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, data, 2)
    _refused(tmp_path, "member_0001")
    monkeypatch.undo()
    assert _train(tmp_path, data, 2).n_members == 2


def test_another_size_is_refused_unless_resized(model, data):
    before = _snapshot(model)
    for n in (2, 4):
        with pytest.raises(BadModelFolderError, match=r"holds an ensemble of 3 members \(seeds 0-2\), not \d; .*resize=True \(elit train --resize"):
            _train(model, data, n)
    with pytest.raises(BadModelFolderError, match=r"seeds 0-2, not seeds 1000-1002 \(another --seed\?\)"):
        _train(model, data, 3, first_seed=1000)
    assert _snapshot(model) == before


def _detector_for(ensemble):
    return ood.ShiftDetector(np.zeros(2), np.eye(2), 1.0, ood.member_fingerprint(ensemble))


def test_resize_grows_and_shrinks_and_drops_the_stale_detector(model, data):
    original = ens.Ensemble.load(model)
    kept = {name: (model / name).read_bytes() for name in ("member_0000.safetensors", "member_0001.safetensors", "member_0002.safetensors")}
    detector_path = model / ood.SHIFT_DETECTOR_FILE
    _detector_for(original).save(detector_path)
    assert ood.ShiftDetector.load(detector_path).members == ood.member_fingerprint(original)
    stale = detector_path.read_bytes()
    grown = _train(model, data, 5, resize=True)
    assert grown.seeds == [0, 1, 2, 3, 4] and not detector_path.exists()
    assert all((model / name).read_bytes() == content for name, content in kept.items())  # finished members were not retrained
    detector_path.write_bytes(stale)  # a detector of the 3 members beside the 5-member ensemble
    with pytest.raises(BadModelFolderError, match=r"fitted on other members \(seeds 0, 1, 2; the ensemble now has 0, 1, 2, 3, 4\).*refit"):
        ood.ShiftDetector.load(detector_path)
    with pytest.raises(BadModelFolderError, match="stale"):
        ood.ShiftDetector.load(detector_path, ensemble=grown)
    shrunk = _train(model, data, 2, resize=True)
    assert shrunk.seeds == [0, 1] and not detector_path.exists()
    assert sorted(p.name for p in model.iterdir()) == [
        "ensemble.json",
        "member_0000.json",
        "member_0000.safetensors",
        "member_0001.json",
        "member_0001.safetensors",
    ]
    assert json.loads((model / "ensemble.json").read_text())["seeds"] == [0, 1]


def test_an_interrupted_shrink_is_refused_then_finished(model, data):
    _edit_record(model, lambda r: (r.update(seeds=[0, 1]), r["members"].pop("2")))  # new record written, files not yet removed
    _refused(model, r"member_0002.json is not one of this ensemble's members .*elit train --resize")
    with pytest.raises(BadModelFolderError, match="not one of this ensemble's members"):
        _train(model, data, 2)
    assert _train(model, data, 2, resize=True).seeds == [0, 1]
    assert not (model / "member_0002.safetensors").exists()


def test_a_detector_refits_when_stale_and_is_kept_when_current(model, monkeypatch):
    loaded = ens.Ensemble.load(model)
    fits = []

    def fake_fit(ensemble, n_images, seed, image_size_px, domain="source"):
        fits.append(seed)
        return _detector_for(ensemble)

    monkeypatch.setattr(ood, "fit_shift_detector", fake_fit)
    assert ood.ensure_shift_detector(loaded, 4, 1, 32)[1] is True
    assert ood.ensure_shift_detector(loaded, 4, 2, 32)[1] is False
    (model / ood.SHIFT_DETECTOR_FILE).write_bytes(b"garbage")
    with pytest.raises(BadModelFolderError, match=r"shift_detector.safetensors is not a readable shift detector .*refit"):
        ood.ShiftDetector.load(model / ood.SHIFT_DETECTOR_FILE)
    assert ood.ensure_shift_detector(loaded, 4, 3, 32)[1] is True
    assert ood.ensure_shift_detector(loaded.subset(2), 4, 4, 32)[1] is True  # other members: refitted
    assert fits == [1, 3, 4]


def _make_old_folder(folder):
    """The layout written before this change: no member list, no hashes."""
    _edit_record(folder, lambda r: (r.pop("seeds"), r.pop("members"), r.update(format_version=1)))
    for path in folder.glob("member_*.json"):
        member = json.loads(path.read_text())
        for key in ("weights_sha256", "precision"):
            member.pop(key)
        member["format_version"] = 1
        path.write_text(json.dumps(member))


def test_an_old_folder_loads_with_a_note_and_training_records_it(model, data, monkeypatch, capsys):
    _make_old_folder(model)
    assert ens.Ensemble.load(model).seeds == [0, 1, 2]
    assert "written by an older ELIT Lab without weight hashes" in capsys.readouterr().out
    monkeypatch.setattr(ens, "_train_pack", lambda *a, **k: pytest.fail("a finished member was retrained"))
    assert _train(model, data, 3).n_members == 3
    assert "older" not in capsys.readouterr().out
    assert set(json.loads((model / "ensemble.json").read_text())["members"]) == {"0", "1", "2"}


def test_an_old_folder_with_damaged_weights_names_the_file(model, monkeypatch):
    _make_old_folder(model)
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickling was attempted"))
    _pickle_as_weights(model)
    _refused(model, r"member_0002.safetensors is not a readable safetensors file .*delete member_0002.json")


def test_a_failed_start_does_not_block_a_corrected_one(tmp_path, data):
    (tmp_path / "run").mkdir()
    ens._claim_folder(tmp_path / "run", ens._record(TINY, FAST, "0" * 16, 0.1), [0, 1])  # claimed, then failed before any member
    assert _train(tmp_path / "run", data, 3).n_members == 3


def test_load_refuses_bad_seed_choices(model):
    for seeds, match in (([0, 0], "seed 0 more than once"), ([7], "seed 7 is not a member"), ([], "selects no member"), ([-1], "whole number >= 0")):
        with pytest.raises(ValueError, match=match):
            ens.Ensemble.load(model, seeds=seeds)
    with pytest.raises(ValueError, match="members_per_pack=0"):
        ens.Ensemble.load(model, members_per_pack=0)
    assert ens.Ensemble.load(model, seeds=[2, 0]).seeds == [2, 0]


def _listing(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else None


def _kill_after_progress(command, folder, delay_s, timeout_s=60.0):
    """Start ``command``; once the folder changes (the run has got going: a claim, a temporary file, a
    member) wait ``delay_s`` more, then SIGKILL it. Waiting for progress, not a fixed time, keeps the
    kills inside the training whatever the machine's load."""
    before = _listing(folder)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and _listing(folder) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay_s)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_a_killed_elit_train_never_leaves_a_folder_that_loads_incomplete(tmp_path):
    """SIGKILL `elit train` five times at seeded random moments; every state loads complete or is refused; a rerun completes it."""
    folder = tmp_path / "model"
    command = [sys.executable, "-m", "elit_utils.cli", "train", "--profile", "smoke", "--members", "3", "--iterations", "2", "--images", "4"]
    command += ["--out", str(folder)]
    rng = random.Random(15)
    outcomes = []
    for _ in range(5):
        _kill_after_progress(command, folder, rng.uniform(0.0, 2.0))
        try:
            loaded = ens.Ensemble.load(folder)
        except BadModelFolderError as error:
            assert "\n" not in str(error)
            outcomes.append(str(error).replace(str(folder), "F")[:60])
        else:
            assert loaded.seeds == [0, 1, 2]
            outcomes.append("complete")
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    loaded = ens.Ensemble.load(folder)
    assert loaded.seeds == [0, 1, 2]
    ood.ShiftDetector.load(folder / ood.SHIFT_DETECTOR_FILE, ensemble=loaded)
    print("\nafter each kill:", *outcomes, sep="\n  ")
