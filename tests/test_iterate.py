import dataclasses
import json

import numpy as np
import pytest

from elit_utils import iterate
from elit_utils.ensemble import Ensemble, uncertainty_maps
from elit_utils.simulate import dataset
from tests.conftest import tiny_ensemble

FAST = iterate.AdaptConfig(rounds=2, iterations_per_round=2, batch_size=2, stop_change=0.0)


@pytest.fixture(scope="module")
def setup_data(tmp_path_factory):
    source = dataset("source", n=4, seed=0, image_size_px=32, cache=False)
    model = tiny_ensemble(tmp_path_factory.mktemp("model"), 2, precision="fp32")
    target = dataset("low_dose", n=2, seed=1, image_size_px=40, cache=False)
    return model, source, target


def test_pseudo_labels_keep_confident_atoms_and_mask_the_rest():
    members = np.zeros((3, 30, 30))
    members[:, 4:8, 4:8] = 0.95  # all members agree: a label
    members[0, 18:22, 18:22] = 0.95  # one member only: uncertain, left out of the loss
    members[:, 12, 25] = 0.3  # a faint blob nobody claims: left out too
    prediction = uncertainty_maps(members, 0.1)
    mask, weight, count = iterate.pseudo_labels(prediction, iterate.AdaptConfig(confident_mi_nats=0.1), 0.1)
    assert count == 1 and mask[5, 5] and not mask[19, 19]
    assert not weight[19, 19] and not weight[12, 25] and weight[28, 2] and weight[5, 5]
    paper = iterate.AdaptConfig(mask_uncertain=False, threshold=0.25)
    paper_mask, paper_weight, paper_count = iterate.pseudo_labels(prediction, paper, 0.1)
    assert paper_count == 3 and paper_mask[19, 19] and paper_weight.all()  # the paper's scheme: every blob above the threshold is a label


def test_adapt_writes_rounds_and_history_and_resumes(setup_data, tmp_path, monkeypatch):
    model, source, target = setup_data
    truth = [target.coordinates(i)[:, :2] for i in range(len(target))]
    result = iterate.adapt(model, target.images, 0.1, tmp_path, FAST, truth=truth, source=(source.images, source.atom_mask), progress=False)
    assert [row["round"] for row in result.history] == [0, 1, 2]
    assert {"mean_mi_nats", "f1", "pseudo_labels", "agreement_with_previous"} <= set(result.history[1])
    assert json.loads((tmp_path / "history.json").read_text()) == json.loads(json.dumps(result.history))
    assert (tmp_path / "history.csv").read_text().startswith("round,")
    saved = {p.name: p.read_bytes() for p in (tmp_path / "round_1").iterdir()}
    calls = []
    real = iterate._train_pack
    monkeypatch.setattr(iterate, "_train_pack", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    again = iterate.adapt(model, target.images, 0.1, tmp_path, FAST, truth=truth, source=(source.images, source.atom_mask), progress=False)
    assert calls == []  # both rounds were on disk: nothing was retrained
    assert {p.name: p.read_bytes() for p in (tmp_path / "round_1").iterdir()} == saved
    assert [row["f1"] for row in again.history] == pytest.approx([row["f1"] for row in result.history])


def test_stopping_rule_ends_early(setup_data, tmp_path):
    model, _, target = setup_data
    lenient = iterate.AdaptConfig(rounds=4, iterations_per_round=1, batch_size=2, stop_change=1.0)  # any round counts as "no change"
    result = iterate.adapt(model, target.images, 0.1, tmp_path, lenient, progress=False)
    assert len(result.history) == 3 and "stopped" in result.history[-1]  # the rule is first checked after round 2
    strict = iterate.AdaptConfig(rounds=3, iterations_per_round=1, batch_size=2, stop_change=0.0)
    assert "stopped" not in iterate.adapt(model, target.images, 0.1, tmp_path / "strict", strict, progress=False).history[-1]


def test_unknown_pixel_size_is_refused(setup_data, tmp_path):
    model, _, target = setup_data
    with pytest.raises(ValueError, match="pixel size is unknown"):
        iterate.adapt(model, target.images, None, tmp_path, FAST, progress=False)
    with pytest.raises(ValueError, match="NaN"):
        iterate.adapt(model, np.full((1, 32, 32), np.nan), 0.1, tmp_path, FAST, progress=False)


def test_baselines_run_in_the_same_harness(setup_data, tmp_path):
    model, source, target = setup_data
    truth = [target.coordinates(i)[:, :2] for i in range(len(target))]
    histories = iterate.compare_with_baselines(
        model, target.images, 0.1, tmp_path, FAST, truth, (source.images, source.atom_mask), true_masks=target.atom_mask, progress=False
    )
    assert set(histories) == {"uncertainty-masked", "paper (threshold 0.5)", "single network", "no adaptation", "true labels"} == set(iterate.METHODS)
    assert histories["no adaptation"] == histories[iterate.MASKED][:1]
    assert all("f1" in row for rows in histories.values() for row in rows)
    paper = json.loads((iterate.round_folder(tmp_path, iterate.PAPER, 1) / "ensemble.json").read_text())
    assert paper["training"]["adapt"]["mask_uncertain"] is False and paper["training"]["adapt"]["threshold"] == iterate.PAPER_THRESHOLD
    assert Ensemble.load(iterate.round_folder(tmp_path, "single network", 1)).n_members == 1
    assert histories["true labels"][-1]["round"] == FAST.rounds


def test_a_round_written_out_is_the_harness_round_one(setup_data, tmp_path, monkeypatch):
    """fine_tune into round_folder(out) does what adapt's round 1 does, so the harness loads it instead of training again."""
    model, source, target = setup_data
    one = dataclasses.replace(FAST, rounds=1)
    labels = [iterate.pseudo_labels(model.predict(frame), one, 0.1) for frame in target.images]
    tuned = iterate.fine_tune(model, target.images, labels, iterate.round_folder(tmp_path), one, (source.images, source.atom_mask), progress=False)
    assert tuned.n_members == model.n_members
    calls = []
    real = iterate._train_pack
    monkeypatch.setattr(iterate, "_train_pack", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    histories = iterate.compare_with_baselines(
        model, target.images, 0.1, tmp_path, one, None, (source.images, source.atom_mask), methods=(iterate.MASKED,), progress=False
    )
    assert calls == [] and len(histories[iterate.MASKED]) == 2
    with pytest.raises(ValueError, match="2 frames but 1 labels"):
        iterate.fine_tune(model, target.images, labels[:1], tmp_path / "other", one, progress=False)


def test_method_names_agree_everywhere():
    from elit_utils.config import PROFILES
    from elit_utils.viz import METHOD_STYLES

    assert set(METHOD_STYLES) == set(iterate.METHODS)
    assert f"paper (threshold {iterate.PAPER_THRESHOLD:g})" == iterate.PAPER and iterate.AdaptConfig().threshold == iterate.PAPER_THRESHOLD
    for profile in PROFILES.values():
        assert iterate.MASKED in profile.adapt_methods and set(profile.adapt_methods) <= set(iterate.METHODS)


def test_subset_keeps_the_first_members(setup_data):
    model, _, _ = setup_data
    assert model.subset(1).seeds == model.seeds[:1]
    with pytest.raises(ValueError, match="between 1 and 2"):
        model.subset(3)


def test_frames_of_different_sizes_need_one_pixel_size_each():
    rng = np.random.default_rng(0)
    frames, samplings = iterate._checked_frames([rng.random((32, 32)), rng.random((40, 24))], [0.1, 0.08])
    assert [f.shape for f in frames] == [(32, 32), (40, 24)] and samplings == [0.1, 0.08]
    assert iterate._checked_frames(rng.random((3, 16, 16)), 0.1)[1] == [0.1] * 3
    with pytest.raises(ValueError, match="2 frames but 1 pixel sizes"):
        iterate._checked_frames([rng.random((8, 8))] * 2, [0.1])
    with pytest.raises(ValueError, match="pixel size is unknown"):
        iterate._checked_frames([rng.random((8, 8))] * 2, [0.1, None])
    with pytest.raises(ValueError, match="frame 1 must be a finite 2D image"):
        iterate._checked_frames([rng.random((8, 8)), rng.random((2, 8, 8))], 0.1)
    with pytest.raises(ValueError, match="no frames"):
        iterate._checked_frames([], 0.1)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rounds", 0, "rounds=0 must be a whole number >= 1"),
        ("iterations_per_round", 0, "iterations_per_round=0 must be a whole number >= 1"),
        ("batch_size", 2.5, "batch_size=2.5 must be a whole number"),
        ("source_fraction", 1, "source_fraction=1 must be a share from 0 up to"),
        ("source_fraction", -0.1, "source_fraction"),
        ("threshold", 1.0, "threshold=1.0 must be a probability strictly between 0 and 1"),
        ("confident_mi_nats", 0.8, "ln 2"),
        ("learning_rate", 0.0, "learning_rate=0.0"),
        ("mask_radius_A", float("nan"), "mask_radius_A=nan"),
        ("stop_change", -1, "stop_change"),
        ("background_probability", 0.6, "background_probability=0.6 must be below threshold=0.5"),
        ("min_prominence", 1.0, "min_prominence"),
        ("mask_uncertain", "yes", "mask_uncertain='yes' must be True or False"),
    ],
)
def test_adapt_config_checks_every_field(field, value, message):
    from elit_utils.errors import BadValueError

    with pytest.raises(BadValueError, match=message) as caught:
        iterate.AdaptConfig(**{field: value})
    assert "\n" not in str(caught.value)


def test_bad_starts_are_refused_before_any_folder_is_claimed(setup_data, tmp_path):
    from elit_utils.errors import BadImageError, BadValueError

    model, source, target = setup_data
    out = tmp_path / "adapt"
    with pytest.raises(BadImageError, match=r"frame 0 is 8x8 px at the ensemble's pixel size .* at least 32 px"):
        iterate.adapt(model, np.random.default_rng(0).random((1, 8, 8)), 0.1, out, FAST, progress=False)
    with pytest.raises(BadImageError, match="frame 0 is 20x20 px"):  # 40 px at 0.05 A/px is 20 px at the model's 0.1 A/px
        iterate.adapt(model, target.images[:1], 0.05, out, FAST, progress=False)
    with pytest.raises(BadImageError, match="constant"):
        iterate.adapt(model, np.zeros((1, 40, 40)), 0.1, out, FAST, progress=False)
    with pytest.raises(BadImageError, match="RGB"):
        iterate.adapt(model, [np.random.default_rng(0).random((40, 40, 3))], 0.1, out, FAST, progress=False)
    with pytest.raises(BadValueError, match="tile_px=100 must be a multiple of 8"):
        dataclasses.replace(FAST, tile_px=100)
    with pytest.raises(BadImageError, match="source must be"):
        iterate.adapt(model, target.images, 0.1, out, FAST, source=(source.images, source.atom_mask[:2]), progress=False)
    assert not out.exists()


def test_a_failed_round_does_not_block_a_corrected_rerun(setup_data, tmp_path, monkeypatch):
    model, _, target = setup_data
    real = iterate._train_pack

    def crash(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(iterate, "_train_pack", crash)
    with pytest.raises(RuntimeError):
        iterate.adapt(model, target.images, 0.1, tmp_path, FAST, progress=False)
    assert (tmp_path / "round_1" / "ensemble.json").exists()  # claimed, but no member finished
    monkeypatch.setattr(iterate, "_train_pack", real)
    other = iterate.AdaptConfig(rounds=1, iterations_per_round=3, batch_size=2, stop_change=0.0)  # corrected settings
    result = iterate.adapt(model, target.images, 0.1, tmp_path, other, progress=False)
    assert result.ensemble.record["training"]["adapt"]["iterations_per_round"] == 3
    assert Ensemble.load(tmp_path / "round_1").n_members == 2
