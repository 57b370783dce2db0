"""End-to-end: the notebooks' widgets in a real browser (JupyterLab and Voila, headless Chromium).

Run with ``make test-browser`` (marker ``browser``; the default ``make test`` leaves these out).
Each test copies the notebooks to a temporary folder (so autosave never touches the
repository), starts the server on a free local port with a token, runs the notebook in the
smoke profile, moves a control, checks that the widget's output changed and that the page
shows no error, and saves screenshots to ``results/browser/``. The server is stopped at the
end, also when the test fails.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

playwright = pytest.importorskip("playwright.sync_api")

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(os.environ.get("ELIT_BROWSER_SCREENSHOTS", REPO / "results" / "browser"))
ERROR_TEXT = re.compile(r"Traceback|Error displaying widget|model not found|Failed to load model class|Kernel error", re.IGNORECASE)
pytestmark = pytest.mark.browser


def chromium_path() -> str:
    """Debian's Chromium (browser downloads are not possible here); ``$ELIT_CHROMIUM`` overrides."""
    path = os.environ.get("ELIT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail("Chromium is not installed: apt-get install chromium (or set ELIT_CHROMIUM)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # the server answers (an error page is an answer)
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


@contextmanager
def serve(command: list[str], folder: Path, ready_url: str) -> Iterator[subprocess.Popen]:
    """Start a server in ``folder`` with the smoke profile; stop it however the test ends."""
    env = {**os.environ, "ELIT_PROFILE": "smoke", "ELIT_CACHE": str(folder / "cache"), "ELIT_RESULTS": str(folder / "results")}
    with open(folder / f"{Path(command[2]).name}-server.log", "w") as log:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_http(ready_url, process)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=chromium_path(), headless=True, args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The notebooks in a temporary folder, and JupyterLab settings that keep every cell in the page
    (no windowing, so outputs below the fold can be found) and ask nothing about news."""
    folder = tmp_path_factory.mktemp("browser")
    for notebook in (REPO / "notebooks").glob("[0-9]*.ipynb"):
        shutil.copy(notebook, folder)
    settings = {"notebook-extension/tracker": '{"windowingMode": "none"}', "apputils-extension/notification": '{"fetchNews": "false"}'}
    for name, text in settings.items():
        path = folder / "settings" / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


@pytest.fixture(scope="module")
def lab(workdir) -> Iterator[str]:
    port, token = free_port(), secrets.token_hex(16)
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1", f"--IdentityProvider.token={token}"]
    command += ["--allow-root"] if os.geteuid() == 0 else []
    command += [f"--ServerApp.root_dir={workdir}", f"--LabApp.user_settings_dir={workdir / 'settings'}", f"--LabApp.workspaces_dir={workdir / 'workspaces'}"]
    with serve(command, workdir, f"http://127.0.0.1:{port}/api/status?token={token}"):
        # a fresh workspace per notebook; the API address lets a test stop its kernel
        yield f"http://127.0.0.1:{port}/lab/workspaces/{{0}}/tree/{{0}}.ipynb?reset&token={token}", f"http://127.0.0.1:{port}/api?token={token}"


def shoot(page: object, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)


def assert_no_error_text(page: object) -> None:
    text = page.locator("body").inner_text()
    match = ERROR_TEXT.search(text)
    assert match is None, f"the page shows {match.group(0)!r}: ...{text[max(0, match.start() - 300) : match.end() + 300]}..."


def run_all_cells(page: object, url: str, timeout_s: float = 300) -> None:
    """Open a notebook in JupyterLab, run every cell, and wait until the last cell has printed the versions.

    "Run All Cells" is clicked again when no cell has started after 20 s (a kernel still connecting
    can drop the first request). On a loaded machine JupyterLab may ask which kernel to start (its
    "Select Kernel" dialog, seen in CI); the kernel it proposes, the notebook's own, is accepted.
    """
    page.goto(url)
    notebook = page.locator(".jp-NotebookPanel:visible").first
    notebook.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(timeout=120_000)
    started = notebook.locator(".jp-InputPrompt", has_text=re.compile(r"\[(\*|\d+)\]"))
    for _ in range(3):
        accept_kernel_dialog(page)
        page.locator("li.lm-MenuBar-item", has_text="Run").first.click()
        page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()
        try:
            started.first.wait_for(timeout=20_000)
            break
        except playwright.TimeoutError:
            continue
    notebook.locator(".jp-OutputArea-output", has_text="elit-lab").last.wait_for(timeout=timeout_s * 1000)


def accept_kernel_dialog(page: object) -> None:
    """Accept JupyterLab's "Select Kernel" dialog, if it is open, with the kernel it proposes."""
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    if dialog.count() and dialog.first.is_visible():
        dialog.first.locator(".jp-mod-accept").first.click()
        dialog.first.wait_for(state="hidden", timeout=30_000)


def stop_kernels(api: str) -> None:
    """Shut down every kernel of the server (``api`` ends in ``/api?token=...``), so tests do not pile them up."""
    base, token = api.split("?")
    with urllib.request.urlopen(f"{base}/kernels?{token}", timeout=10) as answer:
        kernels = json.load(answer)
    for kernel in kernels:
        urllib.request.urlopen(urllib.request.Request(f"{base}/kernels/{kernel['id']}?{token}", method="DELETE"), timeout=10).close()


def widget_text(page: object, container: object) -> str:
    return container.locator(".widget-html-content").first.inner_text()


def change_and_check(page: object, box: object, act, name: str) -> None:
    """Do ``act`` on the widget ``box`` and check that its text and its figure both change."""
    before_text = widget_text(page, box)
    before_image = box.locator("img").first.get_attribute("src")
    shoot(page, f"{name}_before")
    act()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (widget_text(page, box) == before_text or box.locator("img").first.get_attribute("src") == before_image):
        time.sleep(0.5)
    box.scroll_into_view_if_needed()
    shoot(page, f"{name}_after")
    assert widget_text(page, box) != before_text, f"{name}: the widget's text did not change"
    assert box.locator("img").first.get_attribute("src") != before_image, f"{name}: the widget's figure did not change"


def press_slider(box: object, index: int = 0, key: str = "ArrowRight") -> None:
    handle = box.locator(".widget-slider .noUi-handle").nth(index)
    handle.focus()
    handle.press(key)


CASES = {
    "01_simulating_stem_images": lambda box: lambda: press_slider(box, 0, "ArrowLeft"),
    "03_out_of_distribution": lambda box: lambda: box.locator("select").first.select_option(index=1),
    "05_iterative_training": lambda box: lambda: press_slider(box, 0),
    "06_seeing_uncertainty": lambda box: lambda: box.locator("select").first.select_option(index=1),
}


@pytest.mark.parametrize("notebook", list(CASES))
def test_widget_responds_in_jupyterlab(browser, lab, notebook):
    notebook_url, api = lab
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    try:
        run_all_cells(page, notebook_url.format(notebook))
        box = page.locator(".jupyter-widgets.widget-vbox, .jupyter-widgets.widget-hbox").filter(has=page.locator("img")).first
        box.wait_for(timeout=60_000)
        box.scroll_into_view_if_needed()
        change_and_check(page, box, CASES[notebook](box), f"lab_{notebook}")
        assert_no_error_text(page)
    except Exception:
        shoot(page, f"lab_{notebook}_failed")
        raise
    finally:
        page.close()
        stop_kernels(api)


@pytest.fixture(scope="module")
def dashboard(workdir) -> Iterator[str]:
    """The uncertainty explorer served by Voila, as ``make dashboard`` serves it (code hidden)."""
    shutil.copy(REPO / "dashboards" / "uncertainty_explorer.ipynb", workdir)
    port, token = free_port(), secrets.token_hex(16)
    command = [sys.executable, "-m", "voila", "uncertainty_explorer.ipynb", "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1", f"--token={token}"]
    with serve(command, workdir, f"http://127.0.0.1:{port}/voila/static/"):
        yield f"http://127.0.0.1:{port}/?token={token}"


def test_dashboard_responds_in_voila(browser, dashboard):
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    try:
        page.goto(dashboard, timeout=300_000)
        box = page.locator(".jupyter-widgets.widget-vbox").filter(has=page.locator("img")).first
        box.wait_for(timeout=300_000)
        assert "import elit_utils" not in page.locator("body").inner_text(), "the dashboard shows code"
        change_and_check(page, box, lambda: box.locator("select").first.select_option(index=1), "voila_uncertainty_explorer")
        assert_no_error_text(page)
    except Exception:
        shoot(page, "voila_uncertainty_explorer_failed")
        raise
    finally:
        page.close()
