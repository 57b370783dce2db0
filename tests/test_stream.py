"""The simulated microscope stream: seeded replay, scenario timeline, validation, and what each default segment does."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from elit_utils.errors import BadValueError
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


def test_each_default_segment_changes_the_image_as_it_should():
    from elit_utils.lattice import estimate_sampling

    stream = MicroscopeStream(DEFAULT_SCENARIO)
    names = [s.name for s in DEFAULT_SCENARIO.segments]
    good = _segment_frames(stream, names[0])
    noise, sharp = np.mean([_relative_noise(f) for f in good]), np.mean([_sharpness(f) for f in good])
    si = np.mean([(f.truth.atoms[:, 2] == 1).mean() for f in good])
    assert np.mean([_sharpness(f) for f in _segment_frames(stream, "defocus creep", last=3)]) < 0.9 * sharp
    assert np.mean([_relative_noise(f) for f in _segment_frames(stream, "dose drop")]) > 2.5 * noise  # 10x less dose: ~3x the noise
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
    fired = [trigger.update(flag) for flag in [True, True, False, True, True, True, True]]
    assert fired == [False, False, False, False, False, True, False] and trigger.run == 1
    with pytest.raises(BadValueError, match="run_frames"):
        Trigger(run_frames=0)
