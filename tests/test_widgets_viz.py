import numpy as np

from elit_utils import viz
from elit_utils.widgets import SimulationPreview


def test_preview_responds_to_every_slider():
    preview = SimulationPreview(image_size_px=48, seed=1)
    first_image, first_text = preview.frame.image.copy(), preview.summary.value
    assert len(preview.output.outputs) == 1
    preview.controls["dose_e_per_A2"].value = 3.5
    assert not np.array_equal(preview.frame.image, first_image)
    preview.controls["sampling_A_per_px"].value = 0.2
    assert preview.summary.value != first_text  # more atoms in a wider field
    assert preview.settings()[1].sampling_A_per_px == 0.2
    preview.controls["dopant_density_per_nm2"].value = 2.0
    assert preview.settings()[0].dopant_density_per_nm2 == 2.0
    assert len(preview.output.outputs) == 1  # redrawn, not appended


def test_micrograph_grid_has_scale_bars_and_titles():
    fig = viz.show_micrographs([np.random.rand(64, 64)] * 3, ["a", "b", "c"], sampling_A_per_px=0.1, columns=2)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["a", "b", "c"]
    assert all(any(t.get_text().endswith(("nm", "Å")) for t in ax.texts) for ax in visible)


def test_scalebar_lengths_are_round():
    assert viz.nice_scalebar_nm(2.56) == 0.5
    assert viz.nice_scalebar_nm(25.6) == 5.0
    assert viz.nice_scalebar_nm(1.0) == 0.2
