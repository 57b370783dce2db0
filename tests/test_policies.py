"""Policies that decide on each frame of a microscope stream: static, always-retrain, ELIT-triggered, compared on one stream."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from elit_utils.errors import BadValueError
from elit_utils.iterate import AdaptConfig
from elit_utils.ood import FrameErrorMonitor, fit_frame_error_monitor
from elit_utils.stream import (
    DECISIONS,
    DEFAULT_SCENARIO,
    SOURCE_MODEL,
    AlwaysRetrainPolicy,
    FrameReading,
    MicroscopeStream,
    Scenario,
    Segment,
    StaticPolicy,
    Trigger,
    TriggeredPolicy,
    run_policy,
    summarise_policies,
)

#: 5 source frames, then 5 frames at a dose 300x lower than the source's: a shift the smoke-sized members clearly misread.
#: Frames 10 min apart, so that an adaptation (seconds) is always done by the next frame, however loaded the CPU.
SHIFTED_HALF = Scenario(
    (Segment(3000.0, name="source", drifted=False), Segment(3000.0, jumps={"dose_e_per_A2": 1e3}, name="dose drop")),
    frame_interval_s=600.0,
    image_size_px=64,
)
ADAPT = AdaptConfig(rounds=1, iterations_per_round=2, batch_size=2, tile_px=64)
RUN_FRAMES, ADAPT_FRAMES, BLOCK_FRAMES = 2, 3, 4


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A smoke-sized ensemble (2 members of 8 filters, 40 steps on 24 source frames of 64 px) and its frame error monitor."""
    from elit_utils.ensemble import TrainingConfig, train_ensemble
    from elit_utils.simulate import dataset
    from elit_utils.unet import UnetArchitecture

    train = dataset("source", n=24, seed=0, image_size_px=64, cache=False)
    config = TrainingConfig(n_iterations=40, batch_size=4, learning_rate=3e-3, swa_iterations=10)
    ensemble = train_ensemble(train.images, train.atom_mask, tmp_path_factory.mktemp("model"), 2, 0.1, UnetArchitecture(nb_filters=8), config, progress=False)
    return ensemble, fit_frame_error_monitor(ensemble, 8, 4100, 64)


def _high_limit_monitor(model, tmp_path) -> FrameErrorMonitor:
    """The model's monitor with its flag limit just above every source frame's estimate in the stream."""
    ensemble, monitor = model
    log = run_policy(MicroscopeStream(SHIFTED_HALF), ensemble, StaticPolicy(), ADAPT, out_dir=tmp_path / "probe", monitor=monitor)
    source_estimates = [line["error_estimate"] for line in log if not line["drifted"]]
    return dataclasses.replace(monitor, estimate_limit=min(max(source_estimates) + 0.02, 1.0), min_uncertain_share=0.0)


@pytest.fixture(scope="module")
def runs(model, tmp_path_factory):
    """Each policy's log of the same stream, and the monitor the triggered policy used."""
    ensemble, monitor = model
    folder = tmp_path_factory.mktemp("runs")
    high = _high_limit_monitor(model, folder)
    stream = MicroscopeStream(SHIFTED_HALF)
    policies = [(StaticPolicy(), monitor), (AlwaysRetrainPolicy(BLOCK_FRAMES), monitor), (TriggeredPolicy(Trigger(RUN_FRAMES), ADAPT_FRAMES), high)]
    logs = {policy.name: run_policy(stream, ensemble, policy, ADAPT, out_dir=folder / policy.name, monitor=judge) for policy, judge in policies}
    return logs, high, folder


def test_the_default_scenario_marks_good_conditions_and_finer_pixels_as_undrifted():
    undrifted = [segment.name for segment in DEFAULT_SCENARIO.segments if not segment.drifted]
    assert undrifted == ["good conditions", "finer pixels (read correctly)", "good conditions again"]
    with pytest.raises(BadValueError, match="drifted must be True or False"):
        Scenario((Segment(60.0, drifted="no"),))


def test_static_never_adapts_and_logs_each_frame_once(runs, model):
    logs, _, folder = runs
    log = logs["static"]
    assert [line["frame"] for line in log] == list(range(len(MicroscopeStream(SHIFTED_HALF))))
    assert {line["model"] for line in log} == {SOURCE_MODEL}
    assert all(0.0 <= line["f1"] <= 1.0 for line in log)
    assert {line["decision"] for line in log} <= {"use", "flag"}
    assert all(line["error_limit"] == model[1].flag_limit for line in log)
    assert all((line["decision"] == "flag") == line["error_flag"] == (line["error_estimate"] > model[1].flag_limit) for line in log)
    assert log[-1]["compute_s"] == 0.0 and log[-1]["member_iterations"] == 0 and log[-1]["adaptations"] == 0
    assert not (folder / "static").exists() or not any((folder / "static").iterdir())


def test_always_retrain_adapts_on_every_block_and_spends_the_most(runs, model):
    logs, _, folder = runs
    log = logs["always retrain"]
    n_frames = len(log)
    blocks = n_frames // BLOCK_FRAMES
    assert log[-1]["adaptations"] == blocks
    assert log[-1]["member_iterations"] == blocks * len(model[0].seeds) * ADAPT.iterations_per_round
    assert {line["decision"] for line in log} <= {"collect", "swap"}
    swaps = [line["frame"] for line in log if line["decision"] == "swap"]
    assert swaps == [BLOCK_FRAMES * k for k in range(1, blocks + 1) if BLOCK_FRAMES * k < n_frames]  # adaptation is quicker than a frame interval here
    assert sorted(p.name for p in (folder / "always retrain").iterdir()) == [f"adapt_{k:03d}" for k in range(1, blocks + 1)]
    triggered = logs["ELIT-triggered"][-1]
    assert triggered["member_iterations"] == triggered["adaptations"] * len(model[0].seeds) * ADAPT.iterations_per_round > 0
    assert log[-1]["compute_s"] > 0 and logs["ELIT-triggered"][-1]["compute_s"] > 0  # seconds are measured, so not compared here


def test_triggered_adapts_first_on_the_run_that_fired_it_and_never_where_undrifted(runs):
    from elit_utils.ood import FrameErrorMonitor, error_monitor_path

    logs, high, folder = runs
    log = logs["ELIT-triggered"]
    flags = [line["error_flag"] for line in log]
    assert not any(line["error_flag"] or line["decision"] == "trigger" for line in log if not line["drifted"])
    triggers = [k for k, line in enumerate(log) if line["decision"] == "trigger"]
    assert triggers, f"the dose drop should raise the error estimate over {high.flag_limit:.3f}: {[line['error_estimate'] for line in log]}"
    first = triggers[0]
    first_run_ends = next(k for k in range(RUN_FRAMES - 1, len(flags)) if all(flags[k - RUN_FRAMES + 1 : k + 1]))
    assert first == first_run_ends
    collected = ADAPT_FRAMES - RUN_FRAMES  # the run that fired the trigger, then as many new frames as make ADAPT_FRAMES
    last = first + collected
    assert [line["decision"] for line in log[first + 1 : last + 1]] == ["collect"] * collected
    assert log[last]["adapt_on_frames"] == [line["frame"] for line in log[first - RUN_FRAMES + 1 : last + 1]]
    assert {line["model"] for line in log[: last + 1]} == {SOURCE_MODEL}
    adapted = [line for line in log if line["model"] == "adapt_001"]
    assert adapted and adapted[0]["frame"] == log[last + 1]["frame"]
    # the adapted model is judged by a monitor of its own, fitted on fresh source frames as the starting one was
    rounds = sorted((folder / "ELIT-triggered" / "adapt_001").glob("round_*"))
    own = FrameErrorMonitor.load(error_monitor_path(rounds[-1], 64))
    assert own.n_source_frames == high.n_source_frames and own.entropy_limit_nats != high.entropy_limit_nats
    assert all(line["error_limit"] == max(own.estimate_limit, high.min_uncertain_share) for line in adapted)


def test_frames_taken_while_adapting_are_read_by_the_old_model(model, tmp_path):
    """With a frame every millisecond, the adaptation (seconds) outlasts the rest of the run: the old model reads every later frame."""
    ensemble, monitor = model
    every_frame_flagged = dataclasses.replace(monitor, estimate_limit=0.0, min_uncertain_share=0.0)
    quick = Scenario((Segment(0.01, name="source"),), frame_interval_s=0.001, image_size_px=64)
    model_files = sorted(p.name for p in ensemble.folder.iterdir())
    log = run_policy(MicroscopeStream(quick), ensemble, TriggeredPolicy(Trigger(1), 2), ADAPT, out_dir=tmp_path / "out", monitor=every_frame_flagged)
    assert [line["decision"] for line in log] == ["trigger", "collect"] + ["adapting"] * (len(log) - 2)
    assert {line["model"] for line in log} == {SOURCE_MODEL} and [line["adaptations"] for line in log[:3]] == [0, 1, 1]
    assert log[1]["adapt_on_frames"] == [0, 1] and log[1]["adaptation_ready_s"] > log[-1]["time_s"]
    assert sorted(p.name for p in ensemble.folder.iterdir()) == model_files and (tmp_path / "out" / "adapt_001" / "round_1").is_dir()


def test_an_adaptation_lasts_its_member_iterations_over_the_stated_speed(model, tmp_path):
    """On the stream's clock, an adaptation of I member-iterations at R per second lasts I / R s, whatever the machine."""
    ensemble, monitor = model
    every_frame_flagged = dataclasses.replace(monitor, estimate_limit=0.0, min_uncertain_share=0.0)
    steady = Scenario((Segment(600.0, name="source"),), frame_interval_s=10.0, image_size_px=64)
    per_adaptation = len(ensemble.seeds) * ADAPT.iterations_per_round * ADAPT.rounds
    speed = per_adaptation / 25.0  # each adaptation lasts 25 s: ready between the 3rd and 4th frame after it starts
    policy = TriggeredPolicy(Trigger(1), 2)
    log = run_policy(
        MicroscopeStream(steady), ensemble, policy, ADAPT, frames=range(8), out_dir=tmp_path / "out", member_iterations_per_s=speed, monitor=every_frame_flagged
    )
    started = next(line for line in log if line["adapt_on_frames"])
    assert started["adaptation_ready_s"] == pytest.approx(started["time_s"] + 25.0)
    first_new = next(line for line in log if line["model"] == "adapt_001")
    assert first_new["frame"] == started["frame"] + 3
    for bad in (0.0, -1.0, float("nan"), "fast"):
        with pytest.raises(BadValueError, match="member_iterations_per_s"):
            run_policy(MicroscopeStream(steady), ensemble, policy, ADAPT, frames=[0], out_dir=tmp_path / "bad", member_iterations_per_s=bad)


def test_a_new_model_that_flags_in_turn_adapts_at_once_on_the_frames_flagged_meanwhile(model, tmp_path):
    """Every frame flagged, a frame every 10 s, an adaptation lasting 25 s: the old model flags frames 2-3 while adapt_001 is
    made; when adapt_001 flags frame 4 in turn, the trigger fires and adapt_002 starts at once on frames 3-4, waiting for none."""
    ensemble, monitor = model
    every_frame_flagged = dataclasses.replace(monitor, estimate_limit=0.0, min_uncertain_share=0.0)
    steady = Scenario((Segment(600.0, name="source"),), frame_interval_s=10.0, image_size_px=64)
    speed = len(ensemble.seeds) * ADAPT.iterations_per_round * ADAPT.rounds / 25.0
    judged = {"monitor": every_frame_flagged, "member_iterations_per_s": speed}
    with pytest.MonkeyPatch.context() as patch:  # the adapted models flag every frame too
        patch.setattr("elit_utils.ood.ensure_frame_error_monitor", lambda *args, **kwargs: (every_frame_flagged, False))
        log = run_policy(MicroscopeStream(steady), ensemble, TriggeredPolicy(Trigger(1), 2), ADAPT, frames=range(6), out_dir=tmp_path / "out", **judged)
    assert [line["decision"] for line in log] == ["trigger", "collect", "adapting", "adapting", "trigger", "adapting"]
    assert [line["adapt_on_frames"] for line in log] == [[], [0, 1], [], [], [3, 4], []]
    assert [line["model"] for line in log] == [SOURCE_MODEL] * 4 + ["adapt_001"] * 2


def test_every_adaptation_waits_for_new_frames_where_the_drift_persists(model, tmp_path):
    """Every frame flagged by every model, adaptations done by the next frame: frames an earlier adaptation used come back,
    but each adaptation brings at least ADAPT_FRAMES - RUN_FRAMES new ones, so a drift no adaptation fixes is not adapted
    to on every run of flags."""
    ensemble, monitor = model
    every_frame_flagged = dataclasses.replace(monitor, estimate_limit=0.0, min_uncertain_share=0.0)
    steady = Scenario((Segment(600.0, name="source"),), frame_interval_s=60.0, image_size_px=64)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("elit_utils.ood.ensure_frame_error_monitor", lambda *args, **kwargs: (every_frame_flagged, False))
        log = run_policy(
            MicroscopeStream(steady),
            ensemble,
            TriggeredPolicy(Trigger(1), 3),
            ADAPT,
            out_dir=tmp_path / "out",
            monitor=every_frame_flagged,
            member_iterations_per_s=1e6,
        )
    handed = [line["adapt_on_frames"] for line in log if line["adapt_on_frames"]]
    assert handed == [[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 7, 8]]
    assert all(len(set(later) - set(earlier)) >= 2 for earlier, later in itertools.pairwise(handed))


def test_each_profile_plays_the_default_session_at_its_own_size():
    from elit_utils.config import get_profile
    from elit_utils.stream import profile_stream

    for name in ("smoke", "quick", "paper"):
        run, plan = get_profile(name), profile_stream(name)
        assert plan.scenario.segments == DEFAULT_SCENARIO.segments and plan.scenario.image_size_px == run.image_size_px
        assert plan.adapt_config.iterations_per_round <= run.adapt_iterations_per_round and plan.adapt_config.tile_px == run.adapt_tile_px
        assert 1 <= plan.trigger_run_frames < plan.block_frames and plan.adapt_frames < plan.block_frames
        assert plan.block_frames * 3 <= plan.scenario.n_frames  # always-retrain adapts at least three times
    assert profile_stream("smoke").scenario.n_frames < profile_stream("quick").scenario.n_frames


def test_trust_regions_and_the_shift_detector_of_the_model_folder_are_logged(model, tmp_path):
    import shutil

    from elit_utils.clutter import TrustRegions
    from elit_utils.config import TRUST_REGIONS_FILE
    from elit_utils.ensemble import Ensemble
    from elit_utils.ood import ensure_shift_detector, member_fingerprint

    folder = tmp_path / "model"
    shutil.copytree(model[0].folder, folder)
    ensemble = Ensemble.load(folder)
    detector, _ = ensure_shift_detector(ensemble, 6, 4000, 64)
    lines = {}
    for limit_nats in (0.0, np.log(2)):  # every pixel untrusted; none
        TrustRegions(float(limit_nats), members=member_fingerprint(ensemble)).save(folder / TRUST_REGIONS_FILE)
        lines[limit_nats] = run_policy(MicroscopeStream(SHIFTED_HALF), ensemble, StaticPolicy(), ADAPT, frames=[0, 9], out_dir=tmp_path / "out")
    assert all(line["trusted_share"] == 0.0 and line["trusted_precision"] is None for line in lines[0.0])
    assert all(line["trusted_share"] == 1.0 and line["trusted_precision"] == line["precision"] for line in lines[np.log(2)])
    assert all(line["shift_flag"] == (line["shift_score"] > detector.limit) for line in lines[0.0])
    assert "trusted_share" not in run_policy(MicroscopeStream(SHIFTED_HALF), model[0], StaticPolicy(), ADAPT, frames=[0], out_dir=tmp_path / "bare")[0]


def test_a_replay_gives_the_same_decisions(runs, model, tmp_path):
    logs, high, _ = runs
    atoms = {}
    policy = TriggeredPolicy(Trigger(RUN_FRAMES), ADAPT_FRAMES)
    replay = run_policy(MicroscopeStream(SHIFTED_HALF), model[0], policy, ADAPT, out_dir=tmp_path / "replay", atoms_out=atoms, monitor=high)
    assert sorted(atoms) == [line["frame"] for line in replay] and [len(atoms[line["frame"]]) for line in replay] == [line["n_atoms"] for line in replay]
    keys = ("frame", "decision", "model", "error_flag", "n_atoms", "adaptations", "member_iterations")
    assert [{k: line[k] for k in keys} for line in replay] == [{k: line[k] for k in keys} for line in logs["ELIT-triggered"]]


def test_policies_never_see_the_truth(model, tmp_path):
    class Peeking(StaticPolicy):
        def decide(self, reading):
            _ = reading.truth
            return StaticPolicy.decide(self, reading)

    assert not {"truth", "segment", "drifted", "conditions", "sample"} & {f.name for f in dataclasses.fields(FrameReading)}
    with pytest.raises(AttributeError, match="truth"):
        run_policy(MicroscopeStream(SHIFTED_HALF), model[0], Peeking(), ADAPT, frames=[0], out_dir=tmp_path / "peek")


def test_the_summary_compares_policies_on_the_frames_static_fails(runs):
    logs, _, _ = runs
    summary = summarise_policies(logs)
    failing = [line["frame"] for line in logs["static"] if line["drifted"] and line["f1"] < summary["static_fails_below_f1"]]
    assert summary["frames_where_static_fails"] == failing
    triggered, always = summary["policies"]["ELIT-triggered"], summary["policies"]["always retrain"]
    assert triggered["false_triggers"] == 0 and triggered["false_trigger_rate"] == 0.0
    swapped_in = always["adaptations"] - (len(logs["always retrain"]) % BLOCK_FRAMES == 0)  # a block ending with the run is never swapped in
    assert summary["policies"]["static"]["after_swaps"] == [] and len(always["after_swaps"]) == swapped_in
    ratio = summary["compute_triggered_over_always_retrain"]["member_iterations"]
    assert ratio == triggered["member_iterations"] / always["member_iterations"] > 0
    static_on_failing = [line["f1"] for line in logs["static"] if line["frame"] in failing]
    assert summary["policies"]["static"]["median_f1_where_static_fails"] == (float(np.median(static_on_failing)) if failing else None)
    with pytest.raises(BadValueError, match="static"):
        summarise_policies({"ELIT-triggered": logs["ELIT-triggered"]})


def test_bad_runs_are_refused(model, tmp_path):
    ensemble = model[0]
    stream = MicroscopeStream(SHIFTED_HALF)
    with pytest.raises(BadValueError, match="lies in the model folder"):
        run_policy(stream, ensemble, StaticPolicy(), ADAPT, out_dir=ensemble.folder / "adapted")
    with pytest.raises(BadValueError, match="increasing order"):
        run_policy(stream, ensemble, StaticPolicy(), ADAPT, frames=[3, 1], out_dir=tmp_path / "out")
    with pytest.raises(BadValueError, match="block_frames"):
        AlwaysRetrainPolicy(0)
    with pytest.raises(BadValueError, match="needs a Trigger"):
        TriggeredPolicy(None, 2)
    with pytest.raises(BadValueError, match="frame error monitor's flags: pass run_policy"):
        run_policy(stream, ensemble, TriggeredPolicy(Trigger(), 2), ADAPT, frames=[0], out_dir=tmp_path / "out")
    with pytest.raises(BadValueError, match="monitor must be a FrameErrorMonitor"):
        run_policy(stream, ensemble, StaticPolicy(), ADAPT, frames=[0], out_dir=tmp_path / "out", monitor=0.1)
    with pytest.raises(BadValueError, match="must record the source frames it was fitted on"):
        run_policy(stream, ensemble, StaticPolicy(), ADAPT, frames=[0], out_dir=tmp_path / "out", monitor=FrameErrorMonitor(0.5, 0.1))
    assert set(DECISIONS) == {"use", "flag", "trigger", "collect", "adapting", "swap"}
