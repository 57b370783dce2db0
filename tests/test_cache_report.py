import json
import multiprocessing
import os
import stat
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from elit_utils import cache, report
from elit_utils.errors import BadValueError


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
    report.save_figure(fig, "05_demo", results=tmp_path)
    report.save_figure(fig, "zz_loose", results=tmp_path)
    text = report.write_summary(tmp_path).read_text()
    assert "| atoms | 140 |" in text and "| ratio | 0.9999 |" in text
    assert "(figures/01_demo.png)" in text and (tmp_path / "figures" / "01_demo.png").stat().st_size > 0
    headlines = text.split("## Headlines")[1].split("\n## ")[0]
    assert "| 05 Iterative training | f1_per_round | [0.7, 0.9] | quick |" in headlines and "other" not in headlines
    iterate_section = text.split("## iterate: notebook 05, Iterative training")[1].split("\n## ")[0]
    assert "![05_demo](figures/05_demo.png)" in iterate_section and "01_demo" not in iterate_section
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


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_keep_the_users_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        assert cache.current_umask() == umask
        cache.write_json_atomic(tmp_path / "a.json", {"x": 1})
        with cache.atomic_path(tmp_path / "b.txt") as tmp:
            tmp.write_text("b")
    finally:
        os.umask(previous)
    for name in ("a.json", "b.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask


def test_atomic_writes_reach_the_disk_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(cache.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(cache.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    with cache.atomic_path(tmp_path / "a.txt") as tmp:
        tmp.write_text("data")
    assert events[:2] == ["fsync", "replace"] and (tmp_path / "a.txt").read_text() == "data"
    assert events[2:] in (["fsync"], [])  # the folder too, where the OS allows


def _record_many(results: str, worker: int, n: int) -> None:
    for index in range(n):
        report.record_metrics(f"w{worker}_k{index}", {"value": index}, profile="smoke", results=results)


def test_concurrent_record_metrics_loses_no_section(tmp_path):
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_record_many, args=(str(tmp_path), worker, 12)) for worker in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    assert set(report.load_metrics(tmp_path)) == {f"w{w}_k{i}" for w in range(4) for i in range(12)}


def test_a_metrics_file_that_is_not_an_object_is_reported(tmp_path):
    (tmp_path / "metrics.json").write_text("[1, 2]")
    with pytest.raises(BadValueError, match="metrics.json holds a JSON list"):
        report.load_metrics(tmp_path)


def test_every_replaced_metrics_file_is_kept_with_its_time(tmp_path):
    from elit_utils.reproduce import keep_previous_metrics

    kept = []
    for run in range(3):
        (tmp_path / "metrics.json").write_text(json.dumps({"run": run}))
        os.utime(tmp_path / "metrics.json", (1e9, 1e9))  # all three in the same second
        kept.append(keep_previous_metrics(tmp_path))
    assert len(set(kept)) == 3 and [json.loads(p.read_text())["run"] for p in kept] == [0, 1, 2]
    assert kept[0].name == f"metrics.{time.strftime('%Y%m%d-%H%M%S', time.localtime(1e9))}.json"
    assert keep_previous_metrics(tmp_path) is None
