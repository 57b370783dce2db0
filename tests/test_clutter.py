"""Clutter: precision inside a region, trust regions, and the confirmation-bias study's bookkeeping."""

import numpy as np
import pytest

from elit_utils import clutter, iterate, metrics
from elit_utils.ensemble import uncertainty_maps
from elit_utils.errors import BadValueError
from elit_utils.simulate import dataset
from tests.conftest import tiny_ensemble


def test_found_in_region_counts_right_and_wrong_atoms_by_where_they_lie():
    region = np.zeros((50, 50), bool)
    region[:, 25:] = True
    true = np.array([[10.0, 10.0], [10.0, 30.0], [40.0, 40.0]])
    found = np.array([[10.0, 10.0], [10.0, 30.2], [30.0, 30.0], [40.0, 44.0]])  # right, right, invented, 0.4 A off: right
    assert metrics.found_in_region(found, true, region, 0.1) == (3, 2)  # (30, 30) is invented; (40, 44) is 4 px = 0.4 A off
    assert metrics.found_in_region(found, true, ~region, 0.1) == (1, 1)
    with pytest.raises(ValueError, match="region"):
        metrics.found_in_region(found, true, region[None], 0.1)


def _prediction(blob_members: int, seed: int = 0, n_members: int = 4) -> object:
    members = np.random.default_rng(seed).uniform(0, 0.05, (n_members, 120, 120)).astype(np.float32)  # clean background, a little noise
    members[:blob_members, 40:80, 40:80] = 0.9  # a patch that some members call an atom
    return uncertainty_maps(members, 0.1)


def test_trust_regions_flag_where_members_disagree_over_an_area():
    trust = clutter.TrustRegions.fit([_prediction(0, seed) for seed in range(3)], source_area=0.01)
    assert trust.untrusted(_prediction(0, seed=9)).mean() < 0.05  # about the fitted share of fresh clean area
    untrusted = trust.untrusted(_prediction(2))
    assert untrusted[45:75, 45:75].all()
    assert untrusted[:20].mean() < 0.05  # four smoothing widths (2 A) from the patch: clean again (false alarms aside)


def test_one_uncertain_pixel_is_not_a_region():
    members = np.full((4, 80, 80), 0.01, np.float32)
    members[:2, 40, 40] = 0.9
    noisy = [uncertainty_maps(np.clip(members + np.random.default_rng(i).uniform(0, 0.05, members.shape), 0, 1), 0.1) for i in range(2)]
    trust = clutter.TrustRegions.fit(noisy, source_area=0.01)
    patch = np.full((4, 80, 80), 0.01, np.float32)
    patch[:2, 30:50, 30:50] = 0.9
    assert trust.untrusted(uncertainty_maps(patch, 0.1)).sum() > 20 * trust.untrusted(uncertainty_maps(members, 0.1)).sum()


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"limit_nats": 0.9}, "ln 2"), ({"limit_nats": float("nan")}, "ln 2"), ({"limit_nats": 0.2, "smoothing_A": 0}, "length in A")]
)
def test_bad_trust_settings_are_refused(kwargs, message):
    with pytest.raises(BadValueError, match=message):
        clutter.TrustRegions(**kwargs)


def test_trust_regions_need_a_pixel_size_and_source_frames():
    with pytest.raises(BadValueError, match="pixel size"):
        clutter.TrustRegions(0.2).untrusted(uncertainty_maps(np.zeros((2, 8, 8))))
    with pytest.raises(BadValueError, match="at least one"):
        clutter.TrustRegions.fit([])
    with pytest.raises(BadValueError, match="share"):
        clutter.TrustRegions.fit([_prediction(0)], source_area=1.0)


def test_adaptation_history_scores_precision_inside_clutter(tmp_path):
    model = tiny_ensemble(tmp_path / "model", 2, precision="fp32")
    target = dataset("contaminated", n=2, seed=1, image_size_px=48, cache=False)
    truth = [target.coordinates(i)[:, :2] for i in range(len(target))]
    config = iterate.AdaptConfig(rounds=1, iterations_per_round=1, batch_size=2, tile_px=32)
    history = iterate.adapt(model, target.images, 0.1, tmp_path / "adapt", config, truth=truth, progress=False, clutter=list(target.clutter_mask)).history
    for row in history:
        found, right = row["found_in_clutter"], row["precision_in_clutter"]
        assert found >= 0 and (np.isnan(right) if found == 0 else 0 <= right <= 1)
    # the same count by hand, for round 0
    from elit_utils.locate import locate_atoms

    counts = [
        metrics.found_in_region(locate_atoms(model.predict(f, sampling_A_per_px=0.1), config.threshold).coordinates_px, t, c, 0.1, border_A=0.5)
        for f, t, c in zip(target.images, truth, target.clutter_mask)
    ]
    assert history[0]["found_in_clutter"] == sum(c[0] for c in counts)


def _history(f1: list[float], precision: list[float], stopped_after: int | None = None) -> list[dict]:
    rows = [{"round": r, "f1": f, "precision_in_clutter": p, "found_in_clutter": 10} for r, (f, p) in enumerate(zip(f1, precision))]
    return rows[: stopped_after + 1] if stopped_after is not None else rows


def test_study_summary_gives_intervals_and_the_paired_difference():
    results = {
        "contaminated": {
            iterate.MASKED: [_history([0.8, 0.9, 0.92], [0.5, 0.8, 0.9]), _history([0.8, 0.88, 0.9], [0.6, 0.7, 0.8], stopped_after=1)],
            iterate.PAPER: [_history([0.8, 0.85, 0.86], [0.5, 0.6, 0.6]), _history([0.8, 0.84, 0.85], [0.6, 0.5, 0.5])],
        }
    }
    summary = clutter.summarise_study(results, rounds=2)
    masked = summary["contaminated"]["methods"][iterate.MASKED]
    assert masked["f1"] == pytest.approx([0.8, 0.89, 0.90])  # the stopped repeat keeps its last value (0.88)
    low, high = masked["f1_interval"][2]
    assert low < 0.90 < high
    paired = summary["contaminated"]["masked_minus_paper"]["precision_in_clutter"]
    assert paired["per_repeat"] == pytest.approx([0.3, 0.2]) and paired["mean"] == pytest.approx(0.25)


def test_study_needs_two_repeats():
    with pytest.raises(BadValueError, match="repeats"):
        clutter.confirmation_bias_study("smoke", repeats=1)


def test_trust_regions_are_fitted_saved_and_refused_when_stale(tmp_path):
    from elit_utils.config import TRUST_REGIONS_FILE
    from elit_utils.errors import BadModelFolderError

    model = tiny_ensemble(tmp_path / "model", 2)
    trust, fitted = clutter.ensure_trust_regions(model, n_images=3, seed=5, image_size_px=48)
    assert fitted and (model.folder / TRUST_REGIONS_FILE).exists() and 0 < trust.limit_nats < np.log(2)
    again, refitted = clutter.ensure_trust_regions(model, n_images=3, seed=5, image_size_px=48)
    assert not refitted and again == trust
    other = tiny_ensemble(tmp_path / "other", 2, learning_rate=0.5)  # other weights, same seeds
    with pytest.raises(BadModelFolderError, match="stale"):
        clutter.TrustRegions.load(model.folder / TRUST_REGIONS_FILE, ensemble=other)
    (model.folder / TRUST_REGIONS_FILE).write_text("{not json")
    with pytest.raises(BadModelFolderError, match="rerun elit train"):
        clutter.TrustRegions.load(model.folder / TRUST_REGIONS_FILE)
    assert clutter.ensure_trust_regions(model, n_images=3, seed=5, image_size_px=48)[1]  # unreadable: refitted


def test_a_resize_deletes_the_trust_regions_of_the_old_members(tmp_path):
    from elit_utils.config import TRUST_REGIONS_FILE

    model = tiny_ensemble(tmp_path / "model", 2)
    clutter.ensure_trust_regions(model, n_images=2, seed=5, image_size_px=32)
    from elit_utils.ensemble import TrainingConfig, train_ensemble
    from elit_utils.unet import UnetArchitecture

    train = dataset("source", n=4, seed=0, image_size_px=32, cache=False)
    config = TrainingConfig(n_iterations=2, batch_size=2, swa_iterations=1)
    train_ensemble(train.images, train.atom_mask, model.folder, 3, 0.1, UnetArchitecture(nb_filters=4), config, progress=False, resize=True)
    assert not (model.folder / TRUST_REGIONS_FILE).exists()


def test_study_intervals_of_shares_stay_within_zero_and_one():
    results = {"contaminated": {iterate.MASKED: [_history([0.5, 0.99], [0.5, 0.98]), _history([0.5, 0.6], [0.5, 0.4])]}}
    entry = clutter.summarise_study(results, rounds=1)["contaminated"]["methods"][iterate.MASKED]
    low, high = entry["f1_interval"][1]
    assert 0.0 <= low < entry["f1"][1] < high == 1.0  # two repeats 0.39 apart: the t-interval would pass 1
