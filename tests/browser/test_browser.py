"""In a real browser: JupyterLab and Voilà serve the explorer, headless Chromium clicks it.

Runs with `make test-browser` (which `.ci/run` calls after `make test`). It needs
Debian's chromium (`/usr/bin/chromium`) and the `playwright` package, which
drives it without downloading a browser of its own. Where either cannot be had the
tests skip and say why. Screenshots land in `tests/browser/artifacts/`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = os.environ.get("APFLAB_CHROMIUM", "/usr/bin/chromium")
TOKEN = "apflab-browser-test"
# The closed network refuses Chromium's background connections; keep it quiet.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (Debian package `chromium`); browser tests skipped",
                allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {seconds} s")


def _serve(cmd: list[str], url: str, tmp_path: Path):
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_http(url, proc)
    except Exception:
        proc.terminate()
        raise
    return proc


@pytest.fixture
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _pc_text(page) -> str:
    return page.locator("text=/pc\\s+0x[0-9a-f]+/").first.inner_text()


def _click_step_and_check(page, shot: str) -> None:
    step = page.get_by_role("button", name="step 100")
    step.wait_for(timeout=90_000)
    before = page.locator(".widget-html-content").filter(has_text="retired").first.inner_text()
    step.click()
    page.wait_for_function(
        "(b) => [...document.querySelectorAll('.widget-html-content')]"
        ".some(e => e.innerText.includes('retired') && e.innerText !== b)", arg=before, timeout=60_000)
    after = page.locator(".widget-html-content").filter(has_text="retired").first.inner_text()
    assert after != before and "actions 1" in after
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / shot), full_page=True)


def test_jupyterlab_runs_the_explorer_and_its_step_button_works(browser, tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _serve([sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
                   "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}", "--allow-root",
                   f"--ServerApp.root_dir={ROOT}"], f"{base}/api/status?token={TOKEN}", tmp_path)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/lab/tree/apps/explorer.ipynb?token={TOKEN}&reset", timeout=120_000)
        page.locator(".jp-Notebook").first.wait_for(timeout=120_000)
        # Wait until the kernel is idle, then Run > Run All Cells from the menu, as a student would.
        page.get_by_text("| Idle").first.wait_for(timeout=120_000)
        page.locator(".jp-Cell").last.click()
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        page.get_by_text("[1]:").first.wait_for(timeout=120_000)   # the cell ran
        try:
            _click_step_and_check(page, "jupyterlab-explorer.png")
        except Exception:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-failure.png"), full_page=True)
            raise
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("app,expect", [("explorer", "step 100"), ("dashboard", "run APF off and on")])
def test_voila_serves_the_apps(browser, tmp_path, app, expect):
    if shutil.which("voila", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("voila is not installed in this environment")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _serve([str(Path(sys.executable).parent / "voila"), f"apps/{app}.ipynb", "--no-browser",
                   f"--port={port}", "--Voila.ip=127.0.0.1"], base, tmp_path)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(base, timeout=180_000)
        page.get_by_role("button", name=expect, exact=True).first.wait_for(timeout=180_000)
        if app == "explorer":
            _click_step_and_check(page, "voila-explorer.png")
        else:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "voila-dashboard.png"), full_page=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
