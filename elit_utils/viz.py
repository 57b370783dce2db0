"""The plotting vocabulary shared by every notebook.

Micrographs carry a scale bar in nm, colour maps are perceptually uniform and
readable in greyscale print, and each figure function returns the Figure.

Example
-------
>>> import numpy as np, matplotlib
>>> matplotlib.use("Agg")
>>> fig = show_micrographs([np.random.rand(32, 32)], ["noise"], sampling_A_per_px=0.1)
>>> len(fig.axes)
1
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib import patheffects
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LinearSegmentedColormap, Normalize, PowerNorm, to_rgba
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from .errors import BadValueError

IMAGE_CMAP = "gray"
ATOM_COLOURS = ("#00bcd4", "#ff5722")  # C, Si: distinct in colour and in lightness
PROBABILITY_CMAP = "magma"  # probability maps (0 to 1) in every figure
#: Colours of atom rings on a grey micrograph: the bright part of "plasma" (pink to yellow, ordered in lightness),
#: drawn over a thin dark edge so that every ring stands out from grey, black and white alike.
ATOM_UNCERTAINTY_CMAP = LinearSegmentedColormap.from_list("atom_uncertainty", plt.get_cmap("plasma")(np.linspace(0.35, 1.0, 128)))
#: A dark outline that keeps white text readable on any image (white atom discs included).
DARK_OUTLINE = [patheffects.withStroke(linewidth=2.5, foreground="black")]


def nice_scalebar_nm(field_of_view_nm: float) -> float:
    """A round scale-bar length of about a fifth of the field, in nm.

    >>> nice_scalebar_nm(2.56)
    0.5
    """
    target = field_of_view_nm / 5
    exponent = np.floor(np.log10(target))
    for step in (5, 2, 1):
        if step * 10**exponent <= target:
            return float(step * 10**exponent)
    return float(10**exponent)


def add_scalebar(ax: Axes, sampling_A_per_px: float, image_width_px: int) -> None:
    """Draw a white-on-black scale bar in nm in the lower-left corner of ``ax``."""
    length_nm = nice_scalebar_nm(image_width_px * sampling_A_per_px / 10)
    length_px = length_nm * 10 / sampling_A_per_px
    height = max(image_width_px / 60, 1.0)
    x0, y0 = image_width_px * 0.05, ax.get_ylim()[0] - image_width_px * 0.06
    ax.add_patch(Rectangle((x0, y0 - height), length_px, height, color="white", ec="black", lw=0.5))
    label = f"{length_nm:g} nm" if length_nm >= 1 else f"{length_nm * 10:g} Å"
    ax.text(  # white on a dark box with a dark outline: readable on white atom discs as on a dark background
        x0 + length_px / 2,
        y0 - 1.8 * height,
        label,
        color="white",
        ha="center",
        va="bottom",
        fontsize=9,
        path_effects=DARK_OUTLINE,
        bbox={"facecolor": "black", "alpha": 0.75, "pad": 1.5, "lw": 0},
    )


def show_micrograph(
    ax: Axes,
    image: np.ndarray,
    sampling_A_per_px: float | None = None,
    title: str = "",
    atoms: np.ndarray | None = None,
    value_range: tuple[float, float] | None = None,
    cmap: str | None = None,
) -> AxesImage:
    """Show one micrograph on ``ax`` (robust contrast, no ticks, scale bar in nm); returns the image (for a colour bar).

    ``atoms`` is an optional (k, 3) array of row px, col px, class to overlay. ``value_range`` fixes the
    colour limits (e.g. ``(0, 1)`` for a probability map) instead of the robust 0.5-99.5 % percentiles.
    """
    image = np.asarray(image, np.float32)
    low, high = value_range if value_range is not None else np.percentile(image, [0.5, 99.5])
    shown = ax.imshow(image, cmap=cmap or IMAGE_CMAP, vmin=low, vmax=high)
    if atoms is not None and len(atoms):
        for cls, name in enumerate(("C", "Si")):
            chosen = atoms[atoms[:, 2] == cls]
            ax.scatter(chosen[:, 1], chosen[:, 0], s=10, facecolors="none", edgecolors=ATOM_COLOURS[cls], linewidths=1.0, label=name)
    if sampling_A_per_px is not None:
        add_scalebar(ax, sampling_A_per_px, image.shape[1])
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    return shown


def _per_panel(value: object, n: int, is_single: bool) -> list:
    """``value`` repeated for ``n`` panels when it is a single setting, else as given (one per panel)."""
    return [value] * n if is_single else list(value)  # type: ignore[call-overload]


def show_micrographs(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    sampling_A_per_px: float | Sequence[float | None] | None = None,
    atoms: Sequence[np.ndarray | None] | None = None,
    columns: int = 4,
    panel_inches: float = 3.0,
    colorbar_label: str | Sequence[str | None] | None = None,
    value_range: tuple[float, float] | Sequence[tuple[float, float] | None] | None = None,
    cmap: str | Sequence[str | None] | None = None,
) -> Figure:
    """A grid of micrographs with titles, scale bars and optional atom overlays.

    Maps that are not micrographs get colour bars on request (the function does not guess which
    panel is which): ``colorbar_label`` (one label for all panels, or one per panel, ``None`` for
    none), ``value_range`` (fixed colour limits, e.g. ``(0, 1)`` for probabilities) and ``cmap``.
    One label with one ``value_range`` gives a single colour bar shared by all panels, e.g. for
    probability maps ``colorbar_label="probability of atom", value_range=(0, 1), cmap="magma"``.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> fig = show_micrographs([np.random.rand(8, 8)] * 5, list("abcde"), columns=3)
    >>> sum(ax.get_visible() for ax in fig.axes)
    5
    >>> fig = show_micrographs([np.random.rand(8, 8)] * 2, ["a", "b"], colorbar_label="probability of atom", value_range=(0, 1))
    >>> [ax.get_ylabel() for ax in fig.axes[2:]]
    ['probability of atom']
    """
    n = len(images)
    samplings = sampling_A_per_px if isinstance(sampling_A_per_px, (list, tuple)) else [sampling_A_per_px] * n
    overlays = atoms if atoms is not None else [None] * n
    single_range = value_range is None or (len(value_range) == 2 and all(np.isscalar(v) for v in value_range))
    ranges = _per_panel(value_range, n, single_range)
    labels = _per_panel(colorbar_label, n, colorbar_label is None or isinstance(colorbar_label, str))
    cmaps = _per_panel(cmap, n, cmap is None or isinstance(cmap, str))
    shared_bar = isinstance(colorbar_label, str) and value_range is not None and single_range
    rows = int(np.ceil(n / columns))
    cols = min(columns, n)
    any_bar = any(label is not None for label in labels)
    fig, axes = plt.subplots(
        rows, cols, figsize=(panel_inches * cols + 0.8 * any_bar, panel_inches * rows + 0.3), squeeze=False, layout="constrained" if any_bar else None
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, image, title, sampling, overlay, limits, label, colours in zip(axes.flat, images, titles, samplings, overlays, ranges, labels, cmaps):
        shown = show_micrograph(ax, image, sampling, title, overlay, limits, colours)
        if label is not None and not shared_bar:
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02).set_label(label)
    if shared_bar:
        fig.colorbar(shown, ax=list(axes.flat[:n]), fraction=0.03 / max(cols, 1) ** 0.5, pad=0.01, aspect=25 * rows).set_label(colorbar_label)
    if not any_bar:
        fig.tight_layout()
    return fig


def show_structure(positions_A: np.ndarray, atomic_numbers: np.ndarray, field_of_view_A: float, title: str = "") -> Figure:
    """Atom positions in A (C and Si in two colours) with the imaged field outlined.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> fig = show_structure(np.array([[1.0, 1.0], [2.0, 2.0]]), np.array([6, 14]), 3.0)
    >>> fig.axes[0].get_xlabel()
    'x (Å)'
    """
    fig, ax = plt.subplots(figsize=(5, 5))
    for number, name, colour in ((6, "C", ATOM_COLOURS[0]), (14, "Si", ATOM_COLOURS[1])):
        chosen = positions_A[atomic_numbers == number]
        ax.scatter(chosen[:, 1], chosen[:, 0], s=14 if number == 6 else 40, color=colour, label=f"{name} ({len(chosen)})", edgecolors="black", linewidths=0.3)
    ax.add_patch(Rectangle((0, 0), field_of_view_A, field_of_view_A, fill=False, ls="--", color="black", label="field of view"))
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    return fig


def show_probes(probes: dict[str, np.ndarray], sampling_A_per_px: float, fwhm_A: dict[str, float]) -> Figure:
    """Probe intensities side by side, each divided by its peak, on one square-root colour scale
    (to show the tails), with a colour bar saying so; extent in Å.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> fig = show_probes({"a": np.random.rand(16, 16)}, 0.1, {"a": 1.0})
    >>> fig.axes[0].get_xlabel(), fig.axes[-1].get_ylabel()
    ('x (Å)', 'intensity ÷ peak (colour ∝ √intensity)')
    """
    fig, axes = plt.subplots(1, len(probes), figsize=(3.0 * len(probes) + 0.9, 3.4), squeeze=False, layout="constrained")
    for ax, (name, probe) in zip(axes.flat, probes.items()):
        half = probe.shape[0] * sampling_A_per_px / 2
        relative = np.asarray(probe, float) / max(float(np.max(probe)), 1e-30)
        shown = ax.imshow(relative, cmap="magma", norm=PowerNorm(0.5, vmin=0, vmax=1), extent=(-half, half, half, -half))
        ax.set_title(f"{name}\nFWHM {fwhm_A[name]:.2f} Å", fontsize=10)
        ax.set_xlabel("x (Å)")
    axes.flat[0].set_ylabel("y (Å)")
    bar = fig.colorbar(shown, ax=list(axes.flat), fraction=0.05 / len(probes) ** 0.5, pad=0.02)
    bar.set_ticks([0, 0.05, 0.2, 0.5, 1])
    bar.set_label("intensity ÷ peak (colour ∝ √intensity)")
    return fig


def show_atoms_with_uncertainty(
    image: np.ndarray,
    rows_px: np.ndarray,
    cols_px: np.ndarray,
    uncertainty: np.ndarray,
    sampling_A_per_px: float | None,
    title: str = "",
    quantity: str = "mutual information",
    is_si: np.ndarray | None = None,
) -> Figure:
    """A micrograph with found atoms as rings coloured by their uncertainty (nats), with a colourbar.

    ``is_si`` (a two-class ensemble's atoms, True where the atom is Si) adds a square around each
    Si atom and a legend that counts C and Si (:func:`draw_si_marks`).

    >>> import matplotlib; matplotlib.use("Agg")
    >>> fig = show_atoms_with_uncertainty(np.random.rand(32, 32), np.array([5.0]), np.array([6.0]), np.array([0.1]), 0.1)
    >>> fig.axes[1].get_ylabel()
    'atom uncertainty: mutual information (nats)'
    """
    fig, ax = plt.subplots(figsize=(5.6, 5))
    draw_atoms_with_uncertainty(ax, image, rows_px, cols_px, uncertainty, sampling_A_per_px, title, quantity)
    if is_si is not None:
        draw_si_marks(ax, rows_px, cols_px, is_si)
    fig.tight_layout()
    return fig


def draw_si_marks(ax: Axes, rows_px: np.ndarray, cols_px: np.ndarray, is_si: np.ndarray) -> None:
    """Square each Si atom (:data:`ATOM_COLOURS`' Si colour over a dark edge) and add a legend: "C: n", "Si: n".

    >>> import matplotlib; matplotlib.use("Agg")
    >>> fig, ax = plt.subplots()
    >>> draw_si_marks(ax, np.array([5.0, 9.0]), np.array([6.0, 9.0]), np.array([False, True]))
    >>> [text.get_text() for text in ax.get_legend().get_texts()]
    ['C: 1 atom', 'Si (probability > 0.5): 1 atom']
    """
    is_si = np.asarray(is_si, bool)
    rows_px, cols_px = np.asarray(rows_px)[is_si], np.asarray(cols_px)[is_si]
    ax.scatter(cols_px, rows_px, s=150, marker="s", facecolors="none", edgecolors="black", linewidths=3.2)
    ax.scatter(cols_px, rows_px, s=150, marker="s", facecolors="none", edgecolors=ATOM_COLOURS[1], linewidths=1.8)
    n_c, n_si = int((~is_si).sum()), int(is_si.sum())
    handles = [
        plt.Line2D([], [], marker="o", linestyle="none", markerfacecolor="none", markeredgecolor="0.6", markersize=6),
        plt.Line2D([], [], marker="s", linestyle="none", markerfacecolor="none", markeredgecolor=ATOM_COLOURS[1], markeredgewidth=1.8, markersize=10),
    ]
    labels = [f"C: {n_c} atom{'s' * (n_c != 1)}", f"Si (probability > 0.5): {n_si} atom{'s' * (n_si != 1)}"]
    ax.legend(handles, labels, loc="upper right", fontsize=8, framealpha=0.85)


def show_si_probability(
    image: np.ndarray,
    rows_px: np.ndarray,
    cols_px: np.ndarray,
    si_probability: np.ndarray,
    si_uncertainty: np.ndarray,
    sampling_A_per_px: float | None,
    title: str = "",
    true_si_px: np.ndarray | None = None,
) -> Figure:
    """Is it carbon or silicon? Found atoms as discs coloured by their Si probability (C colour to Si
    colour), each disc's size growing with the members' spread of that probability (its uncertainty,
    a standard deviation in [0, 0.5]); ``true_si_px`` ((k, 2) row, col) marks true Si with crosses.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> fig = show_si_probability(np.random.rand(32, 32), np.array([5.0, 9.0]), np.array([6.0, 9.0]), np.array([0.1, 0.9]), np.array([0.0, 0.2]), 0.1)
    >>> fig.axes[1].get_ylabel(), fig.axes[0].collections[-1].get_sizes().tolist()
    ('Si probability (mean over members)', [20.0, 140.0])
    """
    fig, ax = plt.subplots(figsize=(5.6, 5))
    show_micrograph(ax, image, sampling_A_per_px, title)
    scale = ScalarMappable(Normalize(0, 1), cmap=LinearSegmentedColormap.from_list("c_to_si", [ATOM_COLOURS[0], "white", ATOM_COLOURS[1]]))
    sizes = 20 + 600 * np.asarray(si_uncertainty, float)  # points^2: 20 for full agreement, 320 for a spread of 0.5
    ax.scatter(cols_px, rows_px, s=sizes, c=scale.to_rgba(np.asarray(si_probability)), edgecolors="black", linewidths=0.8)
    handles = [
        plt.Line2D([], [], marker="o", linestyle="none", markersize=np.sqrt(20 + 600 * spread), markerfacecolor="0.7", markeredgecolor="black")
        for spread in (0.0, 0.1, 0.3)
    ]
    labels = [f"spread {spread:g}" for spread in (0.0, 0.1, 0.3)]
    if true_si_px is not None and len(true_si_px):
        true_si_px = np.asarray(true_si_px, float).reshape(-1, 2)
        handles.append(ax.scatter(true_si_px[:, 1], true_si_px[:, 0], s=40, marker="x", color="black", linewidths=1.5))
        labels.append("true Si")
    ax.legend(handles, labels, loc="upper right", fontsize=8, framealpha=0.85, labelspacing=1.2)
    bar = fig.colorbar(scale, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("Si probability (mean over members)")
    fig.tight_layout()
    return fig


def draw_atoms_with_uncertainty(
    ax: Axes,
    image: np.ndarray,
    rows_px: np.ndarray,
    cols_px: np.ndarray,
    uncertainty: np.ndarray,
    sampling_A_per_px: float | None,
    title: str = "",
    quantity: str = "mutual information",
    vmax: float | None = None,
) -> None:
    """Draw :func:`show_atoms_with_uncertainty`'s picture on ``ax`` (for figures with several panels).

    Rings are bright (:data:`ATOM_UNCERTAINTY_CMAP`, pink to yellow) over a thin black edge, so they
    read on the grey micrograph at every uncertainty.
    """
    show_micrograph(ax, image, sampling_A_per_px, title)
    top = vmax if vmax is not None else max(float(np.max(uncertainty, initial=0)), 0.05)
    scale = ScalarMappable(Normalize(0, top), cmap=ATOM_UNCERTAINTY_CMAP)
    ax.scatter(cols_px, rows_px, s=30, facecolors="none", edgecolors="black", linewidths=2.8)  # the dark edge
    ax.scatter(cols_px, rows_px, s=30, facecolors="none", edgecolors=scale.to_rgba(np.asarray(uncertainty)), linewidths=1.5)
    bar = ax.figure.colorbar(scale, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label(f"atom uncertainty: {quantity} (nats)")


def show_member_maps(members: np.ndarray, sampling_A_per_px: float | None = None, columns: int = 5) -> Figure:
    """Member disagreement at a glance: each member's probability map (members counted from 0, as
    ``prediction.members[k]``), one colour bar for them, then their variance with its own.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> fig = show_member_maps(np.random.rand(3, 16, 16))
    >>> [ax.get_title() for ax in fig.axes if ax.get_visible()][2:4]
    ['member 2', 'variance over members']
    """
    members = np.asarray(members)
    n = len(members) + 1
    cols = min(columns, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols + 0.8, 2.6 * rows + 0.6), squeeze=False, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    panels = [(member, f"member {i}", PROBABILITY_CMAP, 1.0) for i, member in enumerate(members)]
    panels.append((members.var(axis=0), "variance over members", "viridis", None))
    shown = []
    for ax, (array, title, cmap, top) in zip(axes.flat, panels):
        shown.append(ax.imshow(array, cmap=cmap, vmin=0, vmax=top))
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if sampling_A_per_px is not None:
        add_scalebar(axes.flat[0], sampling_A_per_px, members.shape[-1])
    fig.colorbar(shown[0], ax=list(axes.flat[: n - 1]), fraction=0.03, pad=0.02, shrink=0.9).set_label("probability of atom")
    variance_bar = fig.colorbar(shown[-1], ax=axes.flat[n - 1], location="bottom", fraction=0.05, pad=0.03)  # below: the columns stay equal
    variance_bar.set_label("variance (probability²)")
    variance_bar.ax.tick_params(labelsize=7, labelrotation=30)
    return fig


def plot_uncertainty_histograms(groups: dict[str, np.ndarray], quantity: str = "predictive entropy") -> Figure:
    """Per-atom uncertainty (nats) of several groups (e.g. in and out of distribution), as overlaid step histograms.

    Step outlines with different line styles stay readable in greyscale print.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> plot_uncertainty_histograms({"in": np.random.rand(50) * 0.3, "out": np.random.rand(50)}).axes[0].get_xlabel()
    'atom predictive entropy (nats)'
    """
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    values = np.concatenate([np.asarray(v, float) for v in groups.values()])
    bins = np.linspace(0, max(float(values.max(initial=0)), 1e-3), 30)
    for (name, scores), style in zip(groups.items(), ("-", "--", ":", "-.")):
        ax.hist(scores, bins=bins, histtype="step", lw=1.8, ls=style, density=True, label=f"{name} ({len(scores)} atoms)")
    ax.set(xlabel=f"atom {quantity} (nats)", ylabel="density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def draw_member_votes(ax: Axes, peaks: np.ndarray, threshold: float = 0.5) -> None:
    """Bar chart of each member's peak probability for one atom, with the threshold that counts as a vote."""
    peaks = np.asarray(peaks, float)
    ax.bar(np.arange(1, len(peaks) + 1), peaks, color=["black" if p > threshold else "0.7" for p in peaks], edgecolor="black")
    ax.axhline(threshold, color="#d95f02", ls="--", lw=1.2, label=f"vote threshold {threshold:g}")
    ax.set(xlabel="member", ylabel="peak probability in footprint", ylim=(0, 1.02), xticks=np.arange(1, len(peaks) + 1))
    ax.legend(fontsize=7, loc="lower right")


def show_uncertainty_maps(image: np.ndarray, prediction: object, sampling_A_per_px: float | None, title: str = "") -> Figure:
    """The image beside the ensemble's mean probability, variance, entropy and mutual information.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> from types import SimpleNamespace
    >>> field = np.random.rand(16, 16)
    >>> maps = SimpleNamespace(mean=field, variance=field, entropy=field, mutual_information=field)
    >>> len(show_uncertainty_maps(np.random.rand(16, 16), maps, 0.1).axes)
    9
    """
    panels = [
        ("image", image, IMAGE_CMAP, None),
        ("mean probability", prediction.mean, "magma", "probability"),
        ("variance", prediction.variance, "viridis", "variance"),
        ("predictive entropy", prediction.entropy, "viridis", "nats"),
        ("mutual information", prediction.mutual_information, "viridis", "nats"),
    ]
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.6))
    for ax, (name, array, cmap, unit) in zip(axes, panels):
        if unit is None:
            show_micrograph(ax, array, sampling_A_per_px, name)
            continue
        shown = ax.imshow(array, cmap=cmap, vmin=0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, fontsize=10)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04).set_label(unit)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_sweeps(points_by_axis: dict[str, list], units: dict[str, str], quantity: str = "f1", source_values: dict[str, float] | None = None) -> Figure:
    """One panel per sweep axis: members' F1 (thin), the ensemble's (bold), the classical baseline (dashed);
    or, with ``quantity="mi"``, the mean mutual information.

    ``points_by_axis`` maps an axis name to its :class:`~elit_utils.ood.SweepPoint` list. A dotted
    vertical line labelled "source" marks the training setting on every panel, so the direction of
    the shift is clear (on the dose axis it is on the right): ``source_values[axis]``, by default the
    first point's value (a sweep starts at the source setting, :data:`~elit_utils.ood.SWEEP_AXES`).
    """
    source_values = source_values or {}
    axes_names = list(points_by_axis)
    columns = min(4, len(axes_names))
    rows = int(np.ceil(len(axes_names) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(axes_names) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, axes_names):
        points = points_by_axis[name]
        x = [p.value for p in points]
        if quantity == "f1":
            members = np.array([p.member_f1 for p in points])
            ax.plot(x, members, color="0.6", lw=0.8)
            ax.plot(x, [p.ensemble.f1 for p in points], color="black", lw=2.2, marker="o", ms=4, label="ensemble mean")
            ax.plot(x, [p.classical.f1 for p in points], color="#d95f02", lw=1.5, ls="--", label="classical (no training)")
            ax.set_ylim(max(0.0, min(ax.get_ylim()[0], 0.5)), 1.01)
            ax.set_ylabel("F1")
        else:
            ax.plot(x, [p.mean_mutual_information for p in points], color="black", lw=2, marker="o", ms=4)
            ax.set_ylabel("mean MI (nats)")
        ax.set_xlabel(f"{name} ({units[name]})")
        if min(x) > 0 and max(x) / min(x) >= 10:  # e.g. dose: a log axis spreads the decades
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
        source = source_values.get(name, x[0])
        ax.axvline(source, color="#1b9e77", ls=":", lw=1.6, zorder=0)
        on_right = source >= np.median(x)  # the label sits on the side the sweep moves away from
        ax.annotate(
            "source",
            (source, 0.5),
            xycoords=ax.get_xaxis_transform(),
            xytext=(-3 if on_right else 3, 0),
            textcoords="offset points",
            rotation=90,
            color="#1b9e77",
            fontsize=8,
            ha="right" if on_right else "left",
            va="center",
        )
    if quantity == "f1":
        axes.flat[0].plot([], [], color="0.6", lw=0.8, label="single members")
        axes.flat[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def plot_error_detection(
    uncertainty_by_group: dict[str, tuple[np.ndarray, np.ndarray]],
    coverage_curves: dict[str, tuple[np.ndarray, np.ndarray]],
    score_name: str = "entropy",
    min_wrong_atoms: int = 1,
) -> Figure:
    """Left: ROC of a per-atom score (``score_name``, e.g. the entropy) detecting wrong atoms, per group,
    AUROC in the legend. Right: precision of the atoms kept vs coverage (the share kept, most certain first).

    A group with fewer than ``min_wrong_atoms`` wrong atoms (or no right ones) gets a legend line and
    no curve: an ROC of one or two wrong atoms is a step of chance, not a measurement.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> fig = plot_error_detection({"dose": (np.array([0.1, 0.9]), np.array([False, True]))}, {}, score_name="MI")
    >>> [ax.get_title() for ax in fig.axes]
    ['MI as an error detector', 'precision vs coverage']
    """
    from .ood import auroc

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    for name, (scores, wrong) in uncertainty_by_group.items():
        n_wrong = int(np.sum(wrong))
        if n_wrong < max(min_wrong_atoms, 1) or np.all(wrong):
            why = "no right atoms" if np.all(wrong) and n_wrong else f"{'no' if not n_wrong else f'only {n_wrong}'} wrong atom{'' if n_wrong == 1 else 's'}"
            left.plot([], [], ls="none", label=f"{name}: {why}")
            continue
        order = np.argsort(-scores)
        wrong_sorted = wrong[order].astype(float)
        tpr = np.r_[0, np.cumsum(wrong_sorted) / max(wrong_sorted.sum(), 1)]
        fpr = np.r_[0, np.cumsum(1 - wrong_sorted) / max((1 - wrong_sorted).sum(), 1)]
        left.plot(fpr, tpr, label=f"{name} (AUROC {auroc(scores, wrong):.2f})")
    left.plot([0, 1], [0, 1], color="0.7", ls=":")
    left.set(xlabel="false-alarm rate (correct atoms flagged)", ylabel="detection rate (wrong atoms flagged)", title=f"{score_name} as an error detector")
    left.legend(fontsize=7)
    for name, (coverage, precision) in coverage_curves.items():
        right.plot(coverage * 100, precision, marker="o", ms=3, label=name)
    right.set(xlabel=f"atoms kept, lowest {score_name} first (%)", ylabel="precision of kept atoms", title="precision vs coverage")
    if coverage_curves:
        right.legend(fontsize=7)
    right.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_reliability(curves: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> Figure:
    """Reliability diagram: observed frequency vs predicted probability; ECE in the legend."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], color="0.7", ls=":", label="perfect calibration")
    for name, (predicted, observed, ece) in curves.items():
        ax.plot(predicted, observed, marker="o", ms=4, label=f"{name} (ECE {ece:.3f})")
    ax.set(xlabel="predicted probability of 'atom'", ylabel="observed frequency", title="calibration per pixel")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_shift_scores(
    scores: dict[str, dict[str, np.ndarray]], marks: dict[str, dict[str, float]] | None = None, limits: dict[str, float] | None = None
) -> Figure:
    """One panel per frame score: a histogram per group of frames (e.g. source, shifted), real frames
    as named vertical marks, and the score's flag limit as a red line.

    ``scores`` maps a score's name (the panel's x label) to {group: per-frame values};
    ``marks`` and ``limits`` are keyed by the same score names. Each mark's label (name and value)
    is written level above the histograms; labels of marks close together are stacked so that
    they never overlap. The log x axis has a few plain-number ticks (1, 2, 5 per decade at most).
    """
    marks, limits = marks or {}, limits or {}
    fig, axes = plt.subplots(1, len(scores), figsize=(5.5 * len(scores), 3.6), squeeze=False)
    tallest = {}
    for ax, (name, groups) in zip(axes[0], scores.items()):
        named = marks.get(name, {})
        values = np.concatenate([g for g in groups.values() if len(g)] + [np.array([*named.values(), *([limits[name]] if name in limits else [])])])
        bins = np.logspace(np.log10(max(values.min(), 1e-5)), np.log10(values.max() * 1.05), 25)
        tallest[name] = 1.0
        for (group, values_of_group), hatch in zip(groups.items(), ("", "//", "..")):
            counts, _, _ = ax.hist(values_of_group, bins=bins, alpha=0.55, label=group, hatch=hatch, edgecolor="0.3", linewidth=0.5)
            tallest[name] = max(tallest[name], float(np.max(counts, initial=0)))
        for value in named.values():
            ax.axvline(value, color="black", ls="--", lw=1)
        if name in limits:
            ax.axvline(limits[name], color="tab:red", lw=1.5, label="flag limit")
        ax.set_xscale("log")
        ax.set_xlim(bins[0], bins[-1])
        _plain_log_ticks(ax, bins[0], bins[-1])
        ax.set(xlabel=name, ylabel="frames", ylim=(0, tallest[name] * 1.6))
        marks_on_right = np.mean([ax.transLimits.transform(ax.transScale.transform((v, 1.0)))[0] > 0.5 for v in named.values()] or [1.0])
        ax.legend(fontsize=8, loc="upper left" if marks_on_right >= 0.5 else "upper right")
    fig.tight_layout()
    for ax, name in zip(axes[0], scores):  # labels placed in the final geometry, then the bars kept below them
        lowest = _label_marks(ax, marks.get(name, {}))
        ax.set_ylim(0, tallest[name] * 1.05 / max(lowest - 0.03, 0.3))
    fig.tight_layout()
    return fig


def _plain_log_ticks(ax: Axes, low: float, high: float) -> None:
    """Major ticks at 1, 2, 5 x 10^k (or only 10^k over many decades) written as plain numbers; minor ticks unlabelled."""
    decades = np.log10(high / low)
    subs = (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _label_marks(ax: Axes, named: dict[str, float]) -> float:
    """Write "name (value)" beside each vertical mark at the top of ``ax``, stacking labels that would overlap
    (each other or the legend). Returns the bottom of the lowest label or legend in axes fraction (1.0 without).
    """
    renderer = ax.figure.canvas.get_renderer()
    legend = ax.get_legend()
    placed = [legend.get_window_extent(renderer)] if legend is not None else []
    lowest = ax.transAxes.inverted().transform((0, placed[0].y0))[1] if placed else 1.0
    for label, value in sorted(named.items(), key=lambda item: item[1]):
        right_side = ax.transLimits.transform(ax.transScale.transform((value, 1.0)))[0] < 0.6
        for level in range(len(named) + 8):
            text = ax.annotate(
                f"{label} ({value:.4g})",
                (value, 1.0),
                xycoords=ax.get_xaxis_transform(),
                xytext=(3 if right_side else -3, -3 - 11 * level),
                textcoords="offset points",
                ha="left" if right_side else "right",
                va="top",
                fontsize=7,
                bbox={"facecolor": "white", "alpha": 0.85, "pad": 0.6, "lw": 0},
            )
            extent = text.get_window_extent(renderer).padded(1.5)
            if not any(extent.overlaps(other) for other in placed):
                break
            text.remove()
        placed.append(extent)
        lowest = min(lowest, ax.transAxes.inverted().transform((0, extent.y0))[1])
    return lowest


METHOD_STYLES = {  # one style per adaptation method (elit_utils.iterate.METHODS), told apart in greyscale by line style and marker
    "uncertainty-masked": {"color": "black", "lw": 2.4, "marker": "o", "ls": "-"},
    "paper (threshold 0.5)": {"color": "#1b9e77", "lw": 1.6, "marker": "s", "ls": "--"},
    "single network": {"color": "#7570b3", "lw": 1.6, "marker": "^", "ls": "-."},
    "no adaptation": {"color": "0.55", "lw": 1.2, "marker": "", "ls": ":"},
    "true labels": {"color": "#d95f02", "lw": 1.2, "marker": "*", "ls": (0, (1, 3))},
}


def label_composite(label_mask: np.ndarray, loss_weight: np.ndarray) -> np.ndarray:
    """Pseudo-labels as one greyscale picture: 1 = atom label, 0.5 = left out of the loss, 0 = background.

    >>> label_composite(np.array([[True, False, False]]), np.array([[True, False, True]])).tolist()
    [[1.0, 0.5, 0.0]]
    """
    return np.where(~np.asarray(loss_weight, bool), 0.5, np.asarray(label_mask, float))


def show_pseudo_labels(
    image: np.ndarray, mean_probability: np.ndarray, label_mask: np.ndarray, loss_weight: np.ndarray, sampling_A_per_px: float | None
) -> Figure:
    """The frame, the ensemble's mean probability, and the pseudo-labels it yields (grey: left out of the loss).

    >>> import matplotlib; matplotlib.use("Agg")
    >>> fig = show_pseudo_labels(np.random.rand(16, 16), np.random.rand(16, 16), np.eye(16, dtype=bool), np.ones((16, 16), bool), 0.1)
    >>> [ax.get_title() for ax in fig.axes[:3]]
    ['frame', 'mean probability of "atom"', 'pseudo-labels']
    """
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
    show_micrograph(axes[0], image, sampling_A_per_px, "frame")
    shown = axes[1].imshow(mean_probability, cmap="magma", vmin=0, vmax=1)
    fig.colorbar(shown, ax=axes[1], fraction=0.046, pad=0.04).set_label("probability")
    axes[1].set_title('mean probability of "atom"', fontsize=10)
    axes[2].imshow(label_composite(label_mask, loss_weight), cmap="gray", vmin=0, vmax=1)
    axes[2].set_title("pseudo-labels", fontsize=10)
    handles = [Rectangle((0, 0), 1, 1, color=str(level), ec="black", lw=0.5) for level in (1.0, 0.5, 0.0)]
    axes[2].legend(
        handles, ["atom label", "left out of the loss", "background"], loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=7, frameon=False
    )
    for ax in axes[1:]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_adaptation(histories: dict[str, list[dict]]) -> Figure:
    """F1 (left) and mean mutual information of the frames (right) per round, one line per method.

    ``histories`` maps a method (``uncertainty-masked``, ``paper (threshold 0.5)``, ``single network``,
    ``no adaptation``, ``true labels``: :data:`elit_utils.iterate.METHODS`) to its rows from
    :func:`~elit_utils.iterate.adapt`; a one-row history (no adaptation) is drawn level across all rounds.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> rows = [{"round": 0, "f1": 0.7, "mean_mi_nats": 0.03}, {"round": 1, "f1": 0.9, "mean_mi_nats": 0.01}]
    >>> [ax.get_ylabel() for ax in plot_adaptation({"uncertainty-masked": rows, "no adaptation": rows[:1]}).axes]
    ['F1 (atoms within 0.5 Å)', 'mean mutual information (nats)']
    """
    last_round = max(row["round"] for rows in histories.values() for row in rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for name, rows in histories.items():
        style = METHOD_STYLES.get(name, {"lw": 1.2})
        rounds = [row["round"] for row in rows] if len(rows) > 1 else [0, last_round]
        for ax, key in ((left, "f1"), (right, "mean_mi_nats")):
            values = [row[key] for row in rows] if len(rows) > 1 else [rows[0][key]] * 2
            if key in rows[0]:
                ax.plot(rounds, values, label=name, ms=6, **style)
    left.set(xlabel="round", ylabel="F1 (atoms within 0.5 Å)", title="atoms found")
    right.set(xlabel="round", ylabel="mean mutual information (nats)", title="uncertainty on the frames")
    for ax in (left, right):
        ax.set_xticks(range(last_round + 1))
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    return fig


def show_rounds(image: np.ndarray, rounds: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]], sampling_A_per_px: float | None) -> Figure:
    """Rounds side by side: the pseudo-labels (top) and the mutual information map (bottom, one shared scale).

    ``rounds`` maps a round number to (label mask, loss weight, mutual information map) of one frame.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> maps = (np.eye(16, dtype=bool), np.ones((16, 16), bool), np.random.rand(16, 16))
    >>> fig = show_rounds(np.random.rand(16, 16), {0: maps, 3: maps}, 0.1)
    >>> [ax.get_title() for ax in fig.axes[:3]]
    ['frame', 'pseudo-labels, round 0', 'pseudo-labels, round 3']
    """
    n = len(rounds)
    top_mi = max(float(np.max(mi)) for _, _, mi in rounds.values()) or 1e-3
    fig, axes = plt.subplots(2, n + 1, figsize=(3.0 * (n + 1) + 0.8, 6.2), squeeze=False)
    show_micrograph(axes[0, 0], image, sampling_A_per_px, "frame")
    axes[1, 0].set_visible(False)
    for column, (number, (mask, weight, mi)) in enumerate(rounds.items(), start=1):
        axes[0, column].imshow(label_composite(mask, weight), cmap="gray", vmin=0, vmax=1)
        axes[0, column].set_title(f"pseudo-labels, round {number}", fontsize=10)
        shown = axes[1, column].imshow(mi, cmap="viridis", vmin=0, vmax=top_mi)
        axes[1, column].set_title(f"mutual information, round {number}", fontsize=10)
        for ax in axes[:, column]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(shown, ax=list(axes[1, 1:]), fraction=0.03, pad=0.02).set_label("nats")
    return fig


# --------------------------------------------------------------------------- clutter

CLUTTER_COLOUR = "#ffd400"  # the true clutter outline: yellow, apart from the atom colours
UNTRUSTED_COLOUR = "#e7298a"  # trust regions: magenta


def show_trust_regions(
    image: np.ndarray,
    smoothed_entropy: np.ndarray,
    untrusted: np.ndarray,
    sampling_A_per_px: float | None,
    found: np.ndarray | None = None,
    right: np.ndarray | None = None,
    clutter_mask: np.ndarray | None = None,
) -> Figure:
    """A frame with its "do not trust" regions, beside the smoothed entropy they come from.

    Left: the image, trust regions shaded magenta, the true clutter outlined yellow (simulated
    frames only), found atoms as rings (cyan right, red wrong, when ``right`` is given).
    Right: the area-smoothed predictive entropy (nats) with the region's outline.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> field = np.random.rand(32, 32)
    >>> fig = show_trust_regions(field, field, field > 0.9, 0.1, np.array([[5.0, 5.0]]), np.array([True]), field > 0.5)
    >>> [ax.get_title() for ax in fig.axes[:2]]
    ['trust regions (magenta) and clutter (yellow)', 'area-smoothed entropy']
    """
    fig, (left, right_ax) = plt.subplots(1, 2, figsize=(9.6, 4.4), layout="constrained")
    title = "trust regions (magenta)" + (" and clutter (yellow)" if clutter_mask is not None else "")
    show_micrograph(left, image, sampling_A_per_px, title)
    shade = np.zeros((*untrusted.shape, 4), np.float32)
    shade[untrusted] = to_rgba(UNTRUSTED_COLOUR, 0.35)
    left.imshow(shade)
    if clutter_mask is not None and clutter_mask.any():
        left.contour(clutter_mask, [0.5], colors=[CLUTTER_COLOUR], linewidths=1.2)
    if found is not None and len(found):
        ok = np.ones(len(found), bool) if right is None else np.asarray(right, bool)
        for chosen, colour, name in ((ok, ATOM_COLOURS[0], "right"), (~ok, "red", "wrong")):
            left.scatter(found[chosen, 1], found[chosen, 0], s=12, facecolors="none", edgecolors=colour, linewidths=0.9, label=name)
        if right is not None:
            left.legend(loc="lower left", fontsize=7, framealpha=0.8)
    shown = right_ax.imshow(smoothed_entropy, cmap="viridis", vmin=0)
    if untrusted.any():
        right_ax.contour(untrusted, [0.5], colors=[UNTRUSTED_COLOUR], linewidths=1.2)
    right_ax.set(xticks=[], yticks=[])
    right_ax.set_title("area-smoothed entropy", fontsize=10)
    fig.colorbar(shown, ax=right_ax, fraction=0.046, pad=0.04).set_label("nats")
    return fig


def plot_clutter_study(summary: dict) -> Figure:
    """F1 (top) and precision of the atoms found inside clutter (bottom) per round, one column per
    domain, one line per method, with each round's interval over repeats as a band.

    ``summary`` is :func:`elit_utils.clutter.summarise_study`'s.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> entry = {"f1": [0.8, 0.9], "f1_interval": [[0.7, 0.9], [0.85, 0.95]],
    ...          "precision_in_clutter": [0.5, 0.6], "precision_in_clutter_interval": [[0.4, 0.6], [0.5, 0.7]]}
    >>> fig = plot_clutter_study({"rounds": 1, "interval": "", "contaminated": {"methods": {"uncertainty-masked": entry}}})
    >>> [ax.get_ylabel() for ax in fig.axes]
    ['F1 (atoms within 0.5 Å)', 'precision inside clutter']
    """
    domains = [name for name, value in summary.items() if isinstance(value, dict) and "methods" in value]
    fig, axes = plt.subplots(2, len(domains), figsize=(4.8 * len(domains), 6.2), squeeze=False, sharex=True)
    rounds = np.arange(summary["rounds"] + 1)
    for column, domain in enumerate(domains):
        for row, (key, label) in enumerate((("f1", "F1 (atoms within 0.5 Å)"), ("precision_in_clutter", "precision inside clutter"))):
            ax = axes[row, column]
            for method, entry in summary[domain]["methods"].items():
                style = METHOD_STYLES.get(method, {"lw": 1.2})
                ax.plot(rounds, entry[key], label=method, ms=5, **style)
                low, high = np.array(entry[f"{key}_interval"], float).T
                ax.fill_between(rounds, low, high, color=style.get("color", "0.5"), alpha=0.12, lw=0)
            ax.grid(alpha=0.3)
            ax.set_xticks(rounds)
            if column == 0:
                ax.set_ylabel(label)
            if row == 0:
                ax.set_title(domain)
            else:
                ax.set_xlabel("round")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


POLICY_STYLES = {  # one style per stream policy (elit_utils.stream), told apart in greyscale by line style and marker
    "static": {"color": "0.45", "lw": 1.4, "ls": ":", "marker": ""},
    "always retrain": {"color": "#1b9e77", "lw": 1.4, "ls": "--", "marker": ""},
    "ELIT-triggered": {"color": "black", "lw": 2.0, "ls": "-", "marker": ""},
}


def _draw_segments(strip: Axes, axes: Sequence[Axes], scenario: object) -> None:
    """Name each segment of ``scenario`` on ``strip`` at its time (minutes) and shade its drifted stretches (grey) on every axis."""
    import textwrap

    start_min = 0.0
    for segment in scenario.segments:
        end_min = start_min + segment.duration_s / 60
        for ax in (strip, *axes):
            if segment.drifted:
                ax.axvspan(start_min, end_min, color="0.88", lw=0, zorder=0)
            ax.axvline(start_min, color="0.7", lw=0.6, zorder=0)
        strip.text((start_min + end_min) / 2, 0.5, textwrap.fill(segment.name, 13), ha="center", va="center", fontsize=6.5)
        start_min = end_min
    strip.set(yticks=[], ylim=(0, 1), xlim=(0, start_min))
    strip.set_title("the session (grey: drifted, what the source ensemble may misread)", fontsize=8)


def plot_stream_timeline(logs: dict[str, list[dict]], scenario: object) -> Figure:
    """A microscope run as the policies lived it, one shared time axis (minutes; grey bands: the drifted segments of ``scenario``).

    Top: the two frame signals as the source ensemble reads each frame (the static policy's log):
    the frame error estimate over its flag limit (what the ELIT-triggered policy acts on) and, where
    the model has a shift detector, the shift score over its limit ("different", not "wrong"), each
    over the limit logged for that frame, so both share one scale. Middle: F1 of each policy's model per frame (scored afterwards
    against the hidden truth), with the ELIT-triggered policy's triggers (down triangles) and swaps
    (up triangles). Bottom: adaptation compute spent so far, in member-iterations.

    ``logs`` maps a policy name to its :func:`~elit_utils.stream.run_policy` log; it must hold ``"static"``.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> from elit_utils.stream import Scenario, Segment
    >>> line = {"segment": "good", "drifted": False, "error_estimate": 0.01, "error_limit": 0.1, "shift_score": 3.0, "shift_limit": 10.0}
    >>> line |= {"decision": "use", "member_iterations": 0}
    >>> log = [{**line, "frame": k, "time_s": 20.0 * k, "f1": 1.0, "model": "source"} for k in range(3)]
    >>> scenario = Scenario((Segment(60.0, name="good", drifted=False),), frame_interval_s=20.0, image_size_px=64)
    >>> [ax.get_ylabel() for ax in plot_stream_timeline({"static": log}, scenario).axes]
    ['', 'signal / its limit', 'F1 (atoms within 0.5 Å)', 'member-iterations']
    """
    static = logs["static"]
    if any(line.get("error_estimate") is None or not line.get("error_limit") for line in static):
        raise BadValueError("the static log has no frame error estimates to draw: play it with run_policy(..., monitor=) the model's monitor")
    minutes = np.array([line["time_s"] for line in static]) / 60
    heights = {"height_ratios": [0.32, 1.1, 1.3, 0.8]}
    fig, (strip, signals, f1, compute) = plt.subplots(4, 1, figsize=(9.5, 8.0), sharex=True, gridspec_kw=heights)
    error = np.array([line["error_estimate"] / line["error_limit"] for line in static], float)
    signals.semilogy(minutes, error, color="black", lw=1.6, label="frame error estimate / limit (acted on)")
    ratios = [error]
    if all(line["shift_score"] is not None for line in static):
        ratios.append(np.array([line["shift_score"] / line["shift_limit"] for line in static], float))
        signals.semilogy(minutes, ratios[-1], color="#7570b3", lw=1.2, ls="--", label="shift score / limit (different, not wrong)")
    signals.axhline(1.0, color="#d62728", lw=1, label="flag limit")
    signals.set_ylabel("signal / its limit")
    signals.legend(fontsize=7, loc="upper left")
    for name, log in logs.items():
        style, log_minutes = POLICY_STYLES.get(name, {"lw": 1.2}), np.array([line["time_s"] for line in log]) / 60
        f1.plot(log_minutes, [line["f1"] for line in log], label=name, **style)
        for k, line in enumerate(log):
            new_model = k > 0 and line["model"] != log[k - 1]["model"]
            if line["decision"] == "trigger" or new_model:
                f1.plot(log_minutes[k], line["f1"], marker="^" if new_model else "v", color=style.get("color", "black"), ms=7, ls="", mec="white")
        compute.plot(log_minutes, [line["member_iterations"] for line in log], drawstyle="steps-post", **style)
    f1.set_ylabel("F1 (atoms within 0.5 Å)")
    f1.legend(fontsize=7, loc="lower left", title="▼ trigger  ▲ new model in use", title_fontsize=7)
    compute.set(ylabel="member-iterations", xlabel="time in the session (min)")
    _draw_segments(strip, (signals, f1, compute), scenario)
    ratios = np.concatenate(ratios)
    signals.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
    signals.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    signals.yaxis.set_minor_formatter(NullFormatter())
    signals.set_ylim(max(float(np.nanmin(ratios)) / 1.5, 1e-3), float(np.nanmax(ratios)) * 1.5)
    for ax in (signals, f1, compute):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
