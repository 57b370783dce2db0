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

Policies decide on each frame what to do with the model: :class:`StaticPolicy` (never change it),
:class:`AlwaysRetrainPolicy` (adapt on every block of frames: the compute upper bound) and
:class:`TriggeredPolicy` (ELIT: adapt when the :class:`Trigger` fires on the frame error monitor's
flags). :func:`run_policy` plays a stream through one of them, showing it only what a microscope has
(:class:`FrameReading`: no truth), adapting when it asks and swapping the adapted model in when the
adaptation would be done in stream time (simulated concurrency on one CPU), and scoring each frame
against its hidden truth afterwards; :func:`summarise_policies` compares their logs, and
:func:`profile_stream` gives a run profile's session (frame size, adaptation, trigger) as notebook 09
plays it.

Example
-------
>>> scenario = Scenario((Segment(60.0, name="good"), Segment(60.0, creeps={"defocus_A": 40.0}, name="creep")), frame_interval_s=20.0, image_size_px=64)
>>> stream = MicroscopeStream(scenario)
>>> len(stream), [round(frame.conditions.defocus_A, 1) for frame in stream]
(6, [0.0, 0.0, 0.0, 0.0, 13.3, 26.7])
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from .errors import BadValueError
from .ood import MONITOR_SEED, FrameErrorMonitor
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
    drifted: whether the source ensemble should be expected to misread this stretch. False marks a
        stretch it should read correctly (source conditions, or a change it is built to handle, such
        as a finer pixel size): a policy that adapts there raised a false alarm
        (:func:`summarise_policies` counts them). For scoring only: policies never see it.

    >>> Segment(120.0, creeps={"defocus_A": 50.0}, name="defocus creep").creeps
    {'defocus_A': 50.0}
    """

    duration_s: float
    jumps: Mapping[str, object] = field(default_factory=dict)
    creeps: Mapping[str, object] = field(default_factory=dict)
    name: str = ""
    drifted: bool = True


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
        (40.0, 0.1)
        """
        index = self.segment_at(time_s)
        segment = self.segments[index]
        start = float(sum(s.duration_s for s in self.segments[:index]))
        fraction = min(max((time_s - start) / segment.duration_s, 0.0), 1.0)
        before = self._starts()[index]
        jumped = _apply(before, segment.jumps)
        current = {name: _value(before, name) for name in segment.creeps}
        return _apply(jumped, {name: _between(current[name], target, fraction) for name, target in segment.creeps.items()})

    def describe(self) -> list[tuple[str, str, str, str]]:
        """One row per segment for a table: its name, when it runs (min), what it changes, and whether it is drifted.

        >>> Scenario((Segment(60.0, name="good"), Segment(120.0, creeps={"defocus_A": 40.0}, name="creep"))).describe()[1]
        ('creep', '1-3', 'defocus_A creeps to 40', 'yes')
        """
        rows, start_s = [], 0.0
        for segment in self.segments:
            changes = [f"{name} = {_shown(value)}" for name, value in segment.jumps.items()]
            changes += [f"{name} creeps to {_shown(value)}" for name, value in segment.creeps.items()]
            span = f"{start_s / 60:g}-{(start_s + segment.duration_s) / 60:g}"
            rows.append((segment.name, span, ", ".join(changes) or "no change", "yes" if segment.drifted else "no"))
            start_s += segment.duration_s
        return rows

    def timeline(self, times_s: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """A table of every changed field's value over time (default: at each frame), for a timeline figure.

        Keys: ``time_s``, ``segment`` (its name) and each field a segment changes (tuples become
        columns ``field[0]``, ``field[1]``, ...).

        >>> table = DEFAULT_SCENARIO.timeline(np.array([0.0, 240.0]))
        >>> table["defocus_A"].tolist()
        [0.0, 40.0]
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


def _shown(value: object) -> str:
    """A value as a table shows it: numbers in short form (3e+04, 0.15), anything else as it is."""
    return f"{value:g}" if _is_number(value) else str(value)


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
    if not isinstance(segment.drifted, bool):
        raise BadValueError(f"{where}: drifted must be True or False, got {segment.drifted!r}")
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
        Segment(120.0, name="good conditions", drifted=False),
        Segment(240.0, creeps={"defocus_A": 80.0}, name="defocus creep"),
        Segment(240.0, jumps={"defocus_A": 0.0, "dose_e_per_A2": 7e3}, name="dose drop"),
        Segment(240.0, jumps={"dose_e_per_A2": 3e5}, creeps={"contamination_coverage": 0.4, "background_fraction": 1.0}, name="contamination builds up"),
        Segment(
            180.0,
            jumps={"contamination_coverage": 0.0, "background_fraction": 0.5, "astigmatism_A": 40.0, "astigmatism_angle_deg": 30.0},
            name="probe change (astigmatism)",
        ),
        Segment(
            120.0,
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
            drifted=False,
        ),
        Segment(120.0, jumps={"sampling_A_per_px": 0.1}, name="good conditions again", drifted=False),
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

    ``flagged``: the frames of the flagged run so far (whatever stands for a frame: a reading, a file
    name), oldest first; :attr:`run` counts them. When a frame completes the run, the trigger fires,
    keeps the run that fired it in ``fired_on`` and starts again from zero (the frames an adaptation
    then collects first are the latest flagged ones, :func:`extend_flagged_run`, which end with that run).
    If each source frame is flagged with probability ``p`` independently, a run of ``K`` flags starts
    on a given frame with probability about ``p^K``.

    >>> trigger = Trigger(run_frames=2)
    >>> [trigger.update(flag, frame) for frame, flag in enumerate((True, False, True, True, True))]
    [False, False, False, True, False]
    >>> trigger.fired_on, trigger.run
    ((2, 3), 1)
    """

    run_frames: int = 3
    flagged: list = field(default_factory=list)
    fired_on: tuple = ()

    def __post_init__(self) -> None:
        if isinstance(self.run_frames, bool) or not isinstance(self.run_frames, (int, np.integer)) or self.run_frames < 1:
            raise BadValueError(f"run_frames must be a whole number of frames >= 1, got {self.run_frames!r}")
        self.flagged = list(self.flagged)

    @property
    def run(self) -> int:
        """The flagged frames in a row so far."""
        return len(self.flagged)

    def update(self, flagged: bool, frame: object = None) -> bool:
        """Count one more ``frame``; True when it completes a run of ``run_frames`` flagged frames."""
        if not flagged:
            self.flagged = []
            return False
        self.flagged.append(frame)
        if len(self.flagged) < self.run_frames:
            return False
        self.fired_on, self.flagged = tuple(self.flagged), []
        return True


# --------------------------------------------------------------------------- policies

#: Member-iterations per second of a modest GPU beside the microscope (a 16-filter U-Net, batches of 8 tiles of
#: 64 px, mixed precision): an assumption that sets how long an adaptation lasts in stream time.
SPARE_GPU_MEMBER_ITERATIONS_PER_S = 25.0

#: Frames where the static ensemble scores an F1 below this, in drifted stretches, are those a policy must rescue.
STATIC_FAILS_BELOW_F1 = 0.85

#: What a policy decides on a frame: read it with the model in use (use), read it but mark it doubtful (flag),
#: start collecting frames to adapt on (trigger), keep it to adapt on (collect), read it with the old model while
#: an adaptation runs (adapting), or read it with a newly swapped-in model (swap).
DECISIONS = ("use", "flag", "trigger", "collect", "adapting", "swap")

#: The name of the model a run starts with, in the logs (adapted models are named after their folder in ``out_dir``).
SOURCE_MODEL = "source"


@dataclass(frozen=True)
class FrameReading:
    """What a microscope has of one frame once the model in use has read it: all that a policy sees.

    The true atoms are not here (nor the scenario's segment): a policy cannot use them, even by mistake.

    Attributes
    ----------
    index, time_s: the frame's number and when it was taken (s).
    image: (H, W) detector output; sampling_A_per_px: its pixel size.
    atoms: the atoms the model in use found, with their uncertainties (:class:`~elit_utils.locate.AtomTable`).
    error_estimate, error_flag: the frame error estimate of the model in use's monitor (for frames of
        this one's size) and whether it is over the monitor's flag limit (None without a monitor).
    shift_score, shift_flag: the model's shift detector's score and whether it is over its limit (None without one).
    adapting: an adaptation this policy asked for is still running.
    swapped_in: this is the first frame read by a newly adapted model.
    """

    index: int
    time_s: float
    image: np.ndarray = field(repr=False)
    sampling_A_per_px: float
    atoms: object = field(repr=False)
    error_estimate: float | None = None
    error_flag: bool | None = None
    shift_score: float | None = None
    shift_flag: bool | None = None
    adapting: bool = False
    swapped_in: bool = False


@dataclass(frozen=True)
class Decision:
    """A policy's answer for one frame: one of :data:`DECISIONS`, and the frames to adapt on now (empty: none)."""

    action: str
    adapt_on: tuple[FrameReading, ...] = ()


class Policy:
    """Decides, frame by frame, what to do with the model: the base of :class:`StaticPolicy`,
    :class:`AlwaysRetrainPolicy` and :class:`TriggeredPolicy`.

    :meth:`decide` sees one :class:`FrameReading` (the frame error monitor's estimate and flag come
    in it, judged by the model in use's monitor: :func:`run_policy`); :meth:`reset` forgets the
    state of a previous run.
    """

    name = "policy"

    def reset(self) -> None:
        """Forget what earlier frames left (called by :func:`run_policy` before a run, so a replay decides alike)."""

    def decide(self, reading: FrameReading) -> Decision:
        """What to do with this frame (see :data:`DECISIONS`)."""
        raise NotImplementedError


class StaticPolicy(Policy):
    """Never changes the ensemble; marks frames the monitor flags "flag".

    >>> from elit_utils.locate import AtomTable
    >>> atoms = AtomTable(*[np.zeros(3)] * 7)
    >>> [StaticPolicy().decide(FrameReading(0, 0.0, np.zeros((8, 8)), 0.1, atoms, 0.6, flag)).action for flag in (True, False, None)]
    ['flag', 'use', 'use']
    """

    name = "static"

    def decide(self, reading: FrameReading) -> Decision:
        return Decision("flag" if reading.error_flag else "use")


class AlwaysRetrainPolicy(Policy):
    """Adapts on every block of ``block_frames`` frames, whatever they look like: the compute upper bound.

    Every frame is collected; the one that completes a block hands the block over to adapt on.

    >>> from elit_utils.locate import AtomTable
    >>> atoms = AtomTable(*[np.zeros(1)] * 2, 0.1, *[np.zeros(1)] * 4)
    >>> policy = AlwaysRetrainPolicy(block_frames=2)
    >>> [len(policy.decide(FrameReading(k, 20.0 * k, np.zeros((8, 8)), 0.1, atoms)).adapt_on) for k in range(4)]
    [0, 2, 0, 2]
    """

    name = "always retrain"

    def __init__(self, block_frames: int) -> None:
        if isinstance(block_frames, bool) or not isinstance(block_frames, (int, np.integer)) or block_frames < 1:
            raise BadValueError(f"block_frames must be a whole number of frames >= 1, got {block_frames!r}")
        self.block_frames = int(block_frames)
        self.block: list[FrameReading] = []

    def reset(self) -> None:
        self.block = []

    def decide(self, reading: FrameReading) -> Decision:
        self.block.append(reading)
        adapt_on: tuple[FrameReading, ...] = ()
        if len(self.block) == self.block_frames:
            adapt_on, self.block = tuple(self.block), []
        return Decision("swap" if reading.swapped_in else "collect", adapt_on)


def extend_flagged_run(run: list, flagged: bool, frame: object, keep: int) -> list:
    """The latest run of flagged frames once ``frame`` is read: ``run`` then ``frame`` (the last ``keep`` of them) if it is flagged, else empty.

    Unlike a :class:`Trigger`'s run, this one goes on across a swap of models and through the frames
    read while frames are collected or an adaptation runs. When the trigger fires, the frames of
    this run are the freshest evidence of the new conditions, whichever model flagged them: they are
    collected first, and new frames only as long as :func:`enough_to_adapt` asks for them (the
    ELIT-triggered policy and ``elit watch`` alike).

    >>> run = []
    >>> for frame, flag in enumerate((True, False, True, True, True)):
    ...     run = extend_flagged_run(run, flag, frame, keep=2)
    >>> run
    [3, 4]
    """
    return [*run, frame][-keep:] if flagged else []


def enough_to_adapt(frames: list, handed_over: Collection, adapt_frames: int, run_frames: int) -> bool:
    """Whether ``frames`` (the latest flagged ones when the trigger fired, then those collected since; indices or
    file names) make an adaptation: ``adapt_frames`` of them, of which at least ``adapt_frames - run_frames`` were
    not ``handed_over`` to the previous adaptation.

    Frames an earlier adaptation used may be used again: the newer model labels them better, as each
    round of iterative training does. But every adaptation waits for as many new frames as a trigger
    followed by collection gives it, so that a drift self-training cannot fix (strong defocus) does
    not set off an adaptation every few frames (the ELIT-triggered policy and ``elit watch`` alike).

    >>> enough_to_adapt([3, 4, 5, 6], handed_over={1, 2, 3, 4}, adapt_frames=4, run_frames=2)
    True
    >>> enough_to_adapt([3, 4, 5, 6], handed_over={3, 4, 5}, adapt_frames=4, run_frames=2)
    False
    """
    new = sum(frame not in handed_over for frame in frames)
    return len(frames) >= adapt_frames and new >= adapt_frames - run_frames


def triggered_decision(flagged: bool, trigger: Trigger, collecting: bool, adapting: bool = False, swapped_in: bool = False, frame: object = None) -> str:
    """The ELIT-triggered rule for one ``frame``, in one place (:class:`TriggeredPolicy` and ``elit watch``):
    "adapting" while an adaptation runs (the trigger waits); "collect" while frames are being collected;
    else "trigger" when ``trigger`` fires on this frame's flag, "swap" on the first frame of a newly
    adapted model (whose run starts again), "flag" or "use".

    >>> trigger = Trigger(run_frames=2)
    >>> [triggered_decision(flag, trigger, collecting=False, frame=k) for k, flag in enumerate((True, False, True, True))]
    ['flag', 'use', 'flag', 'trigger']
    >>> trigger.fired_on
    (2, 3)
    >>> triggered_decision(True, trigger, collecting=True), triggered_decision(True, trigger, collecting=False, adapting=True)
    ('collect', 'adapting')
    """
    if adapting:
        return "adapting"
    if swapped_in:
        trigger.flagged = []
    if collecting:
        return "collect"
    if trigger.update(flagged, frame):
        return "trigger"
    return "swap" if swapped_in else "flag" if flagged else "use"


class TriggeredPolicy(Policy):
    """ELIT-triggered: the monitor flags frames; when ``trigger`` fires, the latest flagged frames (up to
    ``adapt_frames``), then the next frames, are collected until they make an adaptation
    (:func:`enough_to_adapt`) and handed over; the adapted model is swapped in when ready.

    The latest flagged frames (:func:`extend_flagged_run`: the run that fired the trigger, and the
    flagged frames just before it, whichever model read them) are adapted on first: they show the
    conditions now, and waiting for new ones only delays the adapted model. While an adaptation runs,
    frames are read by the old model ("adapting") and the trigger waits; on the first frame of the
    new model ("swap") the trigger's run starts again, judged by the new model's own monitor
    (:func:`run_policy`). If the new model flags a run in turn, the frames the old one flagged while
    it adapted count as new: with enough of them, the next adaptation starts at once.

    >>> from elit_utils.locate import AtomTable
    >>> atoms = AtomTable(*[np.zeros(2)] * 7)
    >>> policy = TriggeredPolicy(Trigger(run_frames=2), adapt_frames=3)
    >>> decisions = [policy.decide(FrameReading(k, 20.0 * k, np.zeros((8, 8)), 0.1, atoms, 0.6, True)) for k in range(5)]
    >>> [d.action for d in decisions], [[r.index for r in d.adapt_on] for d in decisions]
    (['flag', 'trigger', 'collect', 'flag', 'trigger'], [[], [], [0, 1, 2], [], [2, 3, 4]])
    >>> policy.reset(); decisions = [policy.decide(FrameReading(k, 20.0 * k, np.zeros((8, 8)), 0.1, atoms, 0.6, True)) for k in range(7)]
    >>> [[r.index for r in d.adapt_on] for d in decisions if d.adapt_on]  # each adaptation has at least one new frame
    [[0, 1, 2], [2, 3, 4], [4, 5, 6]]
    """

    name = "ELIT-triggered"

    def __init__(self, trigger: Trigger, adapt_frames: int) -> None:
        if not isinstance(trigger, Trigger):
            raise BadValueError(f"TriggeredPolicy needs a Trigger, got {type(trigger).__name__}")
        if isinstance(adapt_frames, bool) or not isinstance(adapt_frames, (int, np.integer)) or adapt_frames < 1:
            raise BadValueError(f"adapt_frames must be a whole number of frames >= 1, got {adapt_frames!r}")
        self.trigger = trigger
        self.adapt_frames = int(adapt_frames)
        self.collected: list[FrameReading] | None = None
        self.latest_flagged: list[FrameReading] = []
        self.handed_over: set[int] = set()

    def reset(self) -> None:
        self.trigger.flagged, self.trigger.fired_on, self.collected, self.latest_flagged, self.handed_over = [], (), None, [], set()

    def decide(self, reading: FrameReading) -> Decision:
        if reading.error_flag is None:
            raise BadValueError("the ELIT-triggered policy acts on the frame error monitor's flags: pass run_policy(..., monitor=) the model's monitor")
        self.latest_flagged = extend_flagged_run(self.latest_flagged, reading.error_flag, reading, self.adapt_frames)
        action = triggered_decision(reading.error_flag, self.trigger, self.collected is not None, reading.adapting, reading.swapped_in, reading)
        if action == "trigger":
            self.collected = list(self.latest_flagged)
        elif action == "collect":
            self.collected = [*self.collected, reading][-self.adapt_frames :]
        indices = [r.index for r in self.collected or ()]
        if action in ("trigger", "collect") and enough_to_adapt(indices, self.handed_over, self.adapt_frames, self.trigger.run_frames):
            adapt_on, self.collected, self.handed_over = tuple(self.collected), None, set(indices)
            return Decision(action, adapt_on)
        return Decision(action)


@dataclass
class _Model:
    """A model a run reads frames with: its name in the log, the ensemble, its shift detector and trust regions (None
    without), and its frame error monitors by frame size (px; None: the run has no monitor)."""

    name: str
    ensemble: object
    detector: object | None
    trust: object | None
    monitors: dict[int, object] | None = None

    def judge(self, atoms: object, shape: tuple[int, int], sampling_A_per_px: float, like: object, seed: int) -> tuple[float, bool, float, float] | None:
        """The frame's error estimate, flag, flag limit and atom entropy limit (nats) by this model's monitor for frames of its field of view
        (fitted on fresh source frames the first time, as ``like`` was: :func:`~elit_utils.ood.ensure_frame_error_monitor`); None without monitors."""
        if self.monitors is None:
            return None
        from .ood import ensure_frame_error_monitor, monitor_side_px

        side = monitor_side_px(shape, sampling_A_per_px, self.ensemble.sampling_A_per_px)
        if side not in self.monitors:
            alike = {"false_alarm_rate": like.false_alarm_rate, "min_uncertain_share": like.min_uncertain_share}
            self.monitors[side], _ = ensure_frame_error_monitor(self.ensemble, like.n_source_frames, seed, side, **alike)
        monitor = self.monitors[side]
        estimate = monitor.estimate(atoms.entropy)
        return estimate, monitor.flags(estimate), monitor.flag_limit, monitor.entropy_limit_nats


def _model(name: str, ensemble: object, monitors: dict[int, object] | None) -> _Model:
    """The ensemble with the shift detector and trust regions its folder holds (checked against its members)."""
    from pathlib import Path

    from .clutter import TrustRegions
    from .config import SHIFT_DETECTOR_FILE, TRUST_REGIONS_FILE
    from .ood import ShiftDetector

    folder = Path(ensemble.folder)
    detector = ShiftDetector.load(folder / SHIFT_DETECTOR_FILE, ensemble=ensemble) if (folder / SHIFT_DETECTOR_FILE).exists() else None
    trust = TrustRegions.load(folder / TRUST_REGIONS_FILE, ensemble=ensemble) if (folder / TRUST_REGIONS_FILE).exists() else None
    return _Model(name, ensemble, detector, trust, monitors)


def _checked_indices(frames: object, n_frames: int) -> list[int]:
    """The frame indices a run plays: all (None), or increasing whole numbers within the stream."""
    if frames is None:
        return list(range(n_frames))
    indices = list(frames)
    if not indices or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < n_frames for k in indices):
        raise BadValueError(f"frames must be frame indices from 0 to {n_frames - 1}, got {indices!r}")
    if any(b <= a for a, b in itertools.pairwise(indices)):
        raise BadValueError(f"frames must be in increasing order (a stream plays forward), got {indices!r}")
    return [int(k) for k in indices]


def _scored(frame: StreamFrame, atoms: object, trust: object | None, prediction: object, tolerance_A: float = 0.5, border_A: float = 0.5) -> dict:
    """The frame's F1 against its hidden truth, and (with trust regions) the share of atoms trusted and their precision."""
    from .metrics import detection_scores, judge_atoms

    found, true = atoms.coordinates_px, frame.truth.atoms[:, :2]
    score = detection_scores(found, true, frame.sampling_A_per_px, tolerance_A, frame.image.shape, border_A)
    row = {"f1": score.f1, "precision": score.precision, "recall": score.recall}
    if trust is not None:
        trusted = atoms.with_trust(trust.untrusted(prediction)).trusted
        scored, right = judge_atoms(found, true, frame.sampling_A_per_px, tolerance_A, frame.image.shape, border_A)
        kept = trusted & scored
        row["trusted_share"] = float(trusted.mean()) if len(trusted) else None
        row["trusted_precision"] = float(right[kept].mean()) if kept.any() else None
    return row


def run_policy(
    stream: MicroscopeStream,
    ensemble: object,
    policy: Policy,
    adapt_config: object,
    frames: object = None,
    *,
    out_dir: object,
    monitor: object | None = None,
    monitor_seed: int = MONITOR_SEED,
    source: tuple[np.ndarray, np.ndarray] | None = None,
    threshold: float = 0.5,
    member_iterations_per_s: float | None = None,
    atoms_out: dict | None = None,
) -> list[dict]:
    """Play ``stream`` frame by frame through ``policy``, starting from ``ensemble``; one log line (a dict) per frame.

    Each frame is read by the model in use (atoms, frame error estimate and flag, shift score), the
    policy decides from that :class:`FrameReading` alone, and only then is the frame scored against
    its hidden truth.

    ``monitor`` (:class:`~elit_utils.ood.FrameErrorMonitor`, needed by :class:`TriggeredPolicy`):
    the starting model's, for frames of its ``image_size_px``. Every model is judged by monitors of
    its own, fitted as this one was (as many fresh source frames, seeded ``monitor_seed``, the same
    false-alarm rate and least share worth acting on) on frames of each field of view the stream
    shows (:func:`~elit_utils.ood.monitor_side_px`): an adapted model's limits are its own, and a
    frame of finer pixels (fewer atoms once resampled) is judged against source frames as small.
    Each is saved beside its model's members (:func:`~elit_utils.ood.error_monitor_path`; the
    starting model's folder too, for frame sizes it has no monitor for) and reused when fitted alike.
    When a decision hands frames over, :func:`~elit_utils.iterate.adapt` (``adapt_config``;
    ``source``: labelled frames mixed in) adapts the newest model to them into
    ``out_dir/adapt_001``, ``adapt_002``, ... (never into the source model's folder; a rerun into the
    same ``out_dir`` resumes from the rounds on disk). The adaptation is laid on stream time: it
    starts when its last frame is read (or when the previous one ends) and the adapted model reads
    the first frame taken after it ends; frames taken meanwhile are read by the old model. It lasts
    its member-iterations over ``member_iterations_per_s`` (the speed of the computer that would adapt
    beside the microscope, e.g. :data:`SPARE_GPU_MEMBER_ITERATIONS_PER_S`), so that a run replays
    exactly on any machine; None lays the measured seconds instead (they depend on the machine and
    its load). The adaptation in fact runs while the stream waits: this is simulated concurrency.

    Log line: ``frame``, ``time_s``, ``segment``, ``drifted`` (the scenario's, for scoring), ``policy``,
    ``model`` (:data:`SOURCE_MODEL` or ``adapt_k``), ``decision``, ``n_atoms``, ``error_estimate``,
    ``error_flag``, ``error_limit`` (the monitor's flag limit), ``entropy_limit_nats`` (the monitor's: an atom above
    it is uncertain, not to trust), ``shift_score``, ``shift_flag``,
    ``shift_limit``, ``adapt_on_frames`` (the frames an adaptation starting now adapts on; empty:
    none) and ``adaptation_ready_s`` (when it will be done, stream time; None), ``f1``, ``precision``, ``recall``,
    ``trusted_share`` and ``trusted_precision`` (only with trust regions), and cumulative
    adaptation compute: ``compute_s``, ``member_iterations``, ``adaptations`` (reading a frame costs
    every policy the same and is not counted). ``atoms_out``, a dict, receives each frame's atoms
    (frame index -> :class:`~elit_utils.locate.AtomTable` of the model in use), for a replay.

    >>> log = run_policy(MicroscopeStream(), model, StaticPolicy(), AdaptConfig(), range(6), out_dir="static", monitor=monitor)  # doctest: +SKIP
    """
    import time
    from pathlib import Path

    from .iterate import AdaptConfig, adapt
    from .locate import locate_atoms

    if not isinstance(stream, MicroscopeStream):
        raise BadValueError(f"run_policy plays a MicroscopeStream, got {type(stream).__name__}")
    if not isinstance(policy, Policy):
        raise BadValueError(f"policy must be a StaticPolicy, AlwaysRetrainPolicy or TriggeredPolicy, got {type(policy).__name__}")
    if not isinstance(adapt_config, AdaptConfig):
        raise BadValueError(f"adapt_config must be an AdaptConfig, got {type(adapt_config).__name__}")
    if member_iterations_per_s is not None and not (_is_number(member_iterations_per_s) and member_iterations_per_s > 0):
        raise BadValueError(f"member_iterations_per_s must be a positive speed (member-iterations per second) or None, got {member_iterations_per_s!r}")
    out = Path(out_dir).absolute()
    model_folder = Path(ensemble.folder).absolute()
    if out == model_folder or model_folder in out.parents:
        raise BadValueError(f"out_dir {out} lies in the model folder {model_folder}; choose a folder outside it for the adapted models.")
    if monitor is not None and not isinstance(monitor, FrameErrorMonitor):
        raise BadValueError(f"monitor must be a FrameErrorMonitor (elit_utils.ood.ensure_frame_error_monitor gives the model's), got {type(monitor).__name__}")
    if monitor is not None and not (monitor.n_source_frames and monitor.image_size_px):
        raise BadValueError(
            "monitor must record the source frames it was fitted on (n_source_frames, image_size_px), so that every model's can be fitted alike: "
            "fit it with elit_utils.ood.ensure_frame_error_monitor"
        )
    indices = _checked_indices(frames, len(stream))
    policy.reset()
    in_use = latest = _model(SOURCE_MODEL, ensemble, None if monitor is None else {monitor.image_size_px: monitor})
    pending: list[tuple[float, _Model]] = []  # (ready at, model), in order
    spent_s, member_iterations, adaptations, log = 0.0, 0, 0, []
    for index in indices:
        frame = stream.frame(index)
        swapped = False
        while pending and pending[0][0] <= frame.time_s:
            in_use, swapped = pending.pop(0)[1], True
        prediction, features = in_use.ensemble.analyse(frame.image, sampling_A_per_px=frame.sampling_A_per_px, shared_pass=True)
        atoms = locate_atoms(prediction, threshold=threshold)
        judged = in_use.judge(atoms, frame.image.shape, frame.sampling_A_per_px, monitor, monitor_seed)
        estimate, flag, limit, entropy_limit = judged if judged is not None else (None, None, None, None)
        shift = None if in_use.detector is None else float(in_use.detector.score(features)[0])
        shift_flag = None if shift is None else bool(shift > in_use.detector.limit)
        reading = FrameReading(
            frame.index, frame.time_s, frame.image, frame.sampling_A_per_px, atoms, estimate, flag, shift, shift_flag, bool(pending), swapped
        )
        decision = policy.decide(reading)
        ready_s = None
        if decision.action not in DECISIONS:
            raise BadValueError(f"{policy.name} decided {decision.action!r} on frame {index}; a decision is one of {', '.join(DECISIONS)}")
        if decision.adapt_on:
            adaptations += 1
            name = f"adapt_{adaptations:03d}"
            started = time.perf_counter()
            result = adapt(
                latest.ensemble,
                [r.image for r in decision.adapt_on],
                [r.sampling_A_per_px for r in decision.adapt_on],
                out / name,
                adapt_config,
                source=source,
                progress=False,
            )
            seconds = time.perf_counter() - started
            spent_s += seconds
            iterations = len(result.ensemble.seeds) * adapt_config.iterations_per_round * (len(result.history) - 1)
            member_iterations += iterations
            lasts_s = seconds if member_iterations_per_s is None else iterations / member_iterations_per_s
            begins = max(frame.time_s, pending[-1][0] if pending else frame.time_s)
            latest = _model(name, result.ensemble, None if monitor is None else {})
            ready_s = begins + lasts_s
            pending.append((ready_s, latest))
        segment = stream.scenario.segments[stream.scenario.segment_at(frame.time_s)]
        line = {
            "frame": frame.index,
            "time_s": frame.time_s,
            "segment": segment.name,
            "drifted": segment.drifted,
            "policy": policy.name,
            "model": in_use.name,
            "decision": decision.action,
            "n_atoms": len(atoms),
            "error_estimate": estimate,
            "error_flag": flag,
            "error_limit": limit,
            "entropy_limit_nats": entropy_limit,
            "shift_score": shift,
            "shift_flag": shift_flag,
            "shift_limit": None if in_use.detector is None else float(in_use.detector.limit),
            "adapt_on_frames": [r.index for r in decision.adapt_on],
            "adaptation_ready_s": ready_s,
        }
        line.update(_scored(frame, atoms, in_use.trust, prediction))  # scored after the decision, never shown to it
        if atoms_out is not None:
            atoms_out[frame.index] = atoms
        line.update({"compute_s": spent_s, "member_iterations": member_iterations, "adaptations": adaptations})
        log.append(line)
    return log


def _median(values: list[float]) -> float | None:
    """The median, or None for no values (JSON-safe)."""
    return float(np.median(values)) if values else None


def _model_stretches(log: list[dict]) -> list[list[dict]]:
    """The log cut where the model in use changes: one stretch per model, in order."""
    stretches: list[list[dict]] = []
    for line in log:
        if not stretches or stretches[-1][-1]["model"] != line["model"]:
            stretches.append([])
        stretches[-1].append(line)
    return stretches


def summarise_policies(logs: Mapping[str, list[dict]]) -> dict:
    """Compare policies run on the same frames of one stream (``logs``: policy name -> :func:`run_policy` log).

    The frames that matter are those of drifted stretches where the static policy's F1 is below
    :data:`STATIC_FAILS_BELOW_F1` (``logs`` must hold a ``"static"`` log). Per policy: the median F1
    over those frames (``median_f1_where_static_fails``) and over those of them read by an adapted
    model (``..._adapted``); per swap, the median F1 of the frames the new model reads; triggers on
    undrifted stretches (false triggers) and their share of undrifted frames; total adaptation
    compute. And the compute of the ELIT-triggered policy over that of always-retrain (None without both).
    This is the ``stream`` section of ``results/metrics.json``.

    >>> line = {"drifted": True, "model": "source", "decision": "use", "compute_s": 0.0, "member_iterations": 0, "adaptations": 0}
    >>> logs = {"static": [{**line, "frame": 0, "f1": 0.5}], "ELIT-triggered": [{**line, "frame": 0, "f1": 0.9}]}
    >>> summary = summarise_policies(logs)
    >>> summary["frames_where_static_fails"], summary["policies"]["ELIT-triggered"]["median_f1_where_static_fails"]
    ([0], 0.9)
    """
    if "static" not in logs:
        raise BadValueError(f"summarise_policies needs the static policy's log to find the frames it fails on; got logs of {', '.join(logs) or 'nothing'}")
    failing = {line["frame"] for line in logs["static"] if line["drifted"] and line["f1"] < STATIC_FAILS_BELOW_F1}
    policies = {}
    for name, log in logs.items():
        if sorted(line["frame"] for line in log) != sorted(line["frame"] for line in logs["static"]):
            raise BadValueError(f"the {name!r} log covers other frames than the static one; compare policies on the same frames of one stream")
        undrifted = [line for line in log if not line["drifted"]]
        false_triggers = sum(line["decision"] == "trigger" for line in undrifted)
        last = log[-1] if log else {"compute_s": 0.0, "member_iterations": 0, "adaptations": 0}
        policies[name] = {
            "median_f1": _median([line["f1"] for line in log]),
            "median_f1_where_static_fails": _median([line["f1"] for line in log if line["frame"] in failing]),
            "median_f1_where_static_fails_adapted": _median([line["f1"] for line in log if line["frame"] in failing and line["model"] != SOURCE_MODEL]),
            "after_swaps": [
                {"model": s[0]["model"], "time_s": s[0]["time_s"], "frames": len(s), "median_f1": _median([line["f1"] for line in s])}
                for s in _model_stretches(log)[1:]
            ],
            "false_triggers": false_triggers,
            "false_trigger_rate": false_triggers / len(undrifted) if undrifted else None,
            "adaptations": last["adaptations"],
            "compute_s": last["compute_s"],
            "member_iterations": last["member_iterations"],
        }
    triggered, always = policies.get(TriggeredPolicy.name), policies.get(AlwaysRetrainPolicy.name)
    ratio = None
    if triggered and always and always["member_iterations"]:
        ratio = {
            "member_iterations": triggered["member_iterations"] / always["member_iterations"],
            "seconds": triggered["compute_s"] / always["compute_s"] if always["compute_s"] else None,
        }
    return {
        "static_fails_below_f1": STATIC_FAILS_BELOW_F1,
        "frames_where_static_fails": sorted(failing),
        "policies": policies,
        "compute_triggered_over_always_retrain": ratio,
    }


# --------------------------------------------------------------------------- a profile's session


@dataclass(frozen=True)
class StreamPlan:
    """How a run profile plays the default session: frames, adaptation, trigger and the policies' sizes.

    Attributes
    ----------
    scenario: :data:`DEFAULT_SCENARIO` with the profile's frame size (its training image size) and
        frame interval.
    adapt_config: the adaptation every policy runs when it adapts (a short one: the microscope waits
        for no one).
    trigger_run_frames: flagged frames in a row that fire the ELIT trigger.
    adapt_frames: frames the ELIT-triggered policy adapts on: the latest flagged frames (the run that fired
        the trigger and those flagged just before it), then next frames until :func:`enough_to_adapt`.
    block_frames: frames per block of the always-retrain policy.
    n_monitor_frames: fresh source frames the frame error monitor is fitted on.
    member_iterations_per_s: the speed an adaptation is laid on stream time with (:func:`run_policy`).
    """

    scenario: Scenario
    adapt_config: object
    trigger_run_frames: int
    adapt_frames: int
    block_frames: int
    n_monitor_frames: int
    member_iterations_per_s: float = SPARE_GPU_MEMBER_ITERATIONS_PER_S


def profile_stream(profile: object | None = None) -> StreamPlan:
    """The :class:`StreamPlan` of a run profile (``smoke``, ``quick``, ``paper``; None: ``$ELIT_PROFILE``).

    Smoke plays a frame every 2 min (12 frames of 64 px) and adapts in one round of 10 steps; quick
    and paper a frame every 20 s (72 frames of 128 and 256 px) and adapt as notebook 05 does
    (:func:`~elit_utils.clutter.study_config`). Measured on the quick ensemble adapting on 6 frames
    of 128 px: at 7e3 e/A^2 this takes F1 from 0.85 to 0.96 (two rounds of 40 steps took 8e3 only from 0.88 to 0.94); at
    5e3 only from 0.76 to 0.80, and at 70 A of defocus from 0.74 to 0.76: self-training cannot undo
    errors that every member makes.

    >>> plan = profile_stream("smoke")
    >>> len(MicroscopeStream(plan.scenario)), plan.scenario.image_size_px, plan.adapt_config.rounds
    (12, 64, 1)
    """
    from .clutter import study_config
    from .config import get_profile

    run = get_profile(profile)
    adapt_config = study_config(run)
    if run.name == "smoke":  # seconds in CI: a frame every 2 min, one short round per adaptation
        adapt_config = dataclasses.replace(adapt_config, rounds=1, iterations_per_round=10)
    interval_s = 120.0 if run.name == "smoke" else DEFAULT_SCENARIO.frame_interval_s
    scenario = dataclasses.replace(DEFAULT_SCENARIO, image_size_px=run.image_size_px, frame_interval_s=interval_s)
    n_frames = scenario.n_frames
    return StreamPlan(
        scenario=scenario,
        adapt_config=adapt_config,
        trigger_run_frames=2 if run.name != "paper" else 3,
        adapt_frames=max(2, min(run.n_adapt_frames, n_frames // 12)),
        block_frames=max(4, n_frames // 6),
        n_monitor_frames=max(8, run.n_shift_reference_images // 2),
    )


def trade_off_table(summary: dict) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """The header and one row per policy of :func:`summarise_policies`' trade-off: F1 where static fails, false triggers, compute.

    A median over no frames (the static policy never fails, or no adapted ensemble read those frames) shows as n/a.

    >>> line = {"drifted": True, "model": "source", "decision": "use", "compute_s": 0.0, "member_iterations": 0, "adaptations": 0}
    >>> header, rows = trade_off_table(summarise_policies({"static": [{**line, "frame": 0, "f1": 0.5}]}))
    >>> rows
    [('static', '0.500', 'n/a', '0', '0', '0', '0 s')]
    """
    header = ("policy", "median F1 where static fails", "same, adapted ensemble", "false triggers", "adaptations", "member-iterations", "adapting time")
    rows = []
    for name, policy in summary["policies"].items():
        medians = [policy["median_f1_where_static_fails"], policy["median_f1_where_static_fails_adapted"]]
        shown = ["n/a" if value is None else f"{value:.3f}" for value in medians]
        counts = [str(policy[key]) for key in ("false_triggers", "adaptations", "member_iterations")]
        rows.append((name, *shown, *counts, f"{policy['compute_s']:.0f} s"))
    return header, rows
