"""The stream replay widget: a slider over a session's frames, each policy's atoms and state on the frame."""

from __future__ import annotations

import numpy as np
import pytest

from elit_utils.errors import BadValueError
from elit_utils.locate import AtomTable
from elit_utils.stream import MicroscopeStream, Scenario, Segment
from elit_utils.widgets import StreamReplay, stream_replay

#: Four frames of 64 px, 20 s apart: two in source conditions, two at a dose 300x lower.
SESSION = MicroscopeStream(
    Scenario(
        (Segment(40.0, name="good", drifted=False), Segment(40.0, jumps={"dose_e_per_A2": 1e3}, name="dose drop")),
        frame_interval_s=20.0,
        image_size_px=64,
    )
)
ENTROPY_LIMIT_NATS = 0.3


def _atoms(frame: int, seed: int) -> AtomTable:
    """The frame's true atoms, each with a made-up entropy (nats) between 0 and ln 2."""
    truth = SESSION.frame(frame).truth.atoms
    entropy = np.random.default_rng([seed, frame]).uniform(0, np.log(2), len(truth))
    zeros = np.zeros(len(truth))
    return AtomTable(truth[:, 0], truth[:, 1], SESSION.frame(frame).sampling_A_per_px, zeros, entropy, zeros, zeros + 1)


def _session_logs(frames: tuple[int, ...] = (0, 1, 2, 3)) -> tuple[dict, dict]:
    """Logs of a static and an ELIT-triggered policy (as run_policy writes them) and their atoms: the triggered one adapts on the dose drop."""
    logs, atoms_by_policy = {}, {}
    plans = {"static": ("source",) * 4, "ELIT-triggered": ("source", "source", "source", "adapt_001")}
    decisions = {"static": ("use", "use", "flag", "flag"), "ELIT-triggered": ("use", "use", "trigger", "swap")}
    for seed, name in enumerate(plans):
        atoms_by_policy[name] = {k: _atoms(k, seed) for k in frames}
        logs[name] = [
            {
                "frame": k,
                "time_s": 20.0 * k,
                "segment": SESSION.frame(k).segment,
                "drifted": k >= 2,
                "policy": name,
                "model": plans[name][k],
                "decision": decisions[name][k],
                "n_atoms": len(atoms_by_policy[name][k]),
                "f1": 0.9 - 0.1 * k + 0.05 * seed * k,
                "error_estimate": 0.02 + 0.1 * k,
                "error_flag": k >= 2,
            }
            for k in frames
        ]
    return logs, atoms_by_policy


def test_moving_the_slider_shows_each_policys_state_on_that_frame():
    logs, atoms = _session_logs()
    replay = stream_replay(SESSION, logs, atoms, ENTROPY_LIMIT_NATS)
    assert [label for label, _ in replay.position.options] == ["0.0 min · good", "0.3 min · good", "0.7 min · dose drop", "1.0 min · dose drop"]
    assert "model source, decision 'use', F1 0.900" in replay.titles["ELIT-triggered"]
    replay.position.value = 3
    assert "model adapt_001, decision 'swap', F1 0.750" in replay.titles["ELIT-triggered"]
    assert "model source, decision 'flag', F1 0.600" in replay.titles["static"]
    untrusted = int((atoms["static"][3].entropy > ENTROPY_LIMIT_NATS).sum())
    assert f"{untrusted} of {len(atoms['static'][3])} atoms over 0.30 nats" in replay.titles["static"]
    assert "1.0 min" in replay.summary.value and "dose drop" in replay.summary.value and "ELIT-triggered 32.0% <b>flagged</b>" in replay.summary.value
    assert len(replay.output.outputs) == 1  # redrawn, not appended
    replay.position.value = 0
    assert "static 2.0% not flagged" in replay.summary.value and "decision 'use'" in replay.titles["static"]


def test_the_figure_crosses_out_the_atoms_above_the_entropy_limit():
    logs, atoms = _session_logs()
    replay = StreamReplay(SESSION, logs, atoms, ENTROPY_LIMIT_NATS)
    fig = replay.figure(2)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == list(replay.panel_titles(2).values())
    for ax, name in zip(panels, logs):
        crosses = ax.collections[-1].get_offsets()
        untrusted = atoms[name][2].entropy > ENTROPY_LIMIT_NATS
        assert np.allclose(crosses, np.column_stack([atoms[name][2].cols_px[untrusted], atoms[name][2].rows_px[untrusted]]))
        assert ax.get_legend().get_texts()[0].get_text() == "do not trust (entropy > 0.30 nats: red line)"


def test_each_model_crosses_out_atoms_above_its_own_logged_limit():
    """run_policy logs the entropy limit of the model in use (an adapted model has its own); the argument stands in where none is logged."""
    logs, atoms = _session_logs()
    logs["ELIT-triggered"][3]["entropy_limit_nats"] = 0.5
    replay = StreamReplay(SESSION, logs, atoms, ENTROPY_LIMIT_NATS)
    assert replay.limit_nats("ELIT-triggered", 3) == 0.5 and replay.limit_nats("ELIT-triggered", 2) == replay.limit_nats("static", 3) == ENTROPY_LIMIT_NATS
    untrusted = atoms["ELIT-triggered"][3].entropy > 0.5
    assert f"{int(untrusted.sum())} of {len(untrusted)} atoms over 0.50 nats" in replay.panel_titles(3)["ELIT-triggered"]
    panels = [ax for ax in replay.figure(3).axes if ax.get_title()]
    crosses = panels[1].collections[-1].get_offsets()
    assert np.allclose(crosses, np.column_stack([atoms["ELIT-triggered"][3].cols_px[untrusted], atoms["ELIT-triggered"][3].rows_px[untrusted]]))
    logs["ELIT-triggered"][3]["entropy_limit_nats"] = 0.8
    with pytest.raises(BadValueError, match="the 'ELIT-triggered' log's entropy_limit_nats on frame 3 must lie between 0 and ln 2.* got 0.8; replay"):
        StreamReplay(SESSION, logs, atoms, ENTROPY_LIMIT_NATS)


def test_a_replay_of_some_frames_only_shows_those():
    logs, atoms = _session_logs(frames=(1, 3))
    replay = StreamReplay(SESSION, logs, atoms, ENTROPY_LIMIT_NATS)
    assert replay.frames == [1, 3] and [value for _, value in replay.position.options] == [1, 3]


def test_bad_replays_are_refused():
    logs, atoms = _session_logs()
    with pytest.raises(BadValueError, match="no logs to replay"):
        StreamReplay(SESSION, {}, atoms, ENTROPY_LIMIT_NATS)
    with pytest.raises(BadValueError, match="the 'static' log is empty"):
        StreamReplay(SESSION, {**logs, "static": []}, atoms, ENTROPY_LIMIT_NATS)
    with pytest.raises(BadValueError, match="the 'ELIT-triggered' log covers frames \\[0, 1, 2\\] but 'static' covers \\[0, 1, 2, 3\\]"):
        StreamReplay(SESSION, {**logs, "ELIT-triggered": logs["ELIT-triggered"][:3]}, atoms, ENTROPY_LIMIT_NATS)
    with pytest.raises(BadValueError, match="no atoms of the 'static' policy for frames \\[2\\]; pass run_policy\\(..., atoms_out="):
        StreamReplay(SESSION, logs, {**atoms, "static": {k: a for k, a in atoms["static"].items() if k != 2}}, ENTROPY_LIMIT_NATS)
    with pytest.raises(BadValueError, match="frame 1 hold .* atoms, its log"):
        StreamReplay(SESSION, logs, {**atoms, "static": {**atoms["static"], 1: atoms["static"][1].select(np.array([0]))}}, ENTROPY_LIMIT_NATS)
    with pytest.raises(BadValueError, match="the 'static' log lacks f1"):
        StreamReplay(SESSION, {**logs, "static": [{k: v for k, v in line.items() if k != "f1"} for line in logs["static"]]}, atoms, ENTROPY_LIMIT_NATS)
    slower = MicroscopeStream(Scenario((Segment(400.0),), frame_interval_s=100.0, image_size_px=64))
    with pytest.raises(BadValueError, match="frame 1 at 20 s is not a frame of this session .* replay with the session the logs were played on"):
        StreamReplay(slower, logs, atoms, ENTROPY_LIMIT_NATS)
    with pytest.raises(BadValueError, match="entropy_limit_nats must lie between 0 and ln 2"):
        StreamReplay(SESSION, logs, atoms, 0.9)
    with pytest.raises(BadValueError, match="the replay shows the frames of a MicroscopeStream"):
        StreamReplay(SESSION.scenario, logs, atoms, ENTROPY_LIMIT_NATS)
