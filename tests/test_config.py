import dataclasses

import pytest

from elit_utils.config import PROFILES, config_hash, get_profile


def test_profile_comes_from_argument_then_environment_then_default(monkeypatch):
    monkeypatch.setenv("ELIT_PROFILE", "paper")
    assert get_profile().name == "paper"
    assert get_profile("smoke").name == "smoke"
    monkeypatch.delenv("ELIT_PROFILE")
    assert get_profile().name == "quick"


def test_unknown_profile_names_the_choices(monkeypatch):
    monkeypatch.setenv("ELIT_PROFILE", "fast")
    with pytest.raises(ValueError, match="smoke, quick, paper"):
        get_profile()


def test_paper_profile_is_the_published_configuration():
    paper = get_profile("paper")
    assert (paper.n_members, paper.n_iterations, paper.batch_size, paper.image_size_px) == (20, 2000, 32, 256)


def test_profiles_are_frozen_and_grow_from_smoke_to_paper():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROFILES["smoke"].n_members = 3
    smoke, quick, paper = PROFILES["smoke"], PROFILES["quick"], PROFILES["paper"]
    for field in ("n_train_images", "n_members", "n_iterations", "image_size_px"):
        assert getattr(smoke, field) <= getattr(quick, field) <= getattr(paper, field)


def test_config_hash_is_stable_and_sensitive():
    assert config_hash({"a": 1, "b": (2, 3)}) == config_hash({"b": [2, 3], "a": 1})
    assert config_hash(PROFILES["smoke"]) != config_hash(PROFILES["quick"])
    assert len(config_hash({"a": 1})) == 16
