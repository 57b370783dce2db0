import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from elit_utils import cache, report


def test_cache_builds_once_then_reads(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"x": np.arange(4)}

    first = cache.cached_arrays("demo", {"n": 4}, build, cache_root=tmp_path)
    second = cache.cached_arrays("demo", {"n": 4}, build, cache_root=tmp_path)
    assert len(calls) == 1
    np.testing.assert_array_equal(first["x"], second["x"])
    record = json.loads(next((tmp_path / "demo").glob("*.json")).read_text())
    assert record["config"] == {"n": 4} and "numpy" in record["versions"]


def test_a_corrupt_cache_entry_is_rebuilt(tmp_path):
    cache.cached_arrays("demo", {"n": 1}, lambda: {"x": np.ones(1)}, cache_root=tmp_path)
    entry = next((tmp_path / "demo").glob("*.npz"))
    entry.write_bytes(b"not a zip file")
    again = cache.cached_arrays("demo", {"n": 1}, lambda: {"x": np.full(1, 7.0)}, cache_root=tmp_path)
    assert again["x"][0] == 7.0


def test_atomic_write_leaves_target_untouched_on_failure(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("precious")
    with pytest.raises(RuntimeError), cache.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "precious"
    assert list(tmp_path.iterdir()) == [target]


def test_object_arrays_are_refused(tmp_path):
    with pytest.raises(TypeError, match="dtype object"):
        cache.save_npz_atomic(tmp_path / "a.npz", {"bad": np.array([{"a": 1}], dtype=object)})


def test_cache_dir_follows_environment_then_falls_back_to_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ELIT_CACHE", str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("ELIT_CACHE")
    monkeypatch.setattr(cache, "repository_root", lambda: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "elit-lab"


def test_metrics_keep_other_sections_and_carry_profile_and_hash(tmp_path):
    report.record_metrics("a", {"f1": 0.5}, profile="smoke", config={"k": 1}, results=tmp_path)
    report.record_metrics("b", {"n": 3}, profile="quick", results=tmp_path)
    metrics = report.load_metrics(tmp_path)
    assert metrics["a"]["values"] == {"f1": 0.5} and metrics["a"]["profile"] == "smoke"
    assert metrics["b"]["profile"] == "quick" and len(metrics["b"]["config_hash"]) == 16


def test_summary_lists_numbers_and_figures(tmp_path):
    report.record_metrics("01_simulate", {"atoms": 140, "ratio": 0.99991}, profile="smoke", results=tmp_path)
    fig = plt.figure()
    report.save_figure(fig, "01_demo", results=tmp_path)
    report.record_metrics("iterate", {"f1_per_round": [0.7, 0.9], "other": 1}, profile="quick", results=tmp_path)
    report.save_figure(fig, "04_demo", results=tmp_path)
    report.save_figure(fig, "zz_loose", results=tmp_path)
    text = report.write_summary(tmp_path).read_text()
    assert "| atoms | 140 |" in text and "| ratio | 0.9999 |" in text
    assert "(figures/01_demo.png)" in text and (tmp_path / "figures" / "01_demo.png").stat().st_size > 0
    headlines = text.split("## Headlines")[1].split("\n## ")[0]
    assert "| 04 Iterative training | f1_per_round | [0.7, 0.9] | quick |" in headlines and "other" not in headlines
    iterate_section = text.split("## iterate: notebook 04, Iterative training")[1].split("\n## ")[0]
    assert "![04_demo](figures/04_demo.png)" in iterate_section and "01_demo" not in iterate_section
    assert text.index("## 01_simulate") < text.index("## iterate") < text.index("## Other figures") < text.index("zz_loose")


def test_broken_metrics_file_is_reported_not_overwritten(tmp_path):
    (tmp_path / "metrics.json").write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        report.record_metrics("a", {"x": 1}, results=tmp_path)
    assert Path(tmp_path / "metrics.json").read_text() == "{broken"


def test_metrics_without_a_value_are_valid_json(tmp_path):
    """An AUROC with nothing to detect is NaN in Python; metrics.json holds null, summary.md says n/a."""
    report.record_metrics("ood", {"auroc_per_axis": {"dose": 0.9, "sampling": float("nan")}, "limit": np.float32("inf")}, profile="smoke", results=tmp_path)
    raw = (tmp_path / "metrics.json").read_text()
    values = json.loads(raw, parse_constant=lambda name: pytest.fail(f"metrics.json holds {name}"))["ood"]["values"]
    assert values == {"auroc_per_axis": {"dose": 0.9, "sampling": None}, "limit": None}
    assert "| auroc_per_axis | dose: 0.9, sampling: n/a |" in report.write_summary(tmp_path).read_text()


def test_summary_shortens_long_tables(tmp_path):
    report.record_metrics("big", {"table": {f"k{i}": i for i in range(40)}}, profile="smoke", results=tmp_path)
    assert "| table | 40 entries (see metrics.json) |" in report.write_summary(tmp_path).read_text()
