"""A simulated microscope run: frames over time while the imaging conditions drift, and a trigger.

An automated experiment must notice by itself when the conditions have drifted. To test that, a
:class:`MicroscopeStream` plays a :class:`Scenario`: a list of :class:`Segment` s, each lasting
``duration_s`` and changing some fields of :class:`~elit_utils.simulate.ImagingConditions` or
:class:`~elit_utils.simulate.SampleSpec`, either at once (``jumps``: a probe that changes
suddenly) or gradually over the segment (``creeps``: defocus creeping, contamination building up).
A frame is taken every ``frame_interval_s``; each carries its time stamp, its pixel size and the
conditions in force. The true atoms are kept apart (:attr:`StreamFrame.truth`), for scoring only.

Everything is seeded: frame ``k`` is drawn from ``(seed, k)`` alone, so a run replays exactly, and
any frame can be made without the frames before it.

:class:`Trigger` turns a per-frame flag (the frame error estimate of
:class:`~elit_utils.ood.FrameErrorMonitor` above its limit) into a decision: it fires when
``run_frames`` frames in a row are flagged, so that one odd frame does not set off an adaptation.

Example
-------
>>> scenario = Scenario((Segment(60.0, name="good"), Segment(60.0, creeps={"defocus_A": 40.0}, name="creep")), frame_interval_s=20.0, image_size_px=64)
>>> stream = MicroscopeStream(scenario)
>>> len(stream), [round(frame.conditions.defocus_A, 1) for frame in stream]
(6, [0.0, 0.0, 0.0, 0.0, 13.3, 26.7])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from .errors import BadValueError
from .simulate import ImagingConditions, SampleSpec, SimulatedImage, get_domain, simulate_image

#: Fields a segment may change: those of the imaging conditions (but the frame size, which the
#: scenario fixes) and those of the specimen.
CONDITION_FIELDS = tuple(f.name for f in dataclasses.fields(ImagingConditions) if f.name != "image_size_px")
SAMPLE_FIELDS = tuple(f.name for f in dataclasses.fields(SampleSpec))


@dataclass(frozen=True)
class Segment:
    """A stretch of a microscope run and the changes it makes, as plain data.

    Attributes
    ----------
    duration_s: how long the segment lasts, in seconds (> 0).
    jumps: field -> value set at the segment's start (a field of ImagingConditions or SampleSpec).
    creeps: field -> value reached at the segment's end, moving linearly from the value in force
        when the segment starts (numbers, or tuples of numbers, only).
    name: a short label for tables and figures.

    >>> Segment(120.0, creeps={"defocus_A": 50.0}, name="defocus creep").creeps
    {'defocus_A': 50.0}
    """

    duration_s: float
    jumps: Mapping[str, object] = field(default_factory=dict)
    creeps: Mapping[str, object] = field(default_factory=dict)
    name: str = ""


@dataclass(frozen=True)
class Scenario:
    """A microscope run: segments one after another, a frame every ``frame_interval_s``.

    Attributes
    ----------
    segments: the segments in order.
    frame_interval_s: time between frames, s (frame ``k`` is taken at ``k x frame_interval_s``).
    seed: frame ``k`` is drawn from ``(seed, k)``.
    image_size_px: side of every frame, px (a finer pixel size then shows a smaller field).
    base_domain: the domain (:data:`~elit_utils.simulate.DOMAINS`) whose conditions hold before the first change.

    Bad scenarios are refused, naming the segment and the field: an unknown field, a duration
    that is not positive, a creep of something that is not a number, or a value the simulator
    refuses.

    >>> Scenario((Segment(-1.0),))
    Traceback (most recent call last):
    ...
    elit_utils.errors.BadValueError: segment 0 (''): duration_s must be a positive number of seconds, got -1.0
    """

    segments: tuple[Segment, ...]
    frame_interval_s: float = 20.0
    seed: int = 0
    image_size_px: int = 256
    base_domain: str = "source"

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.segments))
        if not self.segments:
            raise BadValueError("a scenario needs at least one segment")
        if not (isinstance(self.frame_interval_s, (int, float)) and math.isfinite(self.frame_interval_s) and self.frame_interval_s > 0):
            raise BadValueError(f"frame_interval_s must be a positive number of seconds, got {self.frame_interval_s!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise BadValueError(f"seed must be a whole number >= 0, got {self.seed!r}")
        base = get_domain(self.base_domain)
        state = (dataclasses.replace(base.conditions, image_size_px=self.image_size_px), base.sample)
        for index, segment in enumerate(self.segments):
            state = _checked_segment(index, segment, state)

    @property
    def duration_s(self) -> float:
        """Length of the whole run, s."""
        return float(sum(segment.duration_s for segment in self.segments))

    @property
    def n_frames(self) -> int:
        """Frames taken during the run (at 0, interval, 2 x interval, ... before its end)."""
        return math.ceil(self.duration_s / self.frame_interval_s - 1e-9)

    def _starts(self) -> list[tuple[ImagingConditions, SampleSpec]]:
        """The conditions in force as each segment starts (before its jumps), and after the last one."""
        base = get_domain(self.base_domain)
        states = [(dataclasses.replace(base.conditions, image_size_px=self.image_size_px), base.sample)]
        for segment in self.segments:
            states.append(_apply(states[-1], {**segment.jumps, **segment.creeps}))
        return states

    def segment_at(self, time_s: float) -> int:
        """Index of the segment in force at ``time_s`` (the last one at and after the run's end).

        >>> DEFAULT_SCENARIO.segment_at(0.0), DEFAULT_SCENARIO.segments[DEFAULT_SCENARIO.segment_at(200.0)].name
        (0, 'defocus creep')
        """
        if not (math.isfinite(time_s) and time_s >= 0):
            raise BadValueError(f"time_s must be a time >= 0 s within the run, got {time_s}")
        ends = np.cumsum([segment.duration_s for segment in self.segments])
        return int(min(np.searchsorted(ends, time_s, side="right"), len(self.segments) - 1))

    def conditions_at(self, time_s: float) -> tuple[ImagingConditions, SampleSpec]:
        """The imaging conditions and specimen in force at ``time_s``.

        >>> conditions, sample = DEFAULT_SCENARIO.conditions_at(240.0)
        >>> conditions.defocus_A, sample.dopant_density_per_nm2
        (25.0, 0.1)
        """
        index = self.segment_at(time_s)
        segment = self.segments[index]
        start = float(sum(s.duration_s for s in self.segments[:index]))
        fraction = min(max((time_s - start) / segment.duration_s, 0.0), 1.0)
        before = self._starts()[index]
        jumped = _apply(before, segment.jumps)
        current = {name: _value(before, name) for name in segment.creeps}
        return _apply(jumped, {name: _between(current[name], target, fraction) for name, target in segment.creeps.items()})

    def timeline(self, times_s: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """A table of every changed field's value over time (default: at each frame), for a timeline figure.

        Keys: ``time_s``, ``segment`` (its name) and each field a segment changes (tuples become
        columns ``field[0]``, ``field[1]``, ...).

        >>> table = DEFAULT_SCENARIO.timeline(np.array([0.0, 240.0]))
        >>> table["defocus_A"].tolist()
        [0.0, 25.0]
        """
        times = np.arange(self.n_frames) * self.frame_interval_s if times_s is None else np.asarray(times_s, float)
        names = list(dict.fromkeys(name for segment in self.segments for name in (*segment.jumps, *segment.creeps)))
        table: dict[str, list] = {"time_s": list(times), "segment": [self.segments[self.segment_at(t)].name for t in times]}
        for t in times:
            state = self.conditions_at(float(t))
            for name in names:
                value = _value(state, name)
                parts = {name: value} if not isinstance(value, tuple) else {f"{name}[{i}]": v for i, v in enumerate(value)}
                for key, part in parts.items():
                    table.setdefault(key, []).append(np.nan if part is None else part)
        return {key: np.array(values) for key, values in table.items()}


def _value(state: tuple[ImagingConditions, SampleSpec], name: str) -> object:
    return getattr(state[0] if name in CONDITION_FIELDS else state[1], name)


def _apply(state: tuple[ImagingConditions, SampleSpec], changes: Mapping[str, object]) -> tuple[ImagingConditions, SampleSpec]:
    conditions = {k: v for k, v in changes.items() if k in CONDITION_FIELDS}
    sample = {k: v for k, v in changes.items() if k in SAMPLE_FIELDS}
    return dataclasses.replace(state[0], **conditions), dataclasses.replace(state[1], **sample)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and math.isfinite(value)


def _numeric_like(value: object, start: object) -> bool:
    """Whether ``value`` is a number, or (when ``start`` is a tuple) a tuple of as many numbers: what can creep."""
    if isinstance(start, tuple):
        return isinstance(value, tuple) and len(value) == len(start) and all(map(_is_number, value))
    return _is_number(value)


def _between(start: object, end: object, fraction: float) -> object:
    """``fraction`` of the way from ``start`` to ``end`` (numbers, or tuples of numbers, alike)."""
    if isinstance(start, tuple):
        return tuple(float(a + fraction * (b - a)) for a, b in zip(start, end))
    return float(start + fraction * (end - start))


def _checked_segment(index: int, segment: Segment, state: tuple[ImagingConditions, SampleSpec]) -> tuple[ImagingConditions, SampleSpec]:
    """The conditions after ``segment`` (from ``state``); a :class:`BadValueError` naming the segment and field when it is bad."""
    where = f"segment {index} ({segment.name!r})"
    if not isinstance(segment, Segment):
        raise BadValueError(f"{where}: is a {type(segment).__name__}, not a Segment")
    if not (_is_number(segment.duration_s) and segment.duration_s > 0):
        raise BadValueError(f"{where}: duration_s must be a positive number of seconds, got {segment.duration_s!r}")
    both = set(segment.jumps) & set(segment.creeps)
    if both:
        raise BadValueError(f"{where}: {', '.join(sorted(both))} both jumps and creeps; a field does one or the other in a segment")
    for name in (*segment.jumps, *segment.creeps):
        if name not in CONDITION_FIELDS and name not in SAMPLE_FIELDS:
            hint = " (the scenario's image_size_px fixes the frame size)" if name == "image_size_px" else ""
            raise BadValueError(f"{where}: unknown field {name!r}{hint}; a segment changes fields of ImagingConditions or SampleSpec")
    for name, target in segment.creeps.items():
        start = _value(state, name)
        if not (_numeric_like(start, start) and _numeric_like(target, start)):
            raise BadValueError(f"{where}: {name} cannot creep from {start!r} to {target!r}; only numbers creep (make it a jump)")
    for name, value in {**segment.jumps, **segment.creeps}.items():
        try:
            _apply(state, {name: value})
        except (ValueError, TypeError) as error:
            raise BadValueError(f"{where}: {name}={value!r} is refused by the simulator: {error}") from None
    return _apply(state, {**segment.jumps, **segment.creeps})


#: A run of 24 minutes, a frame every 20 s (72 frames): each segment one kind of drift a session
#: meets, with the operator (or the microscope's own software) correcting the previous one.
DEFAULT_SCENARIO = Scenario(
    (
        Segment(120.0, name="good conditions"),
        Segment(240.0, creeps={"defocus_A": 50.0}, name="defocus creep"),
        Segment(180.0, jumps={"defocus_A": 0.0, "dose_e_per_A2": 3e4}, name="dose drop"),
        Segment(240.0, jumps={"dose_e_per_A2": 3e5}, creeps={"contamination_coverage": 0.4, "background_fraction": 1.0}, name="contamination builds up"),
        Segment(
            180.0,
            jumps={"contamination_coverage": 0.0, "background_fraction": 0.5, "astigmatism_A": 25.0, "astigmatism_angle_deg": 30.0},
            name="probe change (astigmatism)",
        ),
        Segment(
            180.0,
            jumps={
                "astigmatism_A": 0.0,
                "dopant_density_per_nm2": 1.0,
                "vacancy_density_per_nm2": 0.2,
                "divacancy_density_per_nm2": 0.1,
                "hole_density_per_nm2": 0.15,
            },
            name="dopant-rich region",
        ),
        Segment(
            180.0,
            jumps={
                "dopant_density_per_nm2": 0.1,
                "vacancy_density_per_nm2": 0.05,
                "divacancy_density_per_nm2": 0.02,
                "hole_density_per_nm2": 0.0,
                "sampling_A_per_px": 0.06,
            },
            name="finer pixels (read correctly)",
        ),
        Segment(120.0, jumps={"sampling_A_per_px": 0.1}, name="good conditions again"),
    ),
    frame_interval_s=20.0,
    seed=0,
    image_size_px=256,
)


@dataclass(frozen=True)
class FrameTruth:
    """What the microscope cannot see: the true lattice atoms (k, 3: row px, col px, class) and where clutter lies."""

    atoms: np.ndarray
    clutter_mask: np.ndarray


@dataclass(frozen=True)
class StreamFrame:
    """One frame of a microscope run.

    Attributes
    ----------
    index: the frame's number in the run, from 0.
    time_s: when it was taken, s from the run's start.
    image: (H, W) float32 detector output.
    sampling_A_per_px: its pixel size.
    conditions, sample: the imaging conditions and specimen in force.
    segment: the name of the scenario segment in force.
    truth: the true atoms and clutter, for scoring only (not shown in the frame's repr).
    """

    index: int
    time_s: float
    image: np.ndarray = field(repr=False)
    sampling_A_per_px: float
    conditions: ImagingConditions = field(repr=False)
    sample: SampleSpec = field(repr=False)
    segment: str
    truth: FrameTruth = field(repr=False)


class MicroscopeStream:
    """The frames of a :class:`Scenario`, in order (iterate) or one at a time (:meth:`frame`).

    >>> stream = MicroscopeStream(Scenario((Segment(40.0),), image_size_px=64))
    >>> bool(np.array_equal(stream.frame(1).image, list(stream)[1].image))
    True
    """

    def __init__(self, scenario: Scenario = DEFAULT_SCENARIO) -> None:
        if not isinstance(scenario, Scenario):
            raise BadValueError(f"MicroscopeStream needs a Scenario, got {type(scenario).__name__}")
        self.scenario = scenario

    def __len__(self) -> int:
        return self.scenario.n_frames

    def __iter__(self) -> Iterator[StreamFrame]:
        return (self.frame(index) for index in range(len(self)))

    def frame(self, index: int) -> StreamFrame:
        """Frame ``index`` (from 0), drawn from ``(seed, index)`` alone: the same every time."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self):
            raise IndexError(f"frame index must be a whole number from 0 to {len(self) - 1}, got {index!r}")
        time_s = float(index * self.scenario.frame_interval_s)
        conditions, sample = self.scenario.conditions_at(time_s)
        simulated: SimulatedImage = simulate_image(sample, conditions, np.random.default_rng([self.scenario.seed, int(index)]))
        segment = self.scenario.segments[self.scenario.segment_at(time_s)].name
        truth = FrameTruth(simulated.atoms, simulated.clutter_mask)
        return StreamFrame(int(index), time_s, simulated.image, conditions.sampling_A_per_px, conditions, sample, segment, truth)


# --------------------------------------------------------------------------- the trigger


@dataclass
class Trigger:
    """Fires when ``run_frames`` frames in a row are flagged (their error estimate over the limit).

    ``run``: the flagged frames in a row so far. After firing, the run starts again from zero.
    If each source frame is flagged with probability ``p`` independently, a run of ``K`` flags
    starts on a given frame with probability about ``p^K``.

    >>> trigger = Trigger(run_frames=2)
    >>> [trigger.update(flag) for flag in (True, False, True, True, True)]
    [False, False, False, True, False]
    """

    run_frames: int = 3
    run: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.run_frames, bool) or not isinstance(self.run_frames, (int, np.integer)) or self.run_frames < 1:
            raise BadValueError(f"run_frames must be a whole number of frames >= 1, got {self.run_frames!r}")

    def update(self, flagged: bool) -> bool:
        """Count one more frame; True when this frame completes a run of ``run_frames`` flagged frames."""
        self.run = self.run + 1 if flagged else 0
        if self.run >= self.run_frames:
            self.run = 0
            return True
        return False
