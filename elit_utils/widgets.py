"""Interactive controls for the notebooks; the notebooks only call these.

Each widget keeps its latest result on the object (for tests and for a static
fallback), so it works headless (papermill, nbval) as well as in JupyterLab.

Example
-------
>>> preview = SimulationPreview(image_size_px=32)
>>> preview.controls["dose_e_per_A2"].value = 3.0  # log10 of the dose
>>> preview.frame.image.shape
(32, 32)
"""

from __future__ import annotations

import dataclasses
import html
import io
import time
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

from .errors import BadValueError
from .locate import AtomTable, locate_atoms
from .metrics import detection_scores
from .simulate import DOMAINS, SampleSpec, SimulatedImage, simulate_image
from .viz import draw_atoms_with_uncertainty, draw_member_votes, label_composite, show_micrograph

MAPS = {
    "mean probability": ("mean", "magma"),
    "variance": ("variance", "viridis"),
    "predictive entropy": ("entropy", "viridis"),
    "mutual information": ("mutual_information", "viridis"),
}
ATOM_UNCERTAINTIES = {"predictive entropy": "entropy", "mutual information": "mutual_information"}
#: What each map of :data:`MAPS` shows, and its unit and range (the legend of the explorer and the dashboard).
MAP_LEGEND = {
    "mean probability": ("the members' mean probability that a pixel belongs to an atom", "probability, 0 to 1 (no unit)"),
    "variance": ("the variance of the members' probabilities: how much they disagree (the paper's uncertainty map)", "probability², 0 to 0.25"),
    "predictive entropy": (
        "the entropy of the mean probability: all the uncertainty, highest where the mean is 0.5, "
        "from noise in the data (aleatoric) and from disagreement (epistemic)",
        "nats, 0 to ln 2 = 0.693",
    ),
    "mutual information": (
        "the predictive entropy minus the members' mean entropy: only the part from their disagreement (epistemic)",
        "nats, 0 to ln 2 = 0.693",
    ),
}
#: The colour-bar label of each map of :data:`MAPS`, with its unit.
MAP_UNITS = {
    "mean probability": "probability of 'atom' (0-1)",
    "variance": "variance (probability²)",
    "predictive entropy": "entropy (nats)",
    "mutual information": "mutual information (nats)",
}
#: How long training an ensemble takes on a first run, per profile (the dashboard's status line).
TRAINING_TIME = {"smoke": "under a minute", "quick": "a few minutes on a laptop CPU", "paper": "long without a GPU"}


def map_legend() -> widgets.HTML:
    """A legend of the uncertainty explorer: what each map shows, its unit, and the marks on the image.

    >>> "nats" in map_legend().value
    True
    """
    cell = "<td style='text-align:left'>{}</td>"
    head = "".join(cell.format(f"<b>{name}</b>") for name in ("map", "what it shows", "unit and range"))
    rows = "".join(f"<tr>{cell.format(f'<b>{name}</b>')}{cell.format(meaning)}{cell.format(unit)}</tr>" for name, (meaning, unit) in MAP_LEGEND.items())
    marks = (
        "<p>Left panel: the frame, the atoms kept as rings coloured by their uncertainty (averaged over each atom's "
        "footprint, nats), the atoms dropped by the limit as orange crosses, the chosen atom circled in red. "
        "Middle: the chosen map, with its colour bar. Right: each network's peak probability for the chosen atom "
        "(a bar above the dashed line is a vote for an atom).</p>"
    )
    return widgets.HTML(f"<table><tr>{head}</tr>{rows}</table>{marks}")


class StatusLine:
    """One line that says what a dashboard is doing (loading, training, predicting, ready).

    Display ``widget`` first and call :meth:`update` as the work goes on; ``messages`` keeps
    every message shown (for tests and logs).

    >>> status = StatusLine("Starting...")
    >>> status.update("Ready", done=True)
    >>> status.messages, "Ready" in status.widget.value
    (['Starting...', 'Ready'], True)
    """

    def __init__(self, message: str = "Starting...") -> None:
        self.widget = widgets.HTML()
        self.messages: list[str] = []
        self.update(message)

    def update(self, message: str, done: bool = False) -> None:
        """Show ``message`` (with a check mark when ``done``, else an hourglass)."""
        self.messages.append(message)
        self.widget.value = f"<b>{'✔' if done else '⏳'}</b> {html.escape(message)}"


def _files(folder: Path) -> set[tuple[str, int]]:
    """The files under ``folder`` with their sizes (to tell whether something was written there)."""
    return {(str(path), path.stat().st_size) for path in folder.rglob("*") if path.is_file()} if folder.is_dir() else set()


def ensemble_with_status(status: StatusLine, profile: object, seed: int = 0, domain: str = "source") -> object:
    """The profile's cached ensemble (:func:`~elit_utils.ensemble.cached_ensemble`), saying on
    ``status`` that it loads or, on a first run, trains, and then which of the two it did and how long it took."""
    from .cache import cache_dir
    from .ensemble import cached_ensemble

    folder = cache_dir() / "ensembles"
    before = _files(folder)
    when = TRAINING_TIME.get(profile.name, "a while")
    status.update(f"Loading the ensemble ({profile.n_members} networks, {profile.name} profile) from the cache; on a first run it is trained first ({when})...")
    start = time.perf_counter()
    model = cached_ensemble(profile, domain=domain, seed=seed, progress=False)
    how = "trained on this first run (and cached)" if _files(folder) != before else "loaded from the cache"
    status.update(f"Ensemble of {model.n_members} networks {how} in {time.perf_counter() - start:.1f} s.")
    return model


def _png(fig: object) -> bytes:
    """``fig`` rendered to PNG here (and closed), so that it shows whatever matplotlib backend the
    kernel runs (inline, ipympl, or Agg when headless)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _show(output: widgets.Output, fig: object | bytes) -> None:
    """Replace what ``output`` shows by ``fig`` (a figure, or a PNG :func:`_png` made)."""
    output.outputs = ()
    output.append_display_data(Image(data=fig if isinstance(fig, bytes) else _png(fig), format="png"))


class SimulationPreview:
    """Sliders for dose, sampling, defocus, drift and dopants that redraw a simulated frame.

    A frame of 128x128 px simulates in about 10 ms, so the preview is live.
    ``widget`` is the box to display; ``frame`` the latest :class:`SimulatedImage`;
    ``summary`` a text line with the frame's atom count and mean counts.
    """

    def __init__(self, image_size_px: int = 128, seed: int = 0) -> None:
        self.image_size_px = image_size_px
        self.seed = seed
        base = DOMAINS["source"].conditions
        style = {"description_width": "170px"}
        layout = widgets.Layout(width="420px")
        self.controls = {
            "dose_e_per_A2": widgets.FloatSlider(
                value=np.log10(base.dose_e_per_A2), min=3.0, max=7.0, step=0.1, description="log10 dose (e/Å²)", style=style, layout=layout
            ),
            "sampling_A_per_px": widgets.FloatSlider(
                value=base.sampling_A_per_px, min=0.04, max=0.3, step=0.01, description="sampling (Å/px)", style=style, layout=layout
            ),
            "defocus_A": widgets.FloatSlider(value=0.0, min=-60.0, max=60.0, step=2.0, description="defocus (Å)", style=style, layout=layout),
            "drift_A_per_frame": widgets.FloatSlider(value=0.0, min=0.0, max=6.0, step=0.25, description="drift (Å per frame)", style=style, layout=layout),
            "dopant_density_per_nm2": widgets.FloatSlider(
                value=0.1, min=0.0, max=2.0, step=0.05, description="Si dopants (per nm²)", style=style, layout=layout
            ),
        }
        self.summary = widgets.HTML()
        self.output = widgets.Output()
        for control in self.controls.values():
            control.observe(self._redraw, names="value")
        self.widget = widgets.HBox([widgets.VBox([*self.controls.values(), self.summary]), self.output])
        self.frame: SimulatedImage | None = None
        self._redraw()

    def settings(self) -> tuple[SampleSpec, object]:
        """The specimen and conditions the sliders describe now."""
        values = {name: control.value for name, control in self.controls.items()}
        conditions = dataclasses.replace(
            DOMAINS["source"].conditions,
            image_size_px=self.image_size_px,
            dose_e_per_A2=10 ** values["dose_e_per_A2"],
            sampling_A_per_px=values["sampling_A_per_px"],
            defocus_A=values["defocus_A"],
            drift_A_per_frame=(0.0, values["drift_A_per_frame"]),
        )
        sample = dataclasses.replace(DOMAINS["source"].sample, dopant_density_per_nm2=values["dopant_density_per_nm2"], rotation_deg=10.0)
        return sample, conditions

    def _redraw(self, change: object = None) -> None:
        sample, conditions = self.settings()
        self.frame = simulate_image(sample, conditions, np.random.default_rng(self.seed))
        n_si = int((self.frame.atoms[:, 2] == 1).sum())
        self.summary.value = (
            f"<b>{len(self.frame.atoms)}</b> atoms ({n_si} Si); mean {self.frame.image.mean():.1f} counts/px; field {conditions.field_of_view_A / 10:.2f} nm"
        )
        fig, ax = plt.subplots(figsize=(4, 4))
        show_micrograph(ax, self.frame.image, conditions.sampling_A_per_px, "simulated frame")
        _show(self.output, fig)


def simulation_preview(image_size_px: int = 128, seed: int = 0) -> SimulationPreview:
    """Build and display the simulation preview (returns it so tests can move its sliders)."""
    preview = SimulationPreview(image_size_px, seed)
    display(preview.widget)
    return preview


class SweepExplorer:
    """Move along a precomputed out-of-distribution sweep: image, member disagreement, uncertainty.

    ``points_by_axis`` maps an axis to its :class:`~elit_utils.ood.SweepPoint` list (each with an
    ``example`` frame). The widget only slices these arrays, so every update is instant.
    """

    def __init__(self, points_by_axis: dict[str, list], units: dict[str, str]) -> None:
        self.points_by_axis = points_by_axis
        self.units = units
        self.axis = widgets.Dropdown(options=list(points_by_axis), description="condition")
        self.position = widgets.IntSlider(value=0, min=0, max=len(next(iter(points_by_axis.values()))) - 1, description="step")
        self.summary = widgets.HTML()
        self.output = widgets.Output()
        self.axis.observe(self._axis_changed, names="value")
        self.position.observe(self._redraw, names="value")
        self.widget = widgets.VBox([widgets.HBox([self.axis, self.position]), self.summary, self.output])
        self._redraw()

    @property
    def point(self) -> object:
        """The sweep point shown now."""
        return self.points_by_axis[self.axis.value][self.position.value]

    def _axis_changed(self, change: object = None) -> None:
        self.position.max = len(self.points_by_axis[self.axis.value]) - 1
        self.position.value = 0
        self._redraw()

    def _redraw(self, change: object = None) -> None:
        point = self.point
        self.summary.value = (
            f"{point.axis} = <b>{point.value:g}</b> {self.units[point.axis]}: ensemble F1 <b>{point.ensemble.f1:.3f}</b>, "
            f"members {point.member_f1.min():.3f}-{point.member_f1.max():.3f}, mean MI {point.mean_mutual_information:.4f} nats, "
            f"flagged as shifted: {point.frame_flagged.sum()} of {len(point.frame_flagged)} frames"
        )
        example = point.example
        fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
        show_micrograph(axes[0], example["image"], None, "image")
        for ax, (key, title) in zip(axes[1:], (("variance", "member disagreement (variance)"), ("mutual_information", "uncertainty (MI, nats)"))):
            shown = ax.imshow(example[key], cmap="viridis", vmin=0)
            ax.set_title(title, fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        fig.tight_layout()
        _show(self.output, fig)


def sweep_explorer(points_by_axis: dict[str, list], units: dict[str, str]) -> SweepExplorer:
    """Build and display the sweep explorer (returned so that tests can move it)."""
    explorer = SweepExplorer(points_by_axis, units)
    display(explorer.widget)
    return explorer


class UncertaintyExplorer:
    """Explore an ensemble's uncertainty on several frames (simulated or real).

    ``frames`` maps a name to ``(image, prediction, truth)``: the image, its one-frame
    :class:`~elit_utils.ensemble.Prediction` and, when known, the true atoms (row, col px) or None.
    Controls: the frame, the map shown (mean, variance, entropy, MI), which atom uncertainty
    to threshold and the threshold (atoms above it are dropped: the text gives how many are kept
    and, with ground truth, the F1 of the kept atoms), and an atom (most uncertain first) whose
    members' votes are drawn. Atoms are found once per frame, so every update only slices arrays.
    ``legend`` says what the chosen map shows, in which unit (:data:`MAP_LEGEND`); the map's
    colour bar names its unit too.
    """

    def __init__(self, frames: dict[str, tuple[np.ndarray, object, np.ndarray | None]], tolerance_A: float = 0.5) -> None:
        self.frames = frames
        self.tolerance_A = tolerance_A
        self.atoms: dict[str, AtomTable] = {name: locate_atoms(prediction) for name, (_, prediction, _) in frames.items()}
        style = {"description_width": "initial"}
        self.frame = widgets.Dropdown(options=list(frames), description="frame", style=style)
        self.map = widgets.ToggleButtons(options=list(MAPS), value="mutual information", description="map", style=style)
        self.measure = widgets.Dropdown(options=list(ATOM_UNCERTAINTIES), description="atom uncertainty", style=style)
        self.threshold = widgets.FloatSlider(value=0.7, min=0.0, max=0.7, step=0.005, readout_format=".3f", description="keep atoms ≤ (nats)", style=style)
        self.atom = widgets.IntSlider(value=0, min=0, max=0, description="atom (most uncertain first)", style=style)
        self.legend = widgets.HTML()
        self.summary = widgets.HTML()
        self.output = widgets.Output()
        for control in (self.frame, self.map, self.measure, self.threshold, self.atom):
            control.observe(self._redraw, names="value")
        rows = [widgets.HBox([self.frame, self.measure]), self.map, widgets.HBox([self.threshold, self.atom]), self.summary, self.legend, self.output]
        self.widget = widgets.VBox(rows)
        self._redraw()

    def _uncertainty(self) -> np.ndarray:
        """The chosen uncertainty (nats) of the current frame's atoms."""
        return getattr(self.atoms[self.frame.value], ATOM_UNCERTAINTIES[self.measure.value])

    def _ranking(self) -> np.ndarray:
        """The current frame's atom indices, most uncertain first."""
        return np.argsort(-self._uncertainty(), kind="stable")

    def kept(self) -> np.ndarray:
        """Mask of the current frame's atoms whose chosen uncertainty is at most the threshold."""
        return self._uncertainty() <= self.threshold.value

    def selected_atom(self) -> int:
        """Index of the chosen atom (rank 0 = the most uncertain of the frame)."""
        order = self._ranking()
        return int(order[min(self.atom.value, len(order) - 1)]) if len(order) else -1

    def select_nearest(self, row_px: float, col_px: float) -> None:
        """Choose the atom nearest to a point (e.g. a click on the image)."""
        atoms = self.atoms[self.frame.value]
        if not len(atoms):
            return
        index = int(np.argmin(np.hypot(atoms.rows_px - row_px, atoms.cols_px - col_px)))
        self.atom.value = int(np.flatnonzero(self._ranking() == index)[0])

    def _describe(self, atoms: AtomTable, kept: np.ndarray, truth: np.ndarray | None, sampling: float | None) -> str:
        text = f"{self.frame.value}: kept <b>{kept.sum()}</b> of {len(atoms)} atoms ({kept.mean() if len(atoms) else 0:.0%})"
        if truth is not None and sampling is not None:
            scores = detection_scores(atoms.coordinates_px[kept], truth, sampling, self.tolerance_A)
            text += f"; F1 of the kept atoms <b>{scores.f1:.3f}</b> (precision {scores.precision:.3f}, recall {scores.recall:.3f})"
        return text

    def _redraw(self, change: object = None) -> None:
        image, prediction, truth = self.frames[self.frame.value]
        atoms = self.atoms[self.frame.value]
        self.atom.max = max(len(atoms) - 1, 0)
        kept = self.kept()
        chosen = self.selected_atom()
        self.summary.value = self._describe(atoms, kept, truth, prediction.sampling_A_per_px)
        meaning, unit = MAP_LEGEND[self.map.value]
        self.legend.value = f"<i>{self.map.value}</i>: {meaning} ({unit})."
        key, cmap = MAPS[self.map.value]
        fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [1.15, 1.15, 0.8]})
        uncertainty = self._uncertainty()
        draw_atoms_with_uncertainty(
            axes[0],
            image,
            atoms.rows_px[kept],
            atoms.cols_px[kept],
            uncertainty[kept],
            prediction.sampling_A_per_px,
            "kept atoms",
            self.measure.value,
            vmax=0.7,
        )
        axes[0].scatter(atoms.cols_px[~kept], atoms.rows_px[~kept], marker="x", s=18, color="#d95f02", label="dropped")
        shown = axes[1].imshow(getattr(prediction, key), cmap=cmap, vmin=0)
        fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04).set_label(MAP_UNITS[self.map.value])
        axes[1].set_title(self.map.value, fontsize=10)
        axes[1].set_xticks([])
        axes[1].set_yticks([])
        if chosen >= 0:
            for ax in axes[:2]:
                ax.scatter([atoms.cols_px[chosen]], [atoms.rows_px[chosen]], s=160, facecolors="none", edgecolors="red", linewidths=2)
            draw_member_votes(axes[2], atoms.member_peaks[:, chosen])
            axes[2].set_title(f"atom rank {self.atom.value}: {self.measure.value} {uncertainty[chosen]:.3f} nats", fontsize=9)
        fig.tight_layout()
        _show(self.output, fig)


def uncertainty_explorer(frames: dict[str, tuple[np.ndarray, object, np.ndarray | None]], tolerance_A: float = 0.5) -> UncertaintyExplorer:
    """Build and display the uncertainty explorer (returned so that tests can move it)."""
    explorer = UncertaintyExplorer(frames, tolerance_A)
    display(explorer.widget)
    return explorer


class RoundExplorer:
    """Step through the rounds of iterative training on one frame: pseudo-labels and uncertainty.

    ``rounds`` maps a round number to (label mask, loss weight, mutual information map);
    ``history`` is :func:`~elit_utils.iterate.adapt`'s list of rows (F1 shown when present).
    """

    def __init__(
        self, image: np.ndarray, rounds: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]], history: list[dict], sampling_A_per_px: float | None
    ) -> None:
        self.image, self.rounds, self.sampling_A_per_px = image, rounds, sampling_A_per_px
        self.history = {row["round"]: row for row in history}
        self.top_mi = max(float(np.max(mi)) for _, _, mi in rounds.values()) or 1e-3
        self.round = widgets.SelectionSlider(options=sorted(rounds), description="round")
        self.summary = widgets.HTML()
        self.output = widgets.Output()
        self.round.observe(self._redraw, names="value")
        self.widget = widgets.VBox([self.round, self.summary, self.output])
        self._redraw()

    def _redraw(self, change: object = None) -> None:
        number = self.round.value
        mask, weight, mi = self.rounds[number]
        row = self.history.get(number, {})
        score = f", F1 <b>{row['f1']:.3f}</b>" if "f1" in row else ""
        self.summary.value = (
            f"round {number}: {int(mask.sum())} label pixels, {1 - weight.mean():.1%} left out of the loss, mean MI {mi.mean():.4f} nats{score}"
        )
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.7))
        show_micrograph(axes[0], self.image, self.sampling_A_per_px, "frame")
        axes[1].imshow(label_composite(mask, weight), cmap="gray", vmin=0, vmax=1)
        axes[1].set_title(f"pseudo-labels, round {number}", fontsize=10)
        shown = axes[2].imshow(mi, cmap="viridis", vmin=0, vmax=self.top_mi)
        axes[2].set_title(f"mutual information, round {number}", fontsize=10)
        fig.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.04).set_label("nats")
        for ax in axes[1:]:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        _show(self.output, fig)


def round_explorer(
    image: np.ndarray, rounds: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]], history: list[dict], sampling_A_per_px: float | None
) -> RoundExplorer:
    """Build and display the round explorer (returned so that tests can move it)."""
    explorer = RoundExplorer(image, rounds, history, sampling_A_per_px)
    display(explorer.widget)
    return explorer


#: The log keys the stream replay shows (each line of :func:`~elit_utils.stream.run_policy`'s log has them).
REPLAY_KEYS = ("frame", "time_s", "segment", "drifted", "model", "decision", "n_atoms", "f1", "error_estimate", "error_flag")


def _checked_policy_log(name: str, log: list[dict], atoms: dict[int, AtomTable]) -> list[int]:
    """The frames of one policy's log; a :class:`~elit_utils.errors.BadValueError` when it is empty,
    lacks a key the replay shows, or its atoms are missing or of another run."""
    if not log:
        raise BadValueError(f"the {name!r} log is empty; play the session with run_policy before replaying it")
    missing = [key for key in REPLAY_KEYS if key not in log[0]]
    if missing:
        raise BadValueError(f"the {name!r} log lacks {', '.join(missing)}; replay a log written by stream.run_policy")
    lacking = [line["frame"] for line in log if line["frame"] not in atoms]
    if lacking:
        remedy = f"pass run_policy(..., atoms_out=atoms_by_policy[{name!r}]) when playing the session"
        raise BadValueError(f"no atoms of the {name!r} policy for frames {lacking}; {remedy}")
    for line in log:
        if len(atoms[line["frame"]]) != line["n_atoms"]:
            found = f"the {name!r} atoms of frame {line['frame']} hold {len(atoms[line['frame']])} atoms, its log {line['n_atoms']}"
            raise BadValueError(f"{found}; pass the atoms_out of the same run")
    return [line["frame"] for line in log]


def _is_entropy_limit(value: object) -> bool:
    """Whether ``value`` is an atom entropy limit: a number of nats between 0 and ln 2 (a two-way choice's most)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= np.log(2)


def _checked_replay(session: object, logs: dict[str, list[dict]], atoms_by_policy: dict[str, dict[int, AtomTable]], entropy_limit_nats: float) -> list[int]:
    """The frames of a replay, in order; a :class:`~elit_utils.errors.BadValueError` naming the policy and frame when the inputs do not fit together."""
    from .stream import MicroscopeStream

    if not isinstance(session, MicroscopeStream):
        raise BadValueError(f"the replay shows the frames of a MicroscopeStream (the session the logs were played on), got {type(session).__name__}")
    if not _is_entropy_limit(entropy_limit_nats):
        raise BadValueError(f"entropy_limit_nats must lie between 0 and ln 2 = 0.693 nats (e.g. monitor.entropy_limit_nats), got {entropy_limit_nats!r}")
    for name, log in logs.items():
        for line in log:
            if line.get("entropy_limit_nats") is not None and not _is_entropy_limit(line["entropy_limit_nats"]):
                raise BadValueError(
                    f"the {name!r} log's entropy_limit_nats on frame {line.get('frame')} must lie between 0 and ln 2 = 0.693 nats, "
                    f"got {line['entropy_limit_nats']!r}; replay the logs run_policy wrote"
                )
    if not logs:
        raise BadValueError("no logs to replay; pass {policy name: run_policy(...) log}")
    first = next(iter(logs))
    frames = _checked_policy_log(first, logs[first], atoms_by_policy.get(first, {}))
    for name, log in logs.items():
        mine = _checked_policy_log(name, log, atoms_by_policy.get(name, {}))
        if mine != frames:
            raise BadValueError(f"the {name!r} log covers frames {mine} but {first!r} covers {frames}; replay policies played on the same frames")
    interval_s = session.scenario.frame_interval_s
    for line in logs[first]:
        if not (0 <= line["frame"] < len(session) and np.isclose(line["time_s"], line["frame"] * interval_s)):
            raise BadValueError(
                f"frame {line['frame']} at {line['time_s']:g} s is not a frame of this session ({len(session)} frames, one every {interval_s:g} s); "
                "replay with the session the logs were played on"
            )
    return frames


class StreamReplay:
    """Replay a microscope session frame by frame: what each policy's ensemble found, and what it decided.

    ``logs`` maps a policy name to its :func:`~elit_utils.stream.run_policy` log and ``atoms_by_policy``
    a policy name to the ``atoms_out`` that run filled (frame -> :class:`~elit_utils.locate.AtomTable`).
    A slider (time in min and segment) moves over the logged frames; one panel per policy shows the
    frame (``session.frame(k)``) with that policy's atoms as rings coloured by entropy (nats), those
    above the entropy limit of the model in use crossed out in red: do not trust them. Each model has
    its own limit, logged on each frame by :func:`~elit_utils.stream.run_policy` with a monitor;
    ``entropy_limit_nats`` stands for it on frames logged without one. Each panel's title gives the
    policy's state on the frame (model in use, decision, F1); ``summary`` the frame's time, segment and
    each policy's frame error estimate and flag. ``titles`` holds the panel titles shown now; each frame
    is drawn once and kept, so moving back is instant. :meth:`figure` draws the frame shown (a static copy).

    >>> from elit_utils.stream import MicroscopeStream, Scenario, Segment
    >>> session = MicroscopeStream(Scenario((Segment(40.0, name="good"),), image_size_px=64))
    >>> atoms = AtomTable(np.array([10.0]), np.array([20.0]), 0.1, np.zeros(1), np.array([0.5]), np.zeros(1), np.ones(1))
    >>> line = {"segment": "good", "drifted": False, "model": "source", "decision": "use", "n_atoms": 1, "error_estimate": 0.5, "error_flag": True}
    >>> log = [{**line, "frame": k, "time_s": 20.0 * k, "f1": 0.9 - 0.1 * k} for k in (0, 1)]
    >>> replay = StreamReplay(session, {"static": log}, {"static": {0: atoms, 1: atoms}}, entropy_limit_nats=0.3)
    >>> replay.position.value = 1
    >>> replay.titles["static"].splitlines()[1:]
    ["model source, decision 'use', F1 0.800", '1 of 1 atoms over 0.30 nats']
    """

    def __init__(self, session: object, logs: dict[str, list[dict]], atoms_by_policy: dict[str, dict[int, AtomTable]], entropy_limit_nats: float) -> None:
        self.frames = _checked_replay(session, logs, atoms_by_policy, entropy_limit_nats)
        self.session, self.atoms_by_policy, self.entropy_limit_nats = session, atoms_by_policy, float(entropy_limit_nats)
        self.lines = {name: {line["frame"]: line for line in log} for name, log in logs.items()}
        first = next(iter(self.lines.values()))
        options = [(f"{first[k]['time_s'] / 60:.1f} min · {first[k]['segment']}", k) for k in self.frames]
        self.position = widgets.SelectionSlider(
            options=options, description="time", style={"description_width": "initial"}, layout=widgets.Layout(width="640px")
        )
        self.play = widgets.Play(interval=1200, min=0, max=len(options) - 1, description="play the session")
        widgets.jslink((self.play, "value"), (self.position, "index"))
        self.summary = widgets.HTML()
        self.output = widgets.Output()
        self.titles: dict[str, str] = {}
        self._drawn: dict[int, bytes] = {}
        self.position.observe(self._redraw, names="value")
        self.widget = widgets.VBox([widgets.HBox([self.play, self.position]), self.summary, self.output])
        self._redraw()

    def limit_nats(self, name: str, frame: int) -> float:
        """The entropy limit of the model the ``name`` policy used on ``frame`` (as logged; else ``entropy_limit_nats``)."""
        logged = self.lines[name][frame].get("entropy_limit_nats")
        return self.entropy_limit_nats if logged is None else float(logged)

    def panel_titles(self, frame: int) -> dict[str, str]:
        """Each policy's panel title on ``frame``: its state (model in use, decision, F1) and its untrusted atoms."""
        titles = {}
        for name, lines in self.lines.items():
            line, atoms, limit = lines[frame], self.atoms_by_policy[name][frame], self.limit_nats(name, frame)
            untrusted = int((atoms.entropy > limit).sum())
            titles[name] = (
                f"{name}\nmodel {line['model']}, decision '{line['decision']}', F1 {line['f1']:.3f}\n{untrusted} of {len(atoms)} atoms over {limit:.2f} nats"
            )
        return titles

    def describe(self, frame: int) -> str:
        """The line above the panels: the frame's time, segment, and each policy's frame error estimate and flag."""
        first = next(iter(self.lines.values()))[frame]
        estimates = []
        for name, lines in self.lines.items():
            line = lines[frame]
            shown = "n/a" if line["error_estimate"] is None else f"{line['error_estimate']:.1%}"
            flag = {True: " <b>flagged</b>", False: " not flagged", None: ""}[line["error_flag"]]
            estimates.append(f"{html.escape(name)} {shown}{flag}")
        drifted = "drifted" if first["drifted"] else "not drifted"
        return (
            f"frame {frame} at <b>{first['time_s'] / 60:.1f} min</b>, segment '{html.escape(first['segment'])}' ({drifted}). "
            f"Frame error estimate (share of uncertain atoms) as each policy's model reads it: {'; '.join(estimates)}"
        )

    def figure(self, frame: int | None = None) -> plt.Figure:
        """The panels of ``frame`` (default: the frame shown) as a matplotlib figure, e.g. to save."""
        frame = self.position.value if frame is None else frame
        shot = self.session.frame(frame)
        titles = self.panel_titles(frame)
        fig, axes = plt.subplots(1, len(titles), figsize=(4.6 * len(titles), 4.8), squeeze=False)
        for ax, (name, title) in zip(axes[0], titles.items()):
            atoms, limit = self.atoms_by_policy[name][frame], self.limit_nats(name, frame)
            draw_atoms_with_uncertainty(ax, shot.image, atoms.rows_px, atoms.cols_px, atoms.entropy, shot.sampling_A_per_px, title, "entropy", vmax=np.log(2))
            fig.axes[-1].axhline(limit, color="#d62728", lw=2)  # the limit on the colour bar just drawn
            untrusted = atoms.entropy > limit
            label = f"do not trust (entropy > {limit:.2f} nats: red line)"
            ax.scatter(atoms.cols_px[untrusted], atoms.rows_px[untrusted], marker="x", s=70, linewidths=1.8, color="#d62728", label=label)
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=8, frameon=False)
        fig.tight_layout()
        return fig

    def _redraw(self, change: object = None) -> None:
        frame = self.position.value
        self.titles = self.panel_titles(frame)
        self.summary.value = self.describe(frame)
        if frame not in self._drawn:
            self._drawn[frame] = _png(self.figure(frame))
        _show(self.output, self._drawn[frame])


def stream_replay(session: object, logs: dict[str, list[dict]], atoms_by_policy: dict[str, dict[int, AtomTable]], entropy_limit_nats: float) -> StreamReplay:
    """Build and display the stream replay (returned so that tests can move it)."""
    replay = StreamReplay(session, logs, atoms_by_policy, entropy_limit_nats)
    display(replay.widget)
    return replay
