import numpy as np
import pytest

from elit_utils import ood
from elit_utils.simulate import DOMAINS
from tests.conftest import tiny_ensemble


def test_auroc_known_values():
    assert ood.auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert ood.auroc(np.array([0.9, 0.8, 0.1]), np.array([0, 0, 1])) == 0.0
    assert ood.auroc(np.array([1.0, 1.0, 1.0, 1.0]), np.array([0, 1, 0, 1])) == 0.5
    assert np.isnan(ood.auroc(np.array([0.1, 0.2]), np.array([1, 1])))
    rng = np.random.default_rng(0)
    scores, labels = rng.random(2000), rng.random(2000) < 0.3
    assert ood.auroc(scores, labels) == pytest.approx(0.5, abs=0.04)  # random scores: chance


def test_auroc_matches_the_pairwise_definition():
    rng = np.random.default_rng(1)
    scores, labels = rng.integers(0, 5, 60).astype(float), rng.random(60) < 0.4
    pos, neg = scores[labels], scores[~labels]
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert ood.auroc(scores, labels) == pytest.approx(pairwise)


def test_auroc_matches_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    scores, labels = rng.integers(0, 20, 5000) / 20, rng.random(5000) < 0.2
    assert ood.auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_calibration_of_a_calibrated_and_an_overconfident_predictor():
    rng = np.random.default_rng(2)
    probability = rng.random(200_000)
    calibrated = rng.random(200_000) < probability
    assert ood.expected_calibration_error(probability, calibrated) < 0.01
    overconfident = np.where(probability > 0.5, 1.0, 0.0)  # says 0 or 1, right 75 % of the time
    assert ood.expected_calibration_error(overconfident, calibrated) == pytest.approx(0.25, abs=0.01)
    mean_p, frequency, counts = ood.reliability_curve(probability, calibrated, n_bins=5)
    assert len(mean_p) == 5 and counts.sum() == 200_000 and np.allclose(mean_p, frequency, atol=0.01)


def test_risk_coverage_keeps_the_most_certain_first():
    uncertainty = np.array([0.5, 0.1, 0.9, 0.2])
    correct = np.array([1, 1, 0, 1])
    _, precision = ood.risk_coverage(uncertainty, correct, np.array([0.5, 0.75, 1.0]))
    assert precision.tolist() == [1.0, 1.0, 0.75]


def test_shifted_domains_change_only_their_axis():
    source = DOMAINS["source"]
    low = ood.shifted_domain("dose", 1e4)
    assert low.conditions.dose_e_per_A2 == 1e4 and low.sample == source.sample
    assert {k for k, v in vars(low.conditions).items() if v != getattr(source.conditions, k)} == {"dose_e_per_A2"}
    assert ood.shifted_domain("dopants", 2.0).sample.dopant_density_per_nm2 == 2.0
    halfway = ood.shifted_domain("experiment_like", 0.5)
    end = DOMAINS["experiment_like"].conditions
    assert halfway.conditions.dose_e_per_A2 == pytest.approx((source.conditions.dose_e_per_A2 + end.dose_e_per_A2) / 2)
    assert ood.shifted_domain("experiment_like", 0.0).conditions == source.conditions
    with pytest.raises(ValueError, match="Unknown sweep axis"):
        ood.shifted_domain("temperature", 1.0)


def test_every_axis_starts_at_the_source_setting():
    for axis, (_, values, _) in ood.SWEEP_AXES.items():
        start = ood.shifted_domain(axis, values[0])
        assert start.conditions == DOMAINS["source"].conditions and start.sample == DOMAINS["source"].sample, axis


def test_classical_finder_finds_simulated_atoms():
    from elit_utils.metrics import pooled_scores
    from elit_utils.simulate import dataset

    data = dataset("source", n=2, seed=3, image_size_px=96, cache=False)
    truth = [data.coordinates(i)[:, :2] for i in range(2)]
    score = {"tolerance_A": 0.5, "frame_shape": (96, 96), "border_A": 0.5}
    finder, f1 = ood.tune_classical(data.images, truth, 0.1, score)
    assert f1 > 0.9
    again = pooled_scores([ood.classical_atoms(im, 0.1, finder) for im in data.images], truth, 0.1, **score).f1
    assert again == pytest.approx(f1)


def test_sweep_bookkeeping(tmp_path):
    model = tiny_ensemble(tmp_path, 3)
    detector = ood.fit_shift_detector(model, 5, 1, 32)
    points = ood.sweep(model, "dose", n_images=2, seed=5, image_size_px=32, finder=ood.ClassicalFinder(), detector=detector, values=(3e5, 1e4))
    assert [p.value for p in points] == [3e5, 1e4]
    for point in points:
        assert len(point.members) == 3 and point.frame_shift_scores.shape == point.frame_flagged.shape == point.frame_mutual_information.shape == (2,)
        # the atoms judged for error detection are exactly those the ensemble's F1 counts
        assert len(point.atom_mutual_information) == len(point.atom_entropy) == len(point.atom_correct) == point.ensemble.n_found
        assert point.atom_correct.sum() == point.ensemble.n_matched
        # the per-frame counts behind the bootstrap add up to the pooled scores
        assert point.ensemble_counts.shape == (2, 3) and point.member_counts.shape == (3, 2, 3)
        assert point.ensemble_counts.sum(axis=0).tolist() == [point.ensemble.n_matched, point.ensemble.n_found, point.ensemble.n_true]
        assert point.member_counts[1].sum(axis=0).tolist() == [point.members[1].n_matched, point.members[1].n_found, point.members[1].n_true]
        assert point.example["image"].shape == (32, 32)
    summary = ood.summarise(points)
    assert "ensemble_ge_best_member_fraction" not in summary, "the best member is picked after the fact: retired"
    assert set(summary) >= {
        "median_member_statement",
        "ensemble_ge_median_member_fraction",
        "atom_error_auroc",
        "shift_score_auroc",
        "shift_score_auroc_mi",
    }
    assert 0 <= summary["ensemble_ge_median_member_fraction"] <= 1
    assert summary["flagged_fraction_per_point"]["dose=10000"] == points[1].frame_flagged.mean()
    low, high = summary["ensemble_minus_median_interval"]["dose=10000"]
    assert low <= points[1].ensemble.f1 - np.median(points[1].member_f1) <= high


def test_the_median_member_statement_counts_only_points_where_members_find_atoms():
    from types import SimpleNamespace

    def point(value, ensemble_f1, member_f1):
        return SimpleNamespace(axis="dose", value=value, ensemble=SimpleNamespace(f1=ensemble_f1), member_f1=np.array(member_f1))

    points = [point(1, 0.99, [0.97, 0.98, 0.98]), point(2, 0.80, [0.85, 0.86, 0.86]), point(3, 0.10, [0.30, 0.35, 0.40])]
    intervals = {"dose=1": (0.005, 0.02), "dose=2": (-0.08, -0.03), "dose=3": (-0.4, -0.1)}
    statement = ood.median_member_statement(points, intervals)
    # dose=3 is left out (median member F1 0.35 < 0.5): there every network fails
    assert statement["points"] == 2 and statement["not_worse"] == 1 and statement["clearly_worse"] == ["dose=2"]
    assert statement["clearly_better_by"] == {"dose=1": pytest.approx(0.01)} and statement["holds"] is False


def test_frame_error_estimate_ranks_frames_by_their_real_error():
    from types import SimpleNamespace

    source_dose, shifted_dose = ood.SWEEP_AXES["dose"][1][0], ood.SWEEP_AXES["dose"][1][-1]
    rng = np.random.default_rng(0)

    def point(value, entropies, matched, distances, axis="dose"):  # one frame per entry: its atoms' entropies and how many were right
        counts = np.array([[m, len(e), len(e)] for e, m in zip(entropies, matched)])
        return SimpleNamespace(
            axis=axis,
            value=value,
            atom_entropy=np.concatenate(entropies),
            ensemble_counts=counts,
            frame_shift_scores=np.array(distances, float),
            frame_mutual_information=np.array(distances, float) * 0,
        )

    source = point(source_dose, [rng.uniform(0, 0.2, 50) for _ in range(4)], [50] * 4, [1, 2, 3, 4])
    # shifted frames: the more atoms above the source's entropies, the fewer right; the distance is high for all, unordered
    entropies = [np.r_[rng.uniform(0, 0.2, 50 - k), rng.uniform(0.5, 0.7, k)] for k in (0, 5, 10, 20)]
    shifted = point(shifted_dose, entropies, [50, 45, 40, 30], [40, 10, 30, 20])
    estimate = ood.frame_error_estimates([source, shifted])
    assert 0.15 < estimate["entropy_limit_nats"] < 0.2 and estimate["frames"] == 8
    ranks = estimate["rank_correlation_with_error"]
    assert ranks["uncertain atom share"] > 0.9 > ranks["feature distance"]
    assert np.isnan(ranks["mean MI"])  # a constant estimate ranks nothing
    assert estimate["rank_correlation_with_error_per_axis"] == {"dose": pytest.approx(ranks, nan_ok=True)}
    # a contamination point where the most uncertain frames are the right ones: ranked apart, per axis
    backwards = point(0.6, entropies, [30, 40, 45, 50], [1, 1, 1, 1], axis="contamination")
    per_axis = ood.frame_error_estimates([source, shifted, backwards])["rank_correlation_with_error_per_axis"]
    assert per_axis["contamination"]["uncertain atom share"] < -0.9 and per_axis["dose"]["uncertain atom share"] > 0.9


def test_bootstrap_interval_separates_a_real_difference_from_luck():
    rng = np.random.default_rng(4)
    true = np.full(30, 100)
    members = np.stack([np.column_stack([rng.binomial(100, 0.90, 30), true, true]) for _ in range(5)])
    better = np.column_stack([rng.binomial(100, 0.97, 30), true, true])  # 7 points of recall more, every frame
    alike = members[2]
    low, high = ood.ensemble_minus_median_interval(better, members)
    assert 0 < low < 0.07 < high
    low, high = ood.ensemble_minus_median_interval(alike, members)
    assert low <= 0 <= high


def test_shift_detector_matches_scikit_learn_and_flags_far_frames():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(1)
    reference = rng.normal(size=(30, 8))
    detector = ood.ShiftDetector.fit(reference)
    fresh, far = rng.normal(size=(400, 8)), rng.normal(loc=3.0, size=(5, 8))
    assert np.allclose(detector.score(far) ** 2, LedoitWolf().fit(reference).mahalanobis(far))
    assert detector.flags(far).all() and 0.01 < detector.flags(fresh).mean() < 0.15  # about the 5 % false alarms asked for
    folds = np.array_split(np.arange(30), 8)  # each fold scored by a detector fitted on the other frames
    held_out = np.concatenate([ood.ShiftDetector.fit(np.delete(reference, fold, 0)).score(reference[fold]) for fold in folds])
    assert detector.limit == pytest.approx(np.quantile(held_out, 0.95))
    assert ood.ShiftDetector.fit(reference, false_alarm_rate=0.5).limit == pytest.approx(np.median(held_out))
    with pytest.raises(ValueError, match="another ensemble"):
        detector.score(rng.normal(size=(2, 9)))
    with pytest.raises(ValueError, match="at least 4"):
        ood.ShiftDetector.fit(reference[:3])
    with pytest.raises(ValueError, match="NaN"):
        ood.ShiftDetector.fit(np.where(reference > 2, np.nan, reference))
    with pytest.raises(ValueError, match="false_alarm_rate"):
        ood.ShiftDetector.fit(reference, false_alarm_rate=0.0)


def test_shift_detector_saves_and_loads_without_pickle(tmp_path):
    from safetensors.numpy import save_file

    detector = ood.ShiftDetector.fit(np.random.default_rng(2).normal(size=(12, 5)))
    detector.save(tmp_path / ood.SHIFT_DETECTOR_FILE)
    loaded = ood.ShiftDetector.load(tmp_path / ood.SHIFT_DETECTOR_FILE)
    assert loaded.limit == detector.limit and np.array_equal(loaded.precision_matrix, detector.precision_matrix)
    save_file({"weight": np.zeros(3)}, str(tmp_path / "member.safetensors"))
    with pytest.raises(ValueError, match="not a shift detector"):
        ood.ShiftDetector.load(tmp_path / "member.safetensors")


def test_ensemble_features_summarise_frames_of_any_size_and_pixel_size(tmp_path):
    model = tiny_ensemble(tmp_path, 2)
    channels = 8 * model.record["architecture"]["nb_filters"]
    rng = np.random.default_rng(0)
    frames = rng.random((3, 40, 40)).astype(np.float32)
    features = model.features(frames, sampling_A_per_px=model.sampling_A_per_px)
    assert features.shape == (3, 2 * channels) and np.isfinite(features).all()
    assert np.allclose(model.features(frames[1]), features[1], atol=1e-4)  # one frame alone, same answer
    coarse = model.features(frames[:1], sampling_A_per_px=2 * model.sampling_A_per_px)  # resampled to 80 px first
    assert coarse.shape == (1, 2 * channels) and not np.allclose(coarse, features[:1], atol=1e-3)
    tiled = model.features(rng.random((100, 100)).astype(np.float32), tile_px=48)
    assert tiled.shape == (1, 2 * channels)
    with pytest.raises(ValueError, match="NaN"):
        model.features(np.full((16, 16), np.nan))


def test_site_uncertainty_marks_found_atoms_and_their_kinds():
    from elit_utils.ensemble import uncertainty_maps

    true_atoms = np.array([[30.0, 30.0, 0], [30.0, 60.0, 1], [60.0, 45.0, 0], [2.0, 45.0, 0]])
    members = np.full((2, 100, 90), 0.01)
    for r, c, _ in true_atoms[:3]:
        members[:, int(r) - 2 : int(r) + 3, int(c) - 2 : int(c) + 3] = 0.9
    members[1, 58:63, 43:48] = 0.3  # members disagree on the third atom
    sites = ood.site_uncertainty(uncertainty_maps(members, 0.1), true_atoms)
    assert sites["kind"].tolist() == ["C, under-coordinated", "Si dopant", "C, under-coordinated", "near the frame edge"]
    assert sites["found"].tolist() == [True, True, True, False]
    assert np.isnan(sites["entropy"][3]) and sites["mutual_information"][2] > sites["mutual_information"][0]


def test_threshold_for_precision_keeps_the_largest_safe_set():
    rng = np.random.default_rng(0)
    uncertainty = rng.random(200)
    correct = uncertainty < 0.6  # every atom above 0.6 is wrong
    limit = ood.threshold_for_precision(uncertainty, correct, 1.0)
    assert limit == uncertainty[correct].max()
    assert ood.threshold_for_precision(np.array([0.1, 0.5]), np.array([0, 1]), 0.9) == -np.inf


def test_a_damaged_detector_file_is_refused_naming_it(tmp_path, monkeypatch):
    import pickle

    from elit_utils import ensemble
    from elit_utils.errors import BadModelFolderError

    assert ood.SHIFT_DETECTOR_FILE == ensemble.SHIFT_DETECTOR_FILE  # the file a resize deletes is the one predict reads
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickling was attempted"))
    path = tmp_path / ood.SHIFT_DETECTOR_FILE
    good = ood.ShiftDetector(np.zeros(3), np.eye(3), 2.0, {"0": "a" * 64})
    good.save(path)
    whole = path.read_bytes()
    for damaged in (b"", whole[: len(whole) // 2], pickle.dumps({"mean": np.zeros(3)}), np.random.default_rng(0).bytes(500)):
        path.write_bytes(damaged)
        with pytest.raises(BadModelFolderError, match=r"shift_detector.safetensors is not a readable shift detector .*refit") as caught:
            ood.ShiftDetector.load(path)
        assert "\n" not in str(caught.value)


def test_a_detector_records_the_members_it_was_fitted_on(tmp_path, capsys):
    model = tiny_ensemble(tmp_path / "model", 2)
    detector = ood.fit_shift_detector(model, 5, 1, 32)
    assert detector.members == ood.member_fingerprint(model) == {str(s): model.weights_sha256[s] for s in (0, 1)}
    path = tmp_path / "model" / ood.SHIFT_DETECTOR_FILE
    detector.save(path)
    assert ood.ShiftDetector.load(path).members == detector.members  # checked against the ensemble.json beside it
    ood.ShiftDetector.load(path, ensemble=model)
    with pytest.raises(ValueError, match="fitted on other members"):
        ood.ShiftDetector.load(path, ensemble=model.subset(1))
    old = ood.ShiftDetector(detector.mean, detector.precision_matrix, detector.limit)  # written before detectors recorded members
    old.save(path)
    assert ood.ShiftDetector.load(path).members is None
    assert "does not record the members it was fitted on" in capsys.readouterr().out


def test_cached_sweeps_are_stored_as_plain_arrays_and_reused(tmp_path, monkeypatch):
    import dataclasses
    import json
    import pickle

    from elit_utils.cache import cache_dir
    from elit_utils.config import PROFILES, to_jsonable

    model = tiny_ensemble(tmp_path / "model", 2)
    detector = ood.fit_shift_detector(model, 5, 1, 32)
    profile = dataclasses.replace(PROFILES["smoke"], image_size_px=32, n_ood_images_per_point=2)
    finder = ood.ClassicalFinder()

    def same(a, b):  # detection scores equal, nan (no matches: no position error) equal to nan
        return np.array_equal([dataclasses.astuple(x) for x in a], [dataclasses.astuple(x) for x in b], equal_nan=True)

    first = ood.cached_sweeps(model, profile, 0, finder, detector, axes=("dose", "drift"))
    # the same points as a plain sweep from the documented seed
    direct = ood.sweep(model, "drift", 2, ood.sweep_seed(0, "drift"), 32, finder, detector)
    assert list(first) == ["dose", "drift"] and [p.value for p in first["dose"]] == list(ood.SWEEP_AXES["dose"][1])
    for stored, fresh in zip(first["drift"], direct):
        assert same([stored.ensemble, stored.classical], [fresh.ensemble, fresh.classical]) and same(stored.members, fresh.members)
        assert np.array_equal(stored.atom_entropy, fresh.atom_entropy) and np.array_equal(stored.frame_shift_scores, fresh.frame_shift_scores)
        assert stored.example.keys() == fresh.example.keys() and np.array_equal(stored.example["image"], fresh.example["image"])
    entries = sorted((cache_dir() / "sweeps").glob("*.npz"))
    assert len(entries) == 1 and entries[0].with_suffix(".json").exists()
    # read back without unpickling and without sweeping again
    with monkeypatch.context() as patch:
        patch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickling was attempted"))
        patch.setattr(ood, "sweep", lambda *a, **k: pytest.fail("the cached sweeps were recomputed"))
        again = ood.cached_sweeps(model, profile, 0, finder, detector, axes=("dose", "drift"))
    assert same([again["dose"][1].ensemble], [first["dose"][1].ensemble]) and again["dose"][1].example.keys() == first["dose"][1].example.keys()
    assert np.array_equal(again["dose"][1].member_counts, first["dose"][1].member_counts)
    summaries = [json.dumps(to_jsonable(ood.summarise([p for ps in sweeps.values() for p in ps])), sort_keys=True) for sweeps in (first, again)]
    assert summaries[0] == summaries[1]
    # another seed, finder, detector, scoring or ensemble is another entry
    ood.cached_sweeps(model, profile, 1, finder, detector, axes=("dose",))
    ood.cached_sweeps(model.subset(1), profile, 0, finder, ood.fit_shift_detector(model.subset(1), 5, 1, 32), axes=("dose",))
    ood.cached_sweeps(model, profile, 0, finder, detector, tolerance_A=0.4, axes=("dose",))
    ood.cached_sweeps(model, profile, 0, ood.ClassicalFinder(smoothing_A=0.2), detector, axes=("dose",))
    assert len(list((cache_dir() / "sweeps").glob("*.npz"))) == 5


def test_sweep_table_lists_every_point_with_its_interval(tmp_path):
    model = tiny_ensemble(tmp_path, 2)
    points = {"dose": ood.sweep(model, "dose", 2, 5, 32, ood.ClassicalFinder(), None, values=(3e5, 1e4))}  # no detector: no shift scores
    assert np.isnan(points["dose"][1].frame_shift_scores).all() and not points["dose"][1].frame_flagged.any()
    summary = ood.summarise(points["dose"])
    plain, full = ood.sweep_table(points).data.splitlines(), ood.sweep_table(points, summary).data.splitlines()
    assert len(plain) == len(full) == 4 and plain[0].count("|") == 7 and full[0].count("|") == 9
    assert f"{points['dose'][1].ensemble.f1:.3f}" in plain[3] and full[3].split("|")[-2].strip() in ("better", "worse", "tie")


def test_findings_are_sentences_made_from_the_measured_values():
    from types import SimpleNamespace as Point

    def point(axis, value, ens, members, classical, n_wrong=0):
        correct = np.r_[np.zeros(n_wrong, bool), np.ones(20, bool)]
        return Point(axis=axis, value=value, ensemble=Point(f1=ens), member_f1=np.array(members), classical=Point(f1=classical),
                     atom_entropy=np.r_[np.ones(n_wrong), np.zeros(20)], atom_correct=correct)  # fmt: skip

    points = {
        "dose": [point("dose", 3e5, 1.0, [1.0, 1.0, 1.0], 1.0), point("dose", 1e4, 0.8, [0.7, 0.9, 0.85], 0.9, n_wrong=12)],
        "sampling": [point("sampling", 0.1, 1.0, [1.0, 1.0, 1.0], 1.0), point("sampling", 0.25, 1.0, [1.0, 0.99, 1.0], 0.99, n_wrong=1)],
    }
    shifted = [ps[1] for ps in points.values()]
    assert list(ood.atoms_by_axis(shifted)) == ["dose"]  # one wrong atom is too few for an AUROC
    assert list(ood.atoms_by_axis(shifted, min_atoms=0)) == ["dose", "sampling"]
    text = ood.sweep_findings(points).data
    assert "falls by more than 0.02 along: dose (1.000 → 0.800 at worst); it stays within 0.02 of its source value along: sampling." in text
    assert "best member at 1 of 2 shifted points: sampling=0.25." in text
    assert "below its median member at: dose=10000." in text and "classical finder beats the ensemble at: dose=10000 (0.900 vs 0.800)." in text
    summary = {"atom_error_auroc": 0.9, "atom_error_auroc_mi": 0.91, "atom_error_auroc_per_axis": {"dose": 0.95}, "atom_error_auroc_mi_per_axis": {"dose": 0.7}}
    assert "about equally well" in ood.error_detection_findings(summary).data and "entropy is better along: dose;" in ood.error_detection_findings(summary).data
    rng = np.random.default_rng(0)
    p = rng.random(20_000)
    calibrated, overconfident = rng.random(20_000) < p, rng.random(20_000) < p / 2
    text = ood.calibration_findings({"source": (p, calibrated), "shifted": (p, overconfident)}).data
    assert "raises it" in text and "below the prediction in 10 of 10 filled bins" in text
