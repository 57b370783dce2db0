"""The example micrographs: fetched through the real code from a local HTTP server (127.0.0.1 only).

Most tests use two small synthetic files put into the registry, so the logic is
tested without the shared folder; the tests marked ``needs_experimental`` serve
copies of the shared images, laid out as upstream (``<commit>/<path>``).
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from elit_utils import examples
from elit_utils.errors import BadValueError
from elit_utils.examples import ExampleFile, available_examples, example_path, load_example

from .conftest import EXPERIMENTAL, needs_experimental

COMMIT = "0123456789abcdef0123456789abcdef01234567"
IMAGE = np.random.default_rng(0).random((160, 160)).astype(np.float32)
COORDS = np.array([[1.5, 2.5, 0.0], [8.0, 9.0, 0.0]], np.float32)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):  # a client that gave up (timeout test): not news
        pass


@dataclass
class Mirror:
    """A folder served over HTTP as ``<url>/<commit>/<path>``, counting the requests."""

    root: Path
    url: str = ""
    hits: list[str] = field(default_factory=list)
    delay_s: float = 0.0
    server: ThreadingHTTPServer | None = None

    def put(self, commit: str, upstream_path: str, source: Path) -> None:
        target = self.root / commit / upstream_path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _serve(mirror: Mirror) -> None:
    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(mirror.root), **kwargs)

        def do_GET(self):
            mirror.hits.append(self.path)
            time.sleep(mirror.delay_s)
            super().do_GET()

        def log_message(self, *args):
            pass

    mirror.server = _QuietServer(("127.0.0.1", 0), Handler)
    mirror.url = f"http://127.0.0.1:{mirror.server.server_port}"
    threading.Thread(target=mirror.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()


@pytest.fixture(autouse=True)
def no_shared_folder(tmp_path, monkeypatch):
    """An empty experimental folder (so ../shared is not found), fetching on, and no real URL."""
    empty = tmp_path / "experimental"
    empty.mkdir()
    monkeypatch.setenv("ELIT_EXPERIMENTAL_DIR", str(empty))
    monkeypatch.delenv("ELIT_OFFLINE", raising=False)
    monkeypatch.setenv("ELIT_EXAMPLES_URL", f"http://127.0.0.1:{_free_port()}")  # nothing listens: never GitHub
    return empty


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    served = Mirror(tmp_path / "mirror")
    served.root.mkdir()
    _serve(served)
    monkeypatch.setenv("ELIT_EXAMPLES_URL", served.url)
    yield served
    served.stop()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tiny(tmp_path, monkeypatch, mirror):
    """A registry of one synthetic image and its coordinates, both served by the mirror."""
    source = tmp_path / "source"
    source.mkdir()
    np.save(source / "tiny.npy", IMAGE)
    np.save(source / "tiny.coords.npy", COORDS)
    registry = {
        "tiny.npy": ExampleFile("exp/tiny.npy", COMMIT, _sha256(source / "tiny.npy"), "a tiny image", sampling_A_per_px=0.08, reference="tiny.coords.npy"),
        "tiny.coords.npy": ExampleFile("exp/tiny-coord.npy", COMMIT, _sha256(source / "tiny.coords.npy"), "its atoms", kind="coordinates"),
    }
    monkeypatch.setattr(examples, "REGISTRY", registry)
    for name, entry in registry.items():
        mirror.put(entry.commit, entry.upstream_path, source / name)
    return source


def _cache_files() -> list[Path]:
    folder = examples.cache_dir() / "examples"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_fetch_verifies_caches_and_loads_once(tiny, mirror, capsys):
    example = load_example("tiny")
    assert example is not None and example.name == "tiny.npy" and example.sampling_A_per_px == 0.08
    np.testing.assert_array_equal(example.image, IMAGE)
    np.testing.assert_array_equal(example.reference_px, COORDS[:, :2])
    assert example.image.dtype == np.float32 and example.reference_px.shape == (2, 2)
    assert [p.name for p in _cache_files()] == ["tiny.coords.npy", "tiny.npy"]
    assert example.path == examples.cache_dir() / "examples" / "tiny.npy" and _sha256(example.path) == examples.REGISTRY["tiny.npy"].sha256
    assert mirror.hits == [f"/{COMMIT}/exp/tiny.npy", f"/{COMMIT}/exp/tiny-coord.npy"]
    assert all(line.startswith("Fetched tiny") for line in _lines(capsys))
    assert load_example("tiny.npy") is not None
    assert len(mirror.hits) == 2 and _lines(capsys) == []


def test_offline_prints_one_line_and_leaves_nothing(tiny, mirror, capsys):
    mirror.stop()
    assert example_path("tiny.npy") is None
    assert _lines(capsys) == ["Example image tiny.npy could not be fetched (offline?); the real-image sections are skipped."]
    assert _cache_files() == []


def test_bad_checksum_prints_one_line_and_leaves_no_corrupt_file(tiny, mirror, capsys):
    np.save(mirror.root / COMMIT / "exp" / "tiny.npy", IMAGE + 1)
    assert load_example("tiny.npy") is None
    (line,) = _lines(capsys)
    assert "tiny.npy could not be fetched" in line and "checksum differs" in line
    assert _cache_files() == []


def test_a_damaged_cached_copy_is_fetched_again(tiny, mirror):
    assert example_path("tiny.npy") is not None
    (examples.cache_dir() / "examples" / "tiny.npy").write_bytes(b"damaged")
    path = example_path("tiny.npy")
    assert path is not None and _sha256(path) == examples.REGISTRY["tiny.npy"].sha256 and len(mirror.hits) == 2


def test_http_error_and_timeout_are_one_line_each(tiny, mirror, monkeypatch, capsys):
    (mirror.root / COMMIT / "exp" / "tiny.npy").unlink()
    assert example_path("tiny.npy") is None
    assert "(HTTP 404 from " in _lines(capsys)[0]
    monkeypatch.setattr(examples, "FETCH_TIMEOUT_S", 0.2)
    mirror.delay_s = 1.0
    assert example_path("tiny.coords.npy") is None
    assert _lines(capsys) == ["Reference coordinates tiny.coords.npy could not be fetched (no answer within 0.2 s); the comparison with them is skipped."]


def test_a_local_copy_is_preferred_without_a_request(tiny, mirror, no_shared_folder):
    shutil.copyfile(tiny / "tiny.npy", no_shared_folder / "tiny.npy")
    assert example_path("tiny.npy") == no_shared_folder / "tiny.npy"
    assert mirror.hits == [] and _cache_files() == []


def test_a_local_copy_with_another_checksum_is_not_used(tiny, mirror, no_shared_folder, capsys):
    np.save(no_shared_folder / "tiny.npy", IMAGE * 2)
    path = example_path("tiny.npy")
    assert path == examples.cache_dir() / "examples" / "tiny.npy" and len(mirror.hits) == 1
    (line,) = _lines(capsys)
    assert "has another checksum and was not used" in line
    mirror.stop()
    examples.cache_dir().joinpath("examples", "tiny.npy").unlink()
    assert example_path("tiny.npy") is None
    (line,) = _lines(capsys)
    assert "(offline?; the copy in " in line


def test_offline_setting_uses_local_and_cached_copies_only(tiny, mirror, monkeypatch, no_shared_folder, capsys):
    monkeypatch.setenv("ELIT_OFFLINE", "1")
    assert example_path("tiny.npy") is None
    assert _lines(capsys) == ["Example image tiny.npy could not be fetched (ELIT_OFFLINE=1 and no local copy); the real-image sections are skipped."]
    shutil.copyfile(tiny / "tiny.npy", no_shared_folder / "tiny.npy")
    example = load_example("tiny.npy")
    assert example is not None and example.reference_px is None and mirror.hits == []
    monkeypatch.setenv("ELIT_OFFLINE", "0")
    assert example_path("tiny.coords.npy") is not None
    monkeypatch.setenv("ELIT_OFFLINE", "1")
    assert example_path("tiny.coords.npy") == examples.cache_dir() / "examples" / "tiny.coords.npy" and len(mirror.hits) == 1


def test_unknown_names_raise_and_list_the_known_ones(tiny, mirror):
    with pytest.raises(BadValueError, match=r"Unknown example 'nope.npy'; the known ones are: tiny.npy, tiny.coords.npy"):
        example_path("nope.npy")
    with pytest.raises(BadValueError, match="holds coordinates, not an image"):
        load_example("tiny.coords.npy")
    with pytest.raises(BadValueError, match="Unknown example"):
        available_examples(["tiny", "typo"])
    assert mirror.hits == []


def test_available_examples_skips_the_missing_ones(tiny, mirror, monkeypatch, capsys):
    missing = ExampleFile("exp/gone.npy", COMMIT, "0" * 64, "not served")
    monkeypatch.setitem(examples.REGISTRY, "gone.npy", missing)
    found = available_examples()
    assert list(found) == ["tiny.npy"]
    assert [line for line in _lines(capsys) if "gone.npy" in line] == [
        f"Example image gone.npy could not be fetched (HTTP 404 from {mirror.url}/{COMMIT}/exp/gone.npy); the real-image sections are skipped."
    ]


def test_default_url_is_pinned_upstream(monkeypatch):
    monkeypatch.delenv("ELIT_EXAMPLES_URL")
    assert examples.example_url("G-Si-2nm.coords.npy") == (
        "https://github.com/pycroscopy/AICrystallographer/raw/8e854226b2eef6254698abf2533eb910b08c070c/AtomNet/exp_data/G-Si-2nm-coord.npy"
    )
    for name, entry in examples.REGISTRY.items():
        assert len(entry.commit) == 40 and len(entry.sha256) == 64, name
        assert entry.reference is None or examples.REGISTRY[entry.reference].kind == "coordinates"
    assert "pycroscopy/AICrystallographer" in examples.ATTRIBUTION and "Ziatdinov" in examples.ATTRIBUTION


@needs_experimental
def test_registry_checksums_are_those_of_the_shared_copies():
    for name, entry in examples.REGISTRY.items():
        assert _sha256(EXPERIMENTAL / name) == entry.sha256, name


@needs_experimental
def test_the_real_examples_are_fetched_and_loaded(mirror):
    for name, entry in examples.REGISTRY.items():
        mirror.put(entry.commit, entry.upstream_path, EXPERIMENTAL / name)
    found = available_examples()
    assert list(found) == ["G-Si-2nm.npy", "G-GrainBoundary-4nm.npy", "G-dimSi.npy"] and len(mirror.hits) == 5
    assert found["G-Si-2nm.npy"].image.shape == (256, 256) and found["G-Si-2nm.npy"].reference_px.shape == (140, 2)
    assert found["G-GrainBoundary-4nm.npy"].sampling_A_per_px == 0.082 and found["G-GrainBoundary-4nm.npy"].reference_px.shape == (606, 2)
    assert found["G-dimSi.npy"].sampling_A_per_px is None and found["G-dimSi.npy"].reference_px is None
    assert all(example.image.dtype == np.float32 for example in found.values())


@needs_experimental
def test_the_shared_copies_are_used_offline(monkeypatch):
    monkeypatch.setenv("ELIT_EXPERIMENTAL_DIR", str(EXPERIMENTAL))
    monkeypatch.setenv("ELIT_OFFLINE", "1")
    example = load_example("G-Si-2nm")
    assert example is not None and example.path == EXPERIMENTAL / "G-Si-2nm.npy" and _cache_files() == []


def test_a_named_experimental_folder_is_obeyed_even_when_missing(tmp_path, monkeypatch):
    """$ELIT_EXPERIMENTAL_DIR naming no folder means "no local images", not "look elsewhere" (../shared)."""
    from elit_utils.io import experimental_dir

    monkeypatch.setenv("ELIT_EXPERIMENTAL_DIR", str(tmp_path / "missing"))
    assert experimental_dir() is None
    monkeypatch.setenv("ELIT_EXPERIMENTAL_DIR", str(tmp_path))
    assert experimental_dir() == tmp_path
