"""Ensemble.analyse: the prediction and the features of a frame in one call, equal to predict's and features'."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from elit_utils import simulate
from elit_utils.ood import ShiftDetector
from tests.conftest import tiny_ensemble


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    return tiny_ensemble(tmp_path_factory.mktemp("analyse") / "run", 3)


@pytest.fixture(scope="module")
def frames():
    return simulate.dataset("defocus", n=3, seed=4, image_size_px=40, cache=False).images


def _assert_same(ensemble, images, shared_pass=False, **options):
    prediction, features = ensemble.analyse(images, shared_pass=shared_pass, **options)
    tile = {"tile_px": options["tile_px"]} if "tile_px" in options else {}
    expected = ensemble.predict(images, **options)
    for name in ("mean", "variance", "entropy", "mutual_information", "members"):
        np.testing.assert_array_equal(getattr(prediction, name), getattr(expected, name), err_msg=name)
    np.testing.assert_array_equal(features, ensemble.features(images, sampling_A_per_px=options.get("sampling_A_per_px"), **tile))
    return features


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_analyse_gives_what_predict_and_features_give(ensemble, frames, precision):
    """fp32: one shared pass (the bottleneck read on the way), bf16: prediction plus an fp32 encoder pass; both exact."""
    _assert_same(ensemble, frames[0], precision=precision)
    _assert_same(ensemble, frames, precision=precision)  # a stack


def test_analyse_exact_when_tiled_or_resampled(ensemble, frames):
    _assert_same(ensemble, frames[0], precision="fp32", tile_px=24, overlap_px=8)  # larger than a tile: features in their own tiles
    _assert_same(ensemble, frames[0], precision="fp32", sampling_A_per_px=ensemble.sampling_A_per_px * 0.8)


def test_shift_score_from_analyse_equals_the_one_from_features(ensemble, frames):
    reference = ensemble.features(simulate.dataset("source", n=6, seed=1, image_size_px=40, cache=False).images)
    detector = ShiftDetector.fit(reference)
    for precision in ("fp32", "bf16"):
        _, features = ensemble.analyse(frames, precision=precision)
        np.testing.assert_array_equal(detector.score(features), detector.score(ensemble.features(frames)))


def test_shared_pass_runs_the_members_once(ensemble, frames, monkeypatch):
    calls = []
    hooks = []
    for net in ensemble.packs:
        monkeypatch.setattr(net, "bottleneck_features", lambda *args: calls.append("encoder") or torch.zeros(0))
        hooks.append(net.register_forward_pre_hook(lambda *args: calls.append("network")))
    try:
        ensemble.analyse(frames[0], precision="fp32")
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == ["network"] * len(ensemble.packs)


def test_a_shared_bf16_pass_gives_the_bf16_prediction_and_close_features(ensemble, frames, monkeypatch):
    """shared_pass=True: the members run once in bf16; the maps are predict's in bf16, the features that pass's bottleneck
    (close to the strict-fp32 ones, not equal), and no encoder-only pass runs."""
    prediction, features = ensemble.analyse(frames, precision="bf16", shared_pass=True)
    expected = ensemble.predict(frames, precision="bf16")
    np.testing.assert_array_equal(prediction.members, expected.members)
    strict = ensemble.features(frames)
    assert features.shape == strict.shape and not np.array_equal(features, strict)
    np.testing.assert_allclose(features, strict, rtol=0.05, atol=0.02 * np.abs(strict).max())
    _assert_same(ensemble, frames[0], precision="fp32", shared_pass=True)  # in fp32 the shared pass is the strict one
    for net in ensemble.packs:
        monkeypatch.setattr(net, "bottleneck_features", lambda *args: pytest.fail("an encoder-only pass ran"))
    np.testing.assert_array_equal(ensemble.analyse(frames, precision="bf16", shared_pass=True)[1], features)
