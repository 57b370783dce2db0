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

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from .simulate import DOMAINS, SampleSpec, SimulatedImage, simulate_image
from .viz import show_micrograph


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
        self.output.outputs = ()
        self.output.append_display_data(fig)
        plt.close(fig)


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
            f"members {point.member_f1.min():.3f}-{point.member_f1.max():.3f}, mean MI {point.mean_mutual_information:.4f} nats"
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
        self.output.outputs = ()
        self.output.append_display_data(fig)
        plt.close(fig)


def sweep_explorer(points_by_axis: dict[str, list], units: dict[str, str]) -> SweepExplorer:
    """Build and display the sweep explorer (returned so that tests can move it)."""
    explorer = SweepExplorer(points_by_axis, units)
    display(explorer.widget)
    return explorer
