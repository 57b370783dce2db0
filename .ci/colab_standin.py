"""A Colab stand-in: the built wheel in a fresh environment, each notebook alone and cold.

What a student's Colab tab does, as closely as this machine allows:

1. build the wheel and the sdist (``python -m build``) and check what they contain;
2. install the wheel (not editable) into a fresh virtual environment, with what Colab
   already ships beside it (a kernel, nbclient and ipywidgets 7.7, Colab's version),
   and nothing from the checkout. Colab also ships torch and torchvision preinstalled;
   here they (and what they need: CUDA libraries, numpy, pillow, ...) are linked from
   CI's own environment, not installed again, as Colab's are found outside the user's
   packages. That saves writing about 5.5 GB of CUDA wheels twice (a CI run once ran
   out of disk there);
3. run every notebook alone in its own empty folder, with an empty cache, no shared
   images and no network for data (``ELIT_OFFLINE=1``), in the ``smoke`` profile,
   printing one line per notebook with its time;
4. run the widget tests once more under ipywidgets 7.7 against the installed wheel.

Usage: ``python .ci/colab_standin.py [--work DIR] [--notebook 02]`` (``make test-colab``).
Exit status 0 only when everything passed.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
#: Packages a Colab runtime already has, at Colab's versions where it matters (ipywidgets 7.7).
COLAB_PROVIDED = ["ipykernel", "nbclient", "nbformat", "ipywidgets>=7.7,<7.8", "pytest", "hypothesis"]
#: Preinstalled on Colab and linked here from CI's environment, with everything they require.
COLAB_PREINSTALLED = ["torch", "torchvision"]

RUN_NOTEBOOK = """
import sys, nbformat
from nbclient import NotebookClient
from elit_utils.reproduce import kernel_config  # the kernel on an encrypted or local transport: no TCP warning
path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": "."}}, config=kernel_config()).execute()
nbformat.write(nb, path.replace(".ipynb", ".executed.ipynb"))
"""


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    """Run a command, echoing it; raise with its output when it fails."""
    print("$ " + " ".join(map(str, command)), flush=True)
    return subprocess.run(command, check=True, **kwargs)


def build(dist: Path) -> Path:
    """Build the wheel and the sdist; check that the wheel holds the whole package. Returns the wheel."""
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)], stdout=subprocess.DEVNULL)
    wheel = next(dist.glob("elit_lab-*.whl"))
    sdist = next(dist.glob("elit_lab-*.tar.gz"))
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {f"elit_utils/{p.name}" for p in (REPO / "elit_utils").glob("*.py")}
    missing = sorted(modules - names)
    if missing:
        sys.exit(f"the wheel {wheel.name} lacks {', '.join(missing)}")
    print(f"built {wheel.name} ({len(names)} files, every module of elit_utils) and {sdist.name}")
    return wheel


def requirement_closure(roots: list[str]) -> list[metadata.Distribution]:
    """The installed distributions ``roots`` need, themselves included (markers and extras honoured).

    Example: ``requirement_closure(["torch"])`` holds torch, triton, sympy, the nvidia-* wheels, ...
    """
    found: dict[str, tuple[metadata.Distribution, frozenset[str]]] = {}
    pending = [(name, frozenset()) for name in roots]
    while pending:
        name, extras = pending.pop()
        key = canonicalize_name(name)
        known_extras = found[key][1] if key in found else frozenset()
        if key in found and extras <= known_extras:
            continue
        distribution = metadata.distribution(name)
        extras = extras | known_extras
        found[key] = (distribution, extras)
        environments = [{"extra": extra} for extra in extras or {""}]
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or any(requirement.marker.evaluate(env) for env in environments):
                pending.append((requirement.name, frozenset(requirement.extras)))
    return [distribution for distribution, _ in found.values()]


def link_preinstalled(python: Path, folder: Path) -> None:
    """Make COLAB_PREINSTALLED importable in the environment of ``python`` as links, not copies.

    Each distribution's top-level entries (package folders, modules, its dist-info) are linked
    into ``folder``, which a ``.pth`` file puts on the environment's path, so pip sees them as
    installed and does not fetch them again.
    """
    folder.mkdir(parents=True)
    for distribution in requirement_closure(COLAB_PREINSTALLED):
        for top in {Path(str(file)).parts[0] for file in distribution.files or [] if not str(file).startswith("..")}:
            source = Path(distribution.locate_file(top))
            if source.exists() and not (folder / top).exists():
                (folder / top).symlink_to(source)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True)
    (Path(purelib.stdout.strip()) / "colab_preinstalled.pth").write_text(f"{folder}\n")


def fresh_environment(folder: Path, wheel: Path) -> Path:
    """A new virtual environment with the wheel and what Colab provides; returns its python."""
    run([sys.executable, "-m", "venv", str(folder)])
    python = folder / "bin" / "python"
    link_preinstalled(python, folder.parent / "colab-preinstalled")
    run([str(python), "-m", "pip", "install", "-q", "--no-cache-dir", "--disable-pip-version-check", str(wheel), *COLAB_PROVIDED])
    return python


def run_notebooks_alone(python: Path, work: Path, only: str | None) -> list[tuple[str, float]]:
    """Each notebook in its own empty folder with an empty cache and no shared images."""
    timings = []
    for notebook in sorted((REPO / "notebooks").glob("[0-9]*.ipynb")):
        if only and not notebook.name.startswith(only):
            continue
        alone = work / notebook.stem
        alone.mkdir(parents=True)
        shutil.copy(notebook, alone / notebook.name)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ELIT_")}
        env.update(
            ELIT_PROFILE="smoke",
            ELIT_CACHE=str(alone / "cache"),
            ELIT_RESULTS=str(alone / "results"),
            ELIT_EXPERIMENTAL_DIR=str(alone / "no-shared-images"),
            ELIT_OFFLINE="1",
            MPLBACKEND="Agg",
            PYTHONWARNINGS="ignore::DeprecationWarning",
        )
        start = time.perf_counter()
        run([str(python), "-c", RUN_NOTEBOOK, notebook.name], cwd=alone, env=env)
        timings.append((notebook.name, time.perf_counter() - start))
        print(f"[colab stand-in] {notebook.name} ran alone and cold in {timings[-1][1]:.0f} s", flush=True)
    return timings


def widget_tests(python: Path, work: Path) -> None:
    """The widget tests (and the stream replay's) against the installed wheel under ipywidgets 7.7 (a copy of tests/, no checkout on the path)."""
    copy = work / "widget-tests"
    shutil.copytree(REPO / "tests", copy / "tests", ignore=shutil.ignore_patterns("__pycache__", "browser"))
    version = subprocess.run([str(python), "-c", "import ipywidgets; print(ipywidgets.__version__)"], capture_output=True, text=True, check=True)
    print(f"widget tests with ipywidgets {version.stdout.strip()}")
    env = {**os.environ, "MPLBACKEND": "Agg", "ELIT_PROFILE": "smoke"}
    run(
        [
            str(python),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            "--rootdir",
            str(copy),
            "tests/test_widgets_viz.py",
            "tests/test_stream_replay.py",
        ],
        cwd=copy,
        env=env,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="working folder (default: a new temporary one, removed at the end)")
    parser.add_argument("--notebook", default=None, help="run only notebooks whose name starts with this (e.g. 02)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="elit-colab-"))
    start = time.perf_counter()
    try:
        wheel = build(work / "dist")
        python = fresh_environment(work / "venv", wheel)
        timings = run_notebooks_alone(python, work / "notebooks", args.notebook)
        widget_tests(python, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"Colab stand-in passed: {len(timings)} notebooks alone and cold, widget tests under ipywidgets 7.7, in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
