import json
import pickle

import numpy as np
import pytest
import torch

from elit_utils import ensemble as ens
from elit_utils import runtime
from elit_utils.augment import Augmentation, augment_batch
from elit_utils.errors import BadImageError, BadModelFolderError, BadValueError
from elit_utils.unet import PackedUnet, UnetArchitecture

TINY = UnetArchitecture(nb_filters=4)
FAST = ens.TrainingConfig(n_iterations=3, batch_size=2, swa_iterations=2, precision="fp32")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = rng.random((6, 32, 32)).astype(np.float32)
    return images, images > 0.9


@pytest.fixture(scope="module")
def shared(tmp_path_factory, data):
    """One trained ensemble for the tests that only predict with it."""
    return _train(tmp_path_factory.mktemp("shared") / "run", data)


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
    own = ("seed", "loss_history", "seconds", "versions", "weights_sha256")
    assert {k: v for k, v in first.items() if k not in own} == {k: v for k, v in second.items() if k not in own}
    assert first["weights_sha256"] != second["weights_sha256"] and first["precision"] == "fp32"
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
    ens.train_ensemble(images, masks, tmp_path / "big", 1, 0.1, UnetArchitecture(nb_filters=8), FAST, first_seed=1, progress=False)
    for suffix in (".json", ".safetensors"):  # a member of another architecture slipped into the folder
        (tmp_path / "small" / f"member_0001{suffix}").write_bytes((tmp_path / "big" / f"member_0001{suffix}").read_bytes())
    with pytest.raises(BadModelFolderError, match="member_0001.json belongs to another training"):
        ens.Ensemble.load(tmp_path / "small")
    record = json.loads((tmp_path / "small" / "member_0001.json").read_text())
    record["architecture"] = TINY.as_dict()  # the record lies; the weights are still not the ones ensemble.json lists
    (tmp_path / "small" / "member_0001.json").write_text(json.dumps(record))
    with pytest.raises(BadModelFolderError, match="member_0001.safetensors is not the weights file ensemble.json records"):
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


def test_prediction_maps_and_their_relations(shared, data):
    prediction = shared.predict(data[0][:3])
    assert prediction.mean.shape == (3, 32, 32) and prediction.members.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(prediction.mean, prediction.members.mean(axis=0), atol=1e-6)
    assert (prediction.mutual_information >= 0).all() and (prediction.mutual_information <= prediction.entropy + 1e-6).all()


def test_tiled_prediction_matches_whole_frame(shared, data):
    ensemble = shared
    frame = np.random.default_rng(1).random((72, 88)).astype(np.float32)
    whole = ensemble.predict(frame, tile_px=512)
    tiled = ensemble.predict(frame, tile_px=48, overlap_px=16)
    assert tiled.mean.shape == (72, 88)
    assert np.abs(tiled.mean - whole.mean)[8:-8, 8:-8].mean() < 0.05


def test_resampling_returns_maps_in_the_input_pixels(shared, data):
    ensemble = shared
    frame = np.random.default_rng(2).random((50, 60)).astype(np.float32)
    prediction = ensemble.predict(frame, sampling_A_per_px=0.05)
    assert prediction.mean.shape == (50, 60) and prediction.sampling_A_per_px == 0.05


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((1, 2, 3, 4, 5)), "image"),
        (np.full((8, 8), np.nan), "NaN"),
        (np.zeros((1, 2, 8, 8)), "shape"),
        (np.random.default_rng(0).random((40, 48, 3)), r"\(40, 48, 3\), which looks like an RGB\(A\) colour image"),
        (np.random.default_rng(0).random((40, 48, 4)), "RGB"),
        (np.full((32, 32), 7.0), r"the image given to predict is constant \(every pixel 7\)"),
        (np.stack([np.random.default_rng(0).random((16, 16)), np.zeros((16, 16))]), "frame 1 of the stack .* is constant"),
        (np.random.default_rng(0).random((16, 16)) > 0.5, "dtype bool"),
        (np.random.default_rng(0).random((16, 16)) * (1 + 1j), r"np.abs\(image\)"),
        (np.array(["a"]), "dtype <U1"),
        (np.zeros((0, 16)), "too small"),
        (np.zeros((4, 4)), "too small"),
    ],
)
def test_bad_prediction_input(shared, images, message):
    ensemble = shared
    with pytest.raises(BadImageError, match=message) as caught:
        ensemble.predict(images)
    assert "\n" not in str(caught.value)
    with pytest.raises(BadImageError):
        ensemble.features(images)


def test_a_stack_of_three_frames_is_not_a_colour_image(shared):
    ensemble = shared
    with pytest.raises(BadImageError, match="frames of different shapes"):
        ensemble.predict([np.ones((8, 8)), np.ones((16, 16))])
    stack = np.random.default_rng(0).random((3, 24, 32))
    assert ensemble.predict(stack).mean.shape == (3, 24, 32)
    assert ensemble.predict((stack[0] * 255).astype(np.uint8)).mean.shape == (24, 32)  # integer images are fine


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"precision": "fp64"}, "precision='fp64' is not one of"),
        ({"precision": "fp16"}, "precision='fp16' needs a CUDA GPU"),
        ({"overlap_px": -10}, "overlap_px=-10 must be a whole number >= 0 and <= 255"),
        ({"tile_px": 64, "overlap_px": 32}, "overlap_px=32 must be a whole number >= 0 and <= 31"),
        ({"tile_px": 50}, "tile_px=50 must be a multiple of 8"),
        ({"tile_px": 8}, "tile_px=8 must be a whole number >= 16"),
        ({"tile_px": 64.0}, "tile_px=64.0 must be a whole number"),
    ],
)
def test_bad_prediction_options(shared, data, options, message):
    ensemble = shared
    with pytest.raises(BadValueError, match=message):
        ensemble.predict(data[0][0], **options)


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
    for bad in ({"precision": "fp64"}, {"n_iterations": 0}, {"swa_iterations": 400}, {"learning_rate": -1.0}, {"members_per_pack": 0}):
        with pytest.raises(BadValueError):
            ens.TrainingConfig(**bad)
    with pytest.raises(BadValueError, match="n_members=0"):
        ens.train_ensemble(images, masks, tmp_path / "none", 0, 0.1, TINY, FAST, progress=False)
    with pytest.raises(BadValueError, match="precision='fp16' needs a CUDA GPU"):  # refused before the folder is touched
        ens.train_ensemble(images, masks, tmp_path / "fp16", 1, 0.1, TINY, ens.TrainingConfig(precision="fp16"), device="cpu", progress=False)
    assert not (tmp_path / "fp16").exists()


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


# --------------------------------------------------------------------------- precision


def _gpu(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a mocked GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # True even on a T4: must not decide


@pytest.mark.parametrize(
    ("capability", "expected"), [((9, 0), "bf16"), ((8, 0), "bf16"), ((8, 6), "bf16"), ((7, 5), "fp16"), ((7, 0), "fp16"), ((6, 1), "fp32"), ((3, 7), "fp32")]
)
def test_native_precision_follows_the_gpu_compute_capability(monkeypatch, capability, expected):
    _gpu(monkeypatch, capability)
    assert runtime.native_precision("cuda") == expected
    assert runtime.native_precision() == expected  # the default device is the GPU
    assert runtime.resolve_precision("auto", "cuda") == expected
    info = runtime.detect_device()
    assert info.precision == expected and info.bf16 == (expected == "bf16")


def test_native_precision_on_cpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for fast, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda fast=fast: fast)
        assert runtime.native_precision("cpu") == runtime.resolve_precision("auto", "cpu") == runtime.detect_device().precision == expected
    assert runtime.native_precision("mps") == "fp32"
    with pytest.raises(BadValueError, match="fp16"):
        runtime.resolve_precision("fp16", "cpu")  # "auto" never picks fp16 on a CPU, and an explicit fp16 is refused there
    with pytest.raises(BadValueError, match="'bf16' runs on CPUs and CUDA GPUs only"):
        runtime.resolve_precision("bf16", "mps")
    assert runtime.resolve_precision("bf16", "cpu") == "bf16"  # asked for explicitly: allowed


def test_setup_prints_the_precision(monkeypatch, capsys):
    _gpu(monkeypatch, (7, 5))
    runtime.setup(seed=0, profile="smoke")
    assert "device: cuda (a mocked GPU; precision: fp16 autocast with gradient scaling)" in capsys.readouterr().out


def test_fp16_training_uses_a_gradient_scaler(data, monkeypatch):
    """fp16 autocast needs a CUDA GPU; here we check the bookkeeping: a scaler is made and every step goes through it."""
    images, masks = data
    made = []

    class Scaler:
        def __init__(self, device, enabled):
            made.append((device, enabled))
            self.steps = 0

        def scale(self, loss):
            return loss

        def step(self, optimizer):
            self.steps += 1
            optimizer.step()

        def update(self):
            pass

    monkeypatch.setattr(torch.amp, "GradScaler", Scaler)
    monkeypatch.setattr(ens, "resolve_precision", lambda precision, device: "fp16")
    monkeypatch.setattr(ens, "_autocast", lambda device, precision: ens.contextlib.nullcontext())  # no fp16 autocast on a CPU
    x = torch.from_numpy(images)[:, None]
    y = torch.from_numpy(masks.astype(np.float32))[:, None]
    ens._train_pack(x, y, [0], TINY, FAST, torch.device("cpu"), False)
    assert made == [("cuda", True)]


def test_the_record_stores_the_precision_used_not_auto(tmp_path, data, monkeypatch):
    monkeypatch.setattr(ens, "resolve_precision", lambda precision, device: "fp32" if precision in ("auto", "fp32") else precision)
    auto = ens.TrainingConfig(n_iterations=2, batch_size=2, swa_iterations=1)
    ensemble = _train(tmp_path / "run", data, config=auto)
    assert ensemble.record["training"]["precision"] == "auto"  # what was asked for (part of the configuration)
    assert ensemble.precisions == {0: "fp32", 1: "fp32"}  # what was used
    assert json.loads((tmp_path / "run" / "ensemble.json").read_text())["members"]["0"]["precision"] == "fp32"


def test_features_are_plain_fp32_whatever_the_precision(shared, data, monkeypatch):
    ensemble = shared
    reference = ensemble.features(data[0][:2])
    seen = []
    real = ens.PackedUnet.bottleneck_features

    def spy(self, x):
        seen.append((torch.is_autocast_enabled("cpu"), torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return real(self, x)

    monkeypatch.setattr(ens.PackedUnet, "bottleneck_features", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # even inside a caller's autocast
        inside = ensemble.features(data[0][:2])
    np.testing.assert_allclose(inside, reference, rtol=1e-5, atol=1e-6)
    assert set(seen) == {(False, False, False)}
    assert torch.backends.cudnn.allow_tf32  # restored afterwards


# --------------------------------------------------------------------------- cache


def test_the_cache_key_covers_the_simulator_version(monkeypatch):
    from elit_utils import simulate

    folders = []
    monkeypatch.setattr(ens, "train_ensemble", lambda images, masks, folder, *a, **k: folders.append(folder))
    ens.cached_ensemble("smoke", progress=False)
    monkeypatch.setattr(simulate, "SIMULATOR_VERSION", simulate.SIMULATOR_VERSION + 1)
    ens.cached_ensemble("smoke", progress=False)
    assert folders[0] != folders[1] and folders[0].parent == folders[1].parent


def test_the_cache_gives_fewer_members_as_a_subset_and_grows_for_more(monkeypatch):
    monkeypatch.setattr(ens, "profile_training", lambda profile: (TINY, FAST))
    calls = []
    real = ens._train_pack
    monkeypatch.setattr(ens, "_train_pack", lambda *a, **k: (calls.append(a[2]), real(*a, **k))[1])
    assert ens.cached_ensemble("smoke", n_members=2, progress=False).seeds == [0, 1]
    assert ens.cached_ensemble("smoke", n_members=1, progress=False).seeds == [0]
    grown = ens.cached_ensemble("smoke", n_members=3, progress=False)
    assert grown.seeds == [0, 1, 2] and calls == [[0], [1], [2]]
    assert ens.cached_ensemble("smoke", n_members=2, progress=False).seeds == [0, 1] and len(calls) == 3


def test_a_pixel_size_that_would_make_a_huge_frame_is_refused_not_computed(shared):
    """A pixel size 50x the model's (a wrong unit) would make a 3200 px frame per 64 px: refused at once."""
    image = np.random.default_rng(0).random((128, 128)).astype(np.float32)
    with pytest.raises(BadValueError, match="over the limit of 4096x4096 px; check sampling_A_per_px"):
        shared.predict(image, sampling_A_per_px=shared.sampling_A_per_px * 50)
