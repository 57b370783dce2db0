import json
import pickle

import numpy as np
import pytest
import torch

from elit_utils import ensemble as ens
from elit_utils.augment import Augmentation, augment_batch
from elit_utils.unet import PackedUnet, UnetArchitecture

TINY = UnetArchitecture(nb_filters=4)
FAST = ens.TrainingConfig(n_iterations=3, batch_size=2, swa_iterations=2, precision="fp32")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = rng.random((6, 32, 32)).astype(np.float32)
    return images, images > 0.9


def _train(folder, data, n=2, **kwargs):
    images, masks = data
    return ens.train_ensemble(
        images, masks, folder, n_members=n, sampling_A_per_px=0.1, architecture=TINY, config=kwargs.pop("config", FAST), progress=False, **kwargs
    )


def test_packed_members_equal_separate_atomai_unets():
    seeds = [3, 7]
    packed = PackedUnet.from_seeds(seeds, TINY).eval()
    x = torch.rand(2, 2, 32, 32)
    with torch.no_grad():
        out = packed(x)
        for index, seed in enumerate(seeds):
            single = TINY.atomai_unet(seed).eval()
            torch.testing.assert_close(out[:, index], single(x[:, index : index + 1]), atol=1e-5, rtol=1e-4)
            assert set(packed.member_state_dict(index)) == set(single.state_dict())


def test_members_differ_only_by_seed(tmp_path, data):
    ensemble = _train(tmp_path / "a", data)
    record = ensemble.record["members"]
    assert [record[k]["seed"] for k in sorted(record)] == [0, 1]
    first, second = record["0"], record["1"]
    assert {k: v for k, v in first.items() if k not in ("seed", "loss_history", "seconds", "versions")} == {
        k: v for k, v in second.items() if k not in ("seed", "loss_history", "seconds", "versions")
    }
    prediction = ensemble.predict(data[0][0])
    assert not np.allclose(prediction.members[0], prediction.members[1])
    assert ensemble.loss_histories().shape == (FAST.n_iterations, 2)


def test_same_seed_same_weights_on_cpu(tmp_path, data):
    a = _train(tmp_path / "a", data).predict(data[0][:2])
    b = _train(tmp_path / "b", data).predict(data[0][:2])
    np.testing.assert_array_equal(a.members, b.members)


def test_interrupted_training_resumes_without_retraining(tmp_path, data, monkeypatch):
    folder = tmp_path / "run"
    real_train_pack = ens._train_pack
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train_pack(*args, **kwargs)

    monkeypatch.setattr(ens, "_train_pack", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _train(folder, data, n=3)
    assert sorted(p.name for p in folder.iterdir()) == ["ensemble.json", "member_0000.json", "member_0000.safetensors"]
    finished = (folder / "member_0000.safetensors").read_bytes()
    calls.clear()
    monkeypatch.setattr(ens, "_train_pack", lambda *a, **k: (calls.append(a[2]), real_train_pack(*a, **k))[1])
    resumed = _train(folder, data, n=3)
    assert calls == [[1], [2]]  # member 0 was not retrained
    assert (folder / "member_0000.safetensors").read_bytes() == finished
    assert resumed.n_members == 3


def test_a_folder_of_another_configuration_is_refused_untouched(tmp_path, data):
    folder = tmp_path / "run"
    _train(folder, data)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    other = ens.TrainingConfig(n_iterations=4, batch_size=2, swa_iterations=2, precision="fp32")
    with pytest.raises(ValueError, match="different configuration.*training"):
        _train(folder, data, config=other)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_mismatched_member_is_refused(tmp_path, data):
    _train(tmp_path / "small", data)
    images, masks = data
    ens.train_ensemble(images, masks, tmp_path / "big", 1, 0.1, UnetArchitecture(nb_filters=8), FAST, first_seed=5, progress=False)
    for suffix in (".json", ".safetensors"):  # a member of another architecture slipped into the folder
        (tmp_path / "small" / f"member_0005{suffix}").write_bytes((tmp_path / "big" / f"member_0005{suffix}").read_bytes())
    with pytest.raises(ValueError, match="member_0005.json: architecture"):
        ens.Ensemble.load(tmp_path / "small")
    record = json.loads((tmp_path / "small" / "member_0005.json").read_text())
    record["architecture"] = TINY.as_dict()  # the record lies; the tensors still do not fit
    (tmp_path / "small" / "member_0005.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="does not fit the ensemble's architecture"):
        ens.Ensemble.load(tmp_path / "small")


def test_loading_never_unpickles(tmp_path, data, monkeypatch):
    _train(tmp_path / "run", data)

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling was attempted")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    assert ens.Ensemble.load(tmp_path / "run").n_members == 2
    assert not list((tmp_path / "run").glob("*.pt*")) and not list((tmp_path / "run").glob("*.pkl"))


def test_prediction_maps_and_their_relations(tmp_path, data):
    prediction = _train(tmp_path / "run", data).predict(data[0][:3])
    assert prediction.mean.shape == (3, 32, 32) and prediction.members.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(prediction.mean, prediction.members.mean(axis=0), atol=1e-6)
    assert (prediction.mutual_information >= 0).all() and (prediction.mutual_information <= prediction.entropy + 1e-6).all()


def test_tiled_prediction_matches_whole_frame(tmp_path, data):
    ensemble = _train(tmp_path / "run", data)
    frame = np.random.default_rng(1).random((72, 88)).astype(np.float32)
    whole = ensemble.predict(frame, tile_px=512)
    tiled = ensemble.predict(frame, tile_px=48, overlap_px=16)
    assert tiled.mean.shape == (72, 88)
    assert np.abs(tiled.mean - whole.mean)[8:-8, 8:-8].mean() < 0.05


def test_resampling_returns_maps_in_the_input_pixels(tmp_path, data):
    ensemble = _train(tmp_path / "run", data)
    frame = np.random.default_rng(2).random((50, 60)).astype(np.float32)
    prediction = ensemble.predict(frame, sampling_A_per_px=0.05)
    assert prediction.mean.shape == (50, 60) and prediction.sampling_A_per_px == 0.05


@pytest.mark.parametrize(
    ("images", "message"),
    [(np.zeros((4, 4)), "image"), (np.full((8, 8), np.nan), "NaN"), (np.zeros((1, 2, 8, 8)), "shape")],
)
def test_bad_prediction_input(tmp_path, data, images, message):
    ensemble = _train(tmp_path / "run", data)
    with pytest.raises(ValueError, match=message):
        ensemble.predict(images if images.ndim != 2 or images.shape != (4, 4) else np.zeros((1, 2, 3, 4, 5)))


def test_bad_training_input(tmp_path, data):
    images, masks = data
    with pytest.raises(ValueError, match="multiples of 8"):
        ens.train_ensemble(images[:, :30, :30], masks[:, :30, :30], tmp_path, 1, 0.1, TINY, FAST, progress=False)
    with pytest.raises(ValueError, match="equal in shape"):
        ens.train_ensemble(images, masks[:3], tmp_path, 1, 0.1, TINY, FAST, progress=False)
    with pytest.raises(ValueError, match="nm/px"):
        ens.train_ensemble(images, masks, tmp_path, 1, 0.001, TINY, FAST, progress=False)
    with pytest.raises(ValueError, match="loss"):
        ens.TrainingConfig(loss="mse")


def test_augmentation_keeps_masks_on_the_atoms():
    images = torch.zeros(8, 1, 32, 32)
    images[:, :, 10:14, 18:22] = 1.0
    masks = (images > 0.5).float()
    aug = Augmentation(blur_sigma_px=(0, 0), poisson_counts=(1e5, 1e5), gaussian_noise=(0, 0), background_slope=0)
    out_images, out_masks = augment_batch(images, masks, aug, torch.Generator().manual_seed(1))
    for image, mask in zip(out_images[:, 0], out_masks[:, 0]):
        assert mask.sum() > 0 and image[mask.bool()].mean() > 0.8 > image[~mask.bool()].mean()


def test_uncertainty_is_zero_when_members_agree():
    agree = ens.uncertainty_maps(np.full((4, 5, 5), 0.8))
    assert np.allclose(agree.variance, 0) and np.allclose(agree.mutual_information, 0, atol=1e-6)
    split = ens.uncertainty_maps(np.stack([np.zeros((5, 5)), np.ones((5, 5))]))
    assert np.allclose(split.mutual_information, np.log(2), atol=1e-4)


def test_fine_tuning_can_keep_batch_norm_statistics(data):
    images, masks = data
    x = torch.from_numpy(images)[:, None]
    y = torch.from_numpy(masks.astype(np.float32))[:, None]
    start = PackedUnet.from_seeds([0], TINY).member_state_dict(0)
    frozen, _, _ = ens._train_pack(x, y, [0], TINY, FAST, torch.device("cpu"), False, [start], freeze_batch_norm=True)
    moving, _, _ = ens._train_pack(x, y, [0], TINY, FAST, torch.device("cpu"), False, [start], freeze_batch_norm=False)
    key = "c1.block.2.running_mean"
    torch.testing.assert_close(frozen.member_state_dict(0)[key], start[key])
    assert not torch.allclose(moving.member_state_dict(0)[key], start[key])
    assert not torch.allclose(frozen.member_state_dict(0)["c1.block.0.weight"], start["c1.block.0.weight"])  # weights still learn
