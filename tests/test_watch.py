"""``elit watch``: frames dropped into a folder are processed once each, logged, and a restart goes on where it stopped."""

from __future__ import annotations

import fcntl
import json
import os
import time

import numpy as np

from elit_utils.cli import SETTLE_S, WATCH_LOG_FILE, main
from elit_utils.ood import FrameErrorMonitor, error_monitor_path
from elit_utils.stream import MicroscopeStream, Scenario, Segment
from tests.conftest import tiny_ensemble

STREAM = MicroscopeStream(Scenario((Segment(200.0, name="good"),), frame_interval_s=20.0, seed=3, image_size_px=128))


def _drop(folder, indices, stream=STREAM):
    """Write frames as a microscope would (a file per frame), dated in the past so that they count as settled."""
    folder.mkdir(exist_ok=True)
    for index in indices:
        path = folder / f"frame_{index:03d}.npy"
        np.save(path, stream.frame(index).image)
        old = time.time() - 10 * SETTLE_S
        os.utime(path, (old, old))


def _log(out):
    return [json.loads(line) for line in (out / WATCH_LOG_FILE).read_text().splitlines()]


def _watch(folder, model, out, *extra):
    return main(["watch", str(folder), "--model", str(model), "--out", str(out), "--sampling", "0.1", "--once", "--poll-s", "0.2", *extra])


def test_watch_processes_new_frames_once_and_resumes(tmp_path, capsys):
    model, folder, out = tmp_path / "model", tmp_path / "microscope", tmp_path / "out"
    tiny_ensemble(model, 2)
    _drop(folder, range(3))
    (folder / "notes.txt").write_text("not a frame")
    assert _watch(folder, model, out) == 0
    assert FrameErrorMonitor.load(error_monitor_path(model, 128)).image_size_px == 128  # fitted once, beside the members, on frames of their size
    frames = [line for line in _log(out) if line["event"] == "frame"]
    assert [line["file"] for line in frames] == [f"frame_{i:03d}.npy" for i in range(3)]
    for line in frames:
        assert (out / f"{line['file']}.csv").read_text().startswith("row_px,col_px,y_A,x_A,class")
        assert line["n_atoms"] == len((out / f"{line['file']}.csv").read_text().splitlines()) - 1
        assert line["decision"] in ("use", "flag") and 0 <= line["error_estimate"] <= 1 and line["over_limit"] == (line["error_estimate"] > line["error_limit"])
        assert line["error_limit"] >= 0.1  # at least the share of uncertain atoms worth acting on
    written = {p.name: p.stat().st_mtime_ns for p in out.glob("*.csv")}

    _drop(folder, range(3, 5))
    with open(out / WATCH_LOG_FILE, "a") as log:  # a run stopped while writing a line leaves it cut short
        log.write('{"event": "frame", "fi')
    assert _watch(folder, model, out) == 0
    frames = [line for line in _log(out) if line["event"] == "frame"]
    assert [line["file"] for line in frames] == [f"frame_{i:03d}.npy" for i in range(5)]  # only the new frames, each once
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.csv") if p.name in written} == written  # nothing redone
    assert "Resuming: 3 frames" in capsys.readouterr().out


def test_watch_refuses_a_log_of_another_model_and_a_second_watcher(tmp_path, capsys):
    folder, out = tmp_path / "microscope", tmp_path / "out"
    tiny_ensemble(tmp_path / "a", 1)
    tiny_ensemble(tmp_path / "b", 1)
    _drop(folder, range(1))
    assert _watch(folder, tmp_path / "a", out) == 0
    assert _watch(folder, tmp_path / "b", out) == 2
    assert "holds a watch run of the model" in capsys.readouterr().err
    with open(out / ".watch.lock", "w") as lock:  # another watcher holds the folder
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert _watch(folder, tmp_path / "a", out) == 2
    assert "another elit watch is writing into" in capsys.readouterr().err


def test_a_trigger_adapts_the_model_and_swaps_it_in(tmp_path, capsys):
    from elit_utils.ood import member_fingerprint

    model, folder, out = tmp_path / "model", tmp_path / "microscope", tmp_path / "out"
    ensemble = tiny_ensemble(model, 2)
    # a 2-step ensemble reads every frame badly, so its limits set on source frames would not single out the shifted ones:
    # a monitor whose limit every frame exceeds stands in for a trained model's (its limits are tested in test_stream.py)
    monitor = FrameErrorMonitor(entropy_limit_nats=0.5, estimate_limit=0.0, members=member_fingerprint(ensemble), image_size_px=128, min_uncertain_share=0.0)
    monitor.save(error_monitor_path(model, 128))
    shifted = MicroscopeStream(Scenario((Segment(200.0, jumps={"dose_e_per_A2": 3e3, "defocus_A": 60.0}),), seed=4, image_size_px=128))
    _drop(folder, range(4), shifted)
    options = ("--trigger-frames", "1", "--adapt-frames", "2", "--rounds", "1", "--iterations", "2", "--no-source")
    assert _watch(folder, model, out, *options) == 0
    lines = _log(out)
    # the frame that fired the trigger is adapted on first, with the next one: the adapted model reads the frames after them
    assert [line.get("decision", line["event"]) for line in lines[:4]] == ["start", "trigger", "collect", "swap"] and lines[1]["adapt_on"] == ["frame_000.npy"]
    swap = lines[3]
    adapted = out / "models" / "adapt_001" / "round_1"
    assert swap["model"] == str(adapted) and swap["frames"] == ["frame_000.npy", "frame_001.npy"] and swap["previous_model"] == str(model)
    assert (adapted / "ensemble.json").is_file() and error_monitor_path(adapted, 128).is_file()  # the adapted model has its own limits
    assert swap["members"] == member_fingerprint(ensemble.load(adapted)) != member_fingerprint(ensemble)
    after = [line for line in lines[4:] if line["event"] == "frame"]
    assert [line["file"] for line in after] == ["frame_002.npy", "frame_003.npy"] and after[0]["model"] == str(adapted)
    assert all(line["model"] == str(model) for line in lines[1:3])  # frames before the swap were read by the old model

    assert _watch(folder, model, out, *options) == 0  # a restart goes on with the adapted model and redoes nothing
    restart = _log(out)[len(lines) :]
    assert [line["event"] for line in restart] == ["start"] and restart[0]["model_in_use"] == str(adapted)


def test_a_restart_replays_the_latest_flagged_frames_across_a_swap(tmp_path):
    """The trigger's run starts again at a swap, but the latest flagged frames, whichever model flagged them, go on: a
    trigger collects them first. An adaptation waits for --adapt-frames minus --trigger-frames frames the previous one
    did not use (the same rule as the ELIT-triggered policy's)."""
    from argparse import Namespace

    from elit_utils.cli import _ready_to_adapt, _replay

    model, out, options = tmp_path / "model", tmp_path / "out", Namespace(adapt_frames=3, trigger_frames=1)
    frame = {"event": "frame", "model": str(model)}
    lines = [
        {**frame, "file": "a.npy", "decision": "trigger", "over_limit": True, "adapt_on": ["a.npy"]},
        {**frame, "file": "b.npy", "decision": "collect", "over_limit": True},
        {**frame, "file": "c.npy", "decision": "collect", "over_limit": True},
        {"event": "swap", "model": str(tmp_path / "adapted"), "frames": ["a.npy", "b.npy", "c.npy"]},
        {**frame, "file": "x.npy", "decision": "unreadable"},
        {**frame, "file": "d.npy", "decision": "trigger", "over_limit": True, "adapt_on": ["b.npy", "c.npy", "d.npy"]},
    ]
    state = _replay(lines, model, out, adapt_frames=3)
    assert state.model == tmp_path / "adapted" and state.adaptations == 1 and state.handed_over == {"a.npy", "b.npy", "c.npy"}
    assert state.latest_flagged == ["b.npy", "c.npy", "d.npy"] and state.collecting == ["b.npy", "c.npy", "d.npy"]
    assert not _ready_to_adapt(state, options)  # one new frame of the two it needs
    state = _replay([*lines, {**frame, "file": "e.npy", "decision": "collect", "over_limit": False}], model, out, adapt_frames=3)
    assert state.collecting == ["c.npy", "d.npy", "e.npy"] and _ready_to_adapt(state, options)
    assert state.run_files == [] and state.latest_flagged == []


def test_a_file_is_read_only_once_its_size_and_time_have_settled(tmp_path):
    from elit_utils.cli import _ready_files

    frame = tmp_path / "frame.npy"
    frame.write_bytes(b"\x93NUMPY half of it")  # a microscope still writing
    (tmp_path / ".frame2.npy.part").write_bytes(b"")  # hidden temporaries and other files are never frames
    seen: dict = {}
    assert _ready_files(tmp_path, set(), seen) == ([], True)
    assert _ready_files(tmp_path, set(), seen) == ([], True)  # unchanged, but written less than SETTLE_S ago
    old = time.time() - 10 * SETTLE_S
    os.utime(frame, (old, old))
    assert _ready_files(tmp_path, set(), seen) == ([], True)  # changed since the last look
    assert _ready_files(tmp_path, set(), seen) == ([frame], False)
    with open(frame, "ab") as handle:
        handle.write(b" and the rest")
    os.utime(frame, (old, old))  # same time, other size: still being written
    assert _ready_files(tmp_path, set(), seen) == ([], True)
    assert _ready_files(tmp_path, {"frame.npy"}, seen) == ([], False)  # done frames are not looked at again
