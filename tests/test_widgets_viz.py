import numpy as np

from elit_utils import viz
from elit_utils.widgets import SimulationPreview
from tests.conftest import tiny_ensemble


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


def test_sweep_explorer_moves_along_the_sweep(tmp_path):
    from elit_utils import ood
    from elit_utils.widgets import SweepExplorer

    model = tiny_ensemble(tmp_path, 2)
    detector = ood.fit_shift_detector(model, 4, 1, 32)
    points = {axis: ood.sweep(model, axis, 1, 0, 32, ood.ClassicalFinder(), detector, values=ood.SWEEP_AXES[axis][1][:2]) for axis in ("dose", "defocus")}
    explorer = SweepExplorer(points, {"dose": "e/Å²", "defocus": "Å"})
    first = explorer.summary.value
    explorer.position.value = 1
    assert explorer.point.value == 1e5 and explorer.summary.value != first and "100000" in explorer.summary.value
    assert "flagged as shifted" in explorer.summary.value
    explorer.axis.value = "defocus"
    assert explorer.position.value == 0 and explorer.point.axis == "defocus" and "defocus" in explorer.summary.value
    assert len(explorer.output.outputs) == 1


def test_ood_figures_have_labelled_axes():
    fig = viz.plot_reliability({"source": (np.array([0.1, 0.9]), np.array([0.1, 0.8]), 0.05)})
    assert fig.axes[0].get_xlabel() == "predicted probability of 'atom'"
    name = "mean mutual information (nats)"
    fig = viz.plot_shift_scores({name: {"a": np.array([1e-3, 2e-3]), "b": np.array([1e-2, 3e-2])}}, {name: {"real": 5e-3}}, {name: 4e-3})
    assert fig.axes[0].get_xlabel() == name and "flag limit" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    by_axis = {"dose": (np.array([0.1, 0.9]), np.array([False, True])), "sampling": (np.array([0.2, 0.3]), np.array([False, False]))}
    fig = viz.plot_error_detection(by_axis, {"dose": (np.array([0.5, 1.0]), np.array([1.0, 0.5]))})
    assert [ax.get_title() for ax in fig.axes] == ["entropy as an error detector", "precision vs coverage"]
    assert fig.axes[1].get_ylabel() == "precision of kept atoms" and "lowest entropy first" in fig.axes[1].get_xlabel()
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["dose (AUROC 1.00)", "sampling: no wrong atoms"]


def test_error_detection_names_its_score_and_skips_groups_with_few_errors():
    rng = np.random.default_rng(0)
    wrong = rng.random(200) < 0.2
    by_axis = {"dose": (rng.random(200) + wrong, wrong), "sampling": (rng.random(50), np.arange(50) == 3)}
    fig = viz.plot_error_detection(by_axis, {}, score_name="mutual information", min_wrong_atoms=10)
    assert fig.axes[0].get_title() == "mutual information as an error detector"
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[0].startswith("dose (AUROC") and legend[1] == "sampling: only 1 wrong atom"
    assert len(fig.axes[0].get_lines()) == 3  # dose's ROC, sampling's legend-only entry, the chance diagonal: no ROC of one wrong atom


def _toy_frame(seed=0):
    """A frame with three atoms that all members see and one that only two of the three see."""
    from elit_utils.ensemble import uncertainty_maps

    members = np.full((3, 40, 40), 0.01)
    centres = [(8, 8), (8, 30), (30, 8), (30, 30)]
    for k, (r, c) in enumerate(centres):
        voters = [0, 1] if k == 3 else [0, 1, 2]
        members[voters, r - 2 : r + 3, c - 2 : c + 3] = 0.95
    image = np.random.default_rng(seed).random((40, 40))
    truth = np.array(centres[:3], float)  # the disputed atom is a false one
    return image, uncertainty_maps(members, 0.1), truth


def test_uncertainty_explorer_thresholds_atoms_and_shows_votes():
    from elit_utils.widgets import UncertaintyExplorer

    explorer = UncertaintyExplorer({"toy": _toy_frame(), "no truth": (*_toy_frame(1)[:2], None)})
    assert "toy: kept <b>4</b> of 4" in explorer.summary.value and "F1 of the kept atoms <b>0.857</b>" in explorer.summary.value
    most_uncertain = explorer.selected_atom()
    assert explorer.atoms["toy"].vote_fraction[most_uncertain] == 2 / 3  # rank 0 is the disputed atom
    explorer.measure.value = "mutual information"
    explorer.threshold.value = 0.1
    assert explorer.kept().sum() == 3 and "F1 of the kept atoms <b>1.000</b>" in explorer.summary.value
    explorer.select_nearest(29.0, 31.0)
    assert explorer.selected_atom() == most_uncertain and explorer.atom.value == 0
    explorer.map.value = "variance"
    explorer.frame.value = "no truth"
    assert "F1" not in explorer.summary.value and len(explorer.output.outputs) == 1


def test_round_explorer_steps_through_rounds():
    from elit_utils.widgets import RoundExplorer

    mask = np.zeros((16, 16), bool)
    rounds = {0: (mask, np.zeros((16, 16), bool), np.full((16, 16), 0.2)), 2: (mask, np.ones((16, 16), bool), np.full((16, 16), 0.05))}
    explorer = RoundExplorer(np.random.rand(16, 16), rounds, [{"round": 0, "f1": 0.7}, {"round": 2, "f1": 0.9}], 0.1)
    assert "100.0% left out" in explorer.summary.value and "0.700" in explorer.summary.value
    explorer.round.value = 2
    assert "0.0% left out" in explorer.summary.value and "0.900" in explorer.summary.value and len(explorer.output.outputs) == 1


def test_new_figures_have_their_labels():
    fig = viz.show_member_maps(np.random.rand(4, 16, 16), 0.1)
    assert [ax.get_title() for ax in fig.axes[:5]] == ["member 0", "member 1", "member 2", "member 3", "variance over members"]  # as members[k]
    bars = {ax.get_ylabel() or ax.get_xlabel() for ax in fig.axes[5:]}
    assert bars == {"probability of atom", "variance (probability²)"}  # one bar for the members, one with the variance's units
    assert fig.axes[0].get_images()[0].get_clim() == (0, 1)
    fig = viz.plot_adaptation({"uncertainty-masked": [{"round": 0, "f1": 0.7, "mean_mi_nats": 0.03}, {"round": 1, "f1": 0.9, "mean_mi_nats": 0.01}]})
    assert fig.axes[0].get_lines()[0].get_ydata().tolist() == [0.7, 0.9]
    fig = viz.plot_uncertainty_histograms({"source": np.random.rand(20), "shifted": np.random.rand(20)}, "mutual information")
    assert fig.axes[0].get_xlabel() == "atom mutual information (nats)" and len(fig.axes[0].get_legend().texts) == 2


def test_uncertainty_explorer_explains_its_maps_and_units():
    from elit_utils.widgets import MAP_LEGEND, MAPS, UncertaintyExplorer, map_legend

    assert set(MAP_LEGEND) == set(MAPS)
    explorer = UncertaintyExplorer({"toy": _toy_frame()})
    assert "mutual information" in explorer.legend.value and "nats" in explorer.legend.value  # the map shown first
    explorer.map.value = "mean probability"
    assert "probability" in explorer.legend.value and "0 to 1" in explorer.legend.value
    explorer.map.value = "variance"
    assert "probability²" in explorer.legend.value
    legend = map_legend().value
    assert all(name in legend for name in MAPS) and legend.count("nats, 0 to ln 2") == 2 and "orange crosses" in legend


def test_status_line_says_what_the_dashboard_does(tmp_path, monkeypatch):
    from elit_utils import config, widgets

    status = widgets.StatusLine("Starting ELIT Lab...")
    assert status.messages == ["Starting ELIT Lab..."] and "Starting ELIT Lab..." in status.widget.value
    monkeypatch.setenv(config.CACHE_ENV, str(tmp_path))
    calls = []

    def fake_cached_ensemble(profile, domain, seed, progress):  # "trains" on the first call: writes into the cache
        calls.append(seed)
        folder = tmp_path / "ensembles" / "source-smoke-x"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"member-{len(calls)}.pt").write_text("weights")
        return type("Model", (), {"n_members": config.PROFILES["smoke"].n_members})()

    monkeypatch.setattr("elit_utils.ensemble.cached_ensemble", fake_cached_ensemble)
    widgets.ensemble_with_status(status, config.PROFILES["smoke"], seed=0)
    assert "on a first run it is trained first (under a minute)" in status.messages[1] and "trained on this first run" in status.messages[-1]
    monkeypatch.setattr("elit_utils.ensemble.cached_ensemble", lambda profile, domain, seed, progress: type("Model", (), {"n_members": 2})())
    widgets.ensemble_with_status(status, config.PROFILES["smoke"], seed=0)
    assert "loaded from the cache" in status.messages[-1] and status.widget.value.startswith("<b>⏳</b>")
    status.update("Ready", done=True)
    assert status.widget.value.startswith("<b>✔</b>")


def _window_pixels(fig, extent):
    """The RGB pixels of the drawn figure inside a display-space ``extent`` (rows counted from the top)."""
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0
    height = pixels.shape[0]
    return pixels[int(height - extent.y1) : int(height - extent.y0), int(extent.x0) : int(extent.x1)]


def test_scalebar_label_reads_on_a_white_image():
    image = np.ones((64, 64))
    image[0] = 0  # white everywhere but the top row (the contrast spans 0 to 1), e.g. a white atom disc under the label
    fig = viz.show_micrographs([image], ["white"], sampling_A_per_px=0.1)
    label = next(t for t in fig.axes[0].texts if t.get_text().endswith(("nm", "Å")))
    fig.canvas.draw()
    patch = _window_pixels(fig, label.get_window_extent())
    assert np.median(patch) < 0.35 and patch.max() > 0.9, np.median(patch)  # white text on a dark box (a half-grey box read badly)


def test_probability_maps_get_a_shared_colour_bar_on_request():
    maps = [np.random.rand(32, 32) for _ in range(3)]
    fig = viz.show_micrographs(maps, ["member 0", "member 1", "mean"], 0.1, colorbar_label="probability of atom", value_range=(0, 1), cmap="magma")
    panels, bars = fig.axes[:3], fig.axes[3:]
    assert [ax.get_ylabel() for ax in bars] == ["probability of atom"]  # one bar for all three panels
    assert all(ax.get_images()[0].get_clim() == (0, 1) for ax in panels)
    fig = viz.show_micrographs(maps[:2], ["frame", "mask"], 0.1, colorbar_label=[None, "label"], value_range=[None, (0, 1)])
    assert [ax.get_ylabel() for ax in fig.axes[2:]] == ["label"] and fig.axes[0].get_images()[0].get_clim() != (0, 1)
    fig = viz.show_micrographs(maps[:2], ["a", "b"], 0.1)
    assert len(fig.axes) == 2  # no colour bar unless asked for


def test_probe_figure_says_its_colours_are_square_root():
    probe = np.exp(-((np.arange(32) - 16.0) ** 2) / 20)[:, None] * np.exp(-((np.arange(32) - 16.0) ** 2) / 20)[None, :]
    fig = viz.show_probes({"a": probe * 3, "b": probe}, 0.1, {"a": 1.0, "b": 1.0})
    assert fig.axes[-1].get_ylabel() == "intensity ÷ peak (colour ∝ √intensity)"
    assert [ax.get_images()[0].get_array().max() for ax in fig.axes[:2]] == [1.0, 1.0]  # each probe divided by its peak: one scale


def test_atom_rings_stand_out_on_grey():
    fig = viz.show_atoms_with_uncertainty(np.full((32, 32), 0.5), np.array([8.0, 20.0]), np.array([8.0, 20.0]), np.array([0.0, 0.04]), 0.1)
    assert fig.axes[1].get_ylabel() == "atom uncertainty: mutual information (nats)"
    luminance = [0.2126 * r + 0.7152 * g + 0.0722 * b for r, g, b, _ in viz.ATOM_UNCERTAINTY_CMAP(np.linspace(0, 1, 5))]
    assert min(luminance) > 0.25 and luminance == sorted(luminance)  # no dark end (viridis' starts at 0.07); ordered in lightness
    edge, rings = fig.axes[0].collections[-2:]
    assert np.allclose(edge.get_edgecolor()[:, :3], 0) and edge.get_linewidth()[0] > rings.get_linewidth()[0]  # a dark edge under each ring


def test_shift_score_labels_never_overlap_and_ticks_are_plain():
    rng = np.random.default_rng(0)
    scores = {"feature distance": {"source": np.exp(rng.normal(2, 0.2, 100)), "shifted": np.exp(rng.normal(3.4, 0.8, 300))}}
    scores["mean MI (nats)"] = {"source": np.exp(rng.normal(-5, 0.05, 100)), "shifted": np.exp(rng.normal(-4.6, 0.5, 300))}
    marks = {"feature distance": {"G-GrainBoundary-4nm": 66.39, "G-Si-2nm": 66.35, "G-dimSi": 67.0}}
    marks["mean MI (nats)"] = {"G-dimSi": 9.5e-3, "G-GrainBoundary-4nm": 1.35e-2, "G-Si-2nm": 1.45e-2}
    fig = viz.plot_shift_scores(scores, marks, {"feature distance": 19.5})
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax, named in zip(fig.axes, marks.values()):
        labels = [t for t in ax.texts if "(" in t.get_text()]
        assert sorted(t.get_text() for t in labels) == sorted(f"{k} ({v:.4g})" for k, v in named.items())  # each value written once
        boxes = [t.get_window_extent(renderer) for t in labels] + [ax.get_legend().get_window_extent(renderer)]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]), [t.get_text() for t in labels]
        assert all(ax.get_window_extent(renderer).contains(b.x0 + 1, b.y0 + 1) for b in boxes)  # inside the panel
        ticks = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
        ticks = [b for b in ticks if ax.get_window_extent(renderer).x0 - 5 <= b.x0 <= ax.get_window_extent(renderer).x1]
        assert len(ticks) >= 2 and not any(a.overlaps(b) for i, a in enumerate(ticks) for b in ticks[i + 1 :])
        assert all("$" not in t.get_text() for t in ax.get_xticklabels())  # plain numbers, not 10^k mathtext


def test_sweep_panels_mark_the_source_setting():
    from types import SimpleNamespace

    def point(value, f1):
        scores = SimpleNamespace(f1=f1)
        return SimpleNamespace(value=value, member_f1=np.array([f1, f1]), ensemble=scores, classical=scores, mean_mutual_information=0.01)

    points = {"dose": [point(v, 1 - k / 10) for k, v in enumerate((3e5, 1e5, 1e4))], "defocus": [point(v, 1 - k / 10) for k, v in enumerate((0, 30, 60))]}
    for quantity in ("f1", "mi"):
        fig = viz.plot_sweeps(points, {"dose": "e/Å²", "defocus": "Å"}, quantity)
        for ax, source in zip(fig.axes, (3e5, 0)):
            marker = [t for t in ax.texts if t.get_text() == "source"]
            assert len(marker) == 1 and marker[0].xy[0] == source
            assert any(np.allclose(line.get_xdata(), source) and line.get_linestyle() == ":" for line in ax.get_lines())
