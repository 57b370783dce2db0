"""The simulated microscope stream: seeded replay, scenario timeline, validation, and what each default segment does."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from elit_utils.errors import BadModelFolderError, BadValueError
from elit_utils.ood import FrameErrorMonitor, ensure_frame_error_monitor, error_monitor_path
from elit_utils.stream import DEFAULT_SCENARIO, MicroscopeStream, Scenario, Segment, Trigger

SMALL = Scenario(
    (Segment(60.0, name="good"), Segment(80.0, creeps={"defocus_A": 40.0}, name="creep"), Segment(40.0, jumps={"dose_e_per_A2": 3e4}, name="drop")),
    frame_interval_s=20.0,
    seed=5,
    image_size_px=64,
)


def test_a_scenario_replays_bit_identically_and_any_frame_can_be_made_alone():
    first, second = list(MicroscopeStream(SMALL)), list(MicroscopeStream(SMALL))
    assert len(first) == SMALL.n_frames == 9
    for a, b in zip(first, second):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.truth.atoms, b.truth.atoms)
    alone = MicroscopeStream(SMALL).frame(7)  # made without frames 0..6
    assert np.array_equal(alone.image, first[7].image) and alone.time_s == 140.0 and alone.segment == "drop"
    other_seed = MicroscopeStream(Scenario(SMALL.segments, SMALL.frame_interval_s, seed=6, image_size_px=64)).frame(7)
    assert not np.array_equal(other_seed.image, alone.image)
    with pytest.raises(IndexError, match="from 0 to 8"):
        MicroscopeStream(SMALL).frame(9)


def test_a_creep_is_monotone_between_its_endpoints_and_a_jump_is_a_step():
    times = np.linspace(60.0, 140.0, 33)
    defocus = SMALL.timeline(times)["defocus_A"]
    assert defocus[0] == 0.0 and defocus[-1] == 40.0
    assert (np.diff(defocus) > 0).all()  # strictly rising all the way
    dose = SMALL.timeline(np.array([139.999, 140.0, 179.0]))["dose_e_per_A2"]
    assert dose.tolist() == [3e5, 3e4, 3e4]
    assert SMALL.conditions_at(150.0)[0].defocus_A == 40.0  # the creep's end value holds afterwards


@pytest.mark.parametrize(
    ("segment", "words"),
    [
        (Segment(-5.0), "duration_s must be a positive number of seconds, got -5.0"),
        (Segment(10.0, jumps={"defocus_nm": 3.0}), "unknown field 'defocus_nm'"),
        (Segment(10.0, jumps={"image_size_px": 64}), "image_size_px fixes the frame size"),
        (Segment(10.0, jumps={"dose_e_per_A2": -1.0}), "dose_e_per_A2=-1.0 is refused by the simulator"),
        (Segment(10.0, creeps={"sampling_A_per_px": 10.0}), "sampling_A_per_px=10.0 is refused by the simulator"),
        (Segment(10.0, creeps={"probe_model": "gaussian"}), "probe_model cannot creep"),
        (Segment(10.0, jumps={"defocus_A": 1.0}, creeps={"defocus_A": 2.0}), "defocus_A both jumps and creeps"),
    ],
)
def test_bad_scenarios_are_refused_naming_the_segment_and_field(segment, words):
    import re
    from dataclasses import replace

    with pytest.raises(BadValueError, match=re.escape("segment 1 ('bad'): ") + ".*" + re.escape(words)):
        Scenario((Segment(10.0, name="fine"), replace(segment, name="bad")))


def test_bad_scenario_settings_are_refused():
    with pytest.raises(BadValueError, match="frame_interval_s"):
        Scenario((Segment(10.0),), frame_interval_s=0)
    with pytest.raises(BadValueError, match="at least one segment"):
        Scenario(())


def _relative_noise(frame) -> float:
    """Pixel-to-pixel noise over the mean signal: shot noise grows as the dose falls."""
    image = frame.image.astype(float)
    return float(np.std(image - ndimage.gaussian_filter(image, 1.0)) / image.mean())


def _sharpness(frame) -> float:
    """Contrast of atom-sized detail (band-pass between 0.3 A and 1 A) over the mean: a wider probe blurs it."""
    image = frame.image.astype(float)
    px = frame.sampling_A_per_px
    detail = ndimage.gaussian_filter(image, 0.3 / px) - ndimage.gaussian_filter(image, 1.0 / px)
    return float(np.std(detail) / image.mean())


def _segment_frames(stream: MicroscopeStream, name: str, last: int | None = None) -> list:
    frames = [
        stream.frame(k) for k in range(len(stream)) if stream.scenario.segments[stream.scenario.segment_at(k * stream.scenario.frame_interval_s)].name == name
    ]
    return frames[-last:] if last else frames


def test_a_scenario_describes_its_segments_for_a_table():
    rows = DEFAULT_SCENARIO.describe()
    assert [row[0] for row in rows] == [segment.name for segment in DEFAULT_SCENARIO.segments]
    assert rows[0] == ("good conditions", "0-2", "no change", "no")
    assert rows[1] == ("defocus creep", "2-6", "defocus_A creeps to 80", "yes")
    assert rows[-1][1].endswith(f"-{DEFAULT_SCENARIO.duration_s / 60:g}") and "dose_e_per_A2 = 7000" in rows[2][2]


def test_each_default_segment_changes_the_image_as_it_should():
    from elit_utils.lattice import estimate_sampling

    stream = MicroscopeStream(DEFAULT_SCENARIO)
    names = [s.name for s in DEFAULT_SCENARIO.segments]
    good = _segment_frames(stream, names[0])
    noise, sharp = np.mean([_relative_noise(f) for f in good]), np.mean([_sharpness(f) for f in good])
    si = np.mean([(f.truth.atoms[:, 2] == 1).mean() for f in good])
    assert np.mean([_sharpness(f) for f in _segment_frames(stream, "defocus creep", last=3)]) < 0.9 * sharp
    assert (
        np.mean([_relative_noise(f) for f in _segment_frames(stream, "dose drop")]) > 2.5 * noise
    )  # 43x less dose: ~6.5x the noise (Poisson), less after the detector's read noise
    contamination = [float(f.truth.clutter_mask.mean()) for f in _segment_frames(stream, "contamination builds up")]
    assert contamination[0] < 0.02 and contamination[-1] > 0.2
    assert np.mean([_sharpness(f) for f in _segment_frames(stream, "probe change (astigmatism)")]) < 0.85 * sharp
    assert np.mean([(f.truth.atoms[:, 2] == 1).mean() for f in _segment_frames(stream, "dopant-rich region")]) > 5 * si
    fine = _segment_frames(stream, "finer pixels (read correctly)")
    assert {f.sampling_A_per_px for f in fine} == {0.06}
    assert abs(estimate_sampling(fine[0].image).sampling_A_per_px / 0.06 - 1) < 0.05  # the lattice reads as 0.06 A/px
    back = _segment_frames(stream, "good conditions again")
    assert abs(np.mean([_relative_noise(f) for f in back]) / noise - 1) < 0.1
    assert abs(np.mean([_sharpness(f) for f in back]) / sharp - 1) < 0.1


def test_the_trigger_needs_a_run_of_flagged_frames():
    trigger = Trigger(run_frames=3)
    fired = [trigger.update(flag, frame) for frame, flag in enumerate([True, True, False, True, True, True, True])]
    assert fired == [False, False, False, False, False, True, False] and trigger.run == 1
    assert trigger.fired_on == (3, 4, 5) and trigger.flagged == [6]  # the run that fired it, handed over to adapt on
    with pytest.raises(BadValueError, match="run_frames"):
        Trigger(run_frames=0)


# --------------------------------------------------------------------------- the frame error monitor


def _source_like_frames(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Atom entropies of source-like frames: about 250 atoms each, entropies mostly low, with a tail."""
    return [rng.beta(1.5, 12.0, size=rng.poisson(250)) * np.log(2) for _ in range(n)]


def test_the_monitor_flags_the_stated_share_of_fresh_source_frames():
    rng = np.random.default_rng(1)
    fitted_on, fresh, rate = 200, 600, 0.1
    monitor = FrameErrorMonitor.fit(_source_like_frames(rng, fitted_on), false_alarm_rate=rate)
    monitor = dataclasses.replace(monitor, min_uncertain_share=0.0)  # the limit from source frames alone
    flagged = np.mean([monitor.flags(monitor.estimate(e)) for e in _source_like_frames(rng, fresh)])
    # two binomial spreads: the fresh frames' share, and the limit's own, a quantile of half the fitting frames
    spread = np.sqrt(rate * (1 - rate) * (1 / fresh + 1 / (fitted_on // 2)))
    assert abs(flagged - rate) < 3 * spread, (flagged, spread)


def test_wrong_atoms_raise_the_estimate_through_their_entropy():
    from elit_utils.ensemble import uncertainty_maps
    from elit_utils.locate import locate_atoms

    rng = np.random.default_rng(2)
    centres = rng.uniform(8, 120, size=(60, 2))
    rows, cols = np.mgrid[0:128, 0:128]

    def members(agreeing: np.ndarray) -> np.ndarray:  # 3 members' probability maps; where they disagree, one sees no atom
        maps = np.full((3, 128, 128), 0.01)
        for (r, c), agree in zip(centres, agreeing):
            blob = np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * 1.5**2))
            for m in range(3):
                maps[m] = np.maximum(maps[m], (0.97 if agree or m else 0.05) * blob)
        return maps

    source = [locate_atoms(uncertainty_maps(members(np.ones(60, bool)) * rng.uniform(0.97, 1.0), 0.1)).entropy for _ in range(8)]
    monitor = FrameErrorMonitor.fit(source, false_alarm_rate=0.25)
    wrong = locate_atoms(uncertainty_maps(members(np.arange(60) % 3 == 0), 0.1)).entropy  # two atoms in three are doubtful
    assert monitor.estimate(wrong) > 0.3 > monitor.estimate_limit and monitor.flags(monitor.estimate(wrong))


def test_a_flag_needs_a_share_of_uncertain_atoms_worth_acting_on():
    entropies = lambda uncertain: np.r_[np.full(uncertain, 0.6), np.full(100 - uncertain, 0.05)]  # noqa: E731 (100 atoms)
    monitor = FrameErrorMonitor(entropy_limit_nats=0.5, estimate_limit=0.04)  # unusual above 4 % (source frames)
    estimates = {uncertain: monitor.estimate(entropies(uncertain)) for uncertain in (6, 15)}
    assert monitor.flag_limit == 0.1 and not monitor.flags(estimates[6]) and monitor.flags(estimates[15])
    assert dataclasses.replace(monitor, min_uncertain_share=0.0).flags(estimates[6])  # the limit from source frames alone flags both
    assert dataclasses.replace(monitor, estimate_limit=0.2).flag_limit == 0.2  # the higher of the two limits
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(BadValueError, match="min_uncertain_share"):
            FrameErrorMonitor(0.5, 0.04, min_uncertain_share=bad)


def test_a_monitor_is_saved_beside_its_members_per_frame_size_and_refused_when_stale(tmp_path):
    from tests.conftest import tiny_ensemble

    ensemble = tiny_ensemble(tmp_path / "model", 2)
    path = error_monitor_path(tmp_path / "model", 64)
    monitor, fitted = ensure_frame_error_monitor(ensemble, 4, 7, 64)
    assert fitted and path.is_file()
    again, fitted = ensure_frame_error_monitor(ensemble, 4, 7, 64)
    assert not fitted and again == monitor and monitor.image_size_px == 64
    smaller, fitted = ensure_frame_error_monitor(ensemble, 4, 7, 48)  # frames of another size: fitted on frames of theirs, kept apart
    assert fitted and smaller.image_size_px == 48 == FrameErrorMonitor.load(error_monitor_path(tmp_path / "model", 48)).image_size_px
    assert ensure_frame_error_monitor(ensemble, 4, 7, 64) == (monitor, False)  # the one for 64 px is still there
    stale = dataclasses.replace(monitor, members={"0": "another member"})
    stale.save(path)
    with pytest.raises(BadModelFolderError, match="fitted on .*stale"):
        FrameErrorMonitor.load(path, ensemble)
    refitted, fitted = ensure_frame_error_monitor(ensemble, 4, 7, 64)
    assert fitted and refitted.members == monitor.members
    path.write_text("{not json")
    with pytest.raises(BadModelFolderError, match="is not a frame error monitor"):
        FrameErrorMonitor.load(path)
