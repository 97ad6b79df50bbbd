"""The HTML report in a real headless browser: Debian's chromium, driven by Playwright.

The browser is the system's ``/usr/bin/chromium`` (never a browser build Playwright would
download). When it is missing and the tests run as root with ``apt-get``, the session installs
it with ``apt-get install -y chromium`` (after an ``apt-get update`` if the first try fails) and
fails loudly if that does not work; without root and without chromium the test is skipped.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dropkit.lab.execute.engines import InProcessEngine
from dropkit.lab.execute.runner import run_configs
from dropkit.lab.results.report import write_report
from dropkit.lab.store import ResultsStore
from test_lab_report import _configs

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags chromium keeps calling home, into a closed network.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(
        ["apt-get", *args], capture_output=True, text=True, env=env, timeout=900, check=False
    )


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, installed with apt-get when missing and we are root."""
    if CHROMIUM.exists():
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is missing and installing it needs root and apt-get")
    result = _apt("install", "-y", "chromium")
    if result.returncode != 0:  # a fresh machine may have no package lists yet
        _apt("update")
        result = _apt("install", "-y", "chromium")
    if result.returncode != 0 or not CHROMIUM.exists():
        pytest.fail(
            f"`apt-get install -y chromium` failed (exit {result.returncode}): "
            f"{(result.stderr or result.stdout)[-2000:]}"
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A report with every chart: a real trained sweep on circles (two features)."""
    folder = tmp_path_factory.mktemp("browser")
    with ResultsStore(folder / "runs.sqlite") as store:
        outcome = run_configs(_configs(seeds=2), store, engine=InProcessEngine(compile=False))
        return write_report(store, folder / "report.html", keys=outcome.keys)


def _colours(png: bytes) -> int:
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.uint32)
    packed = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    return int(np.unique(packed).size)


def test_report_in_chromium(chromium: Path, report_file: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile
            executable_path=str(chromium),
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"failed request {r.url}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report_file.as_uri(), wait_until="load")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth, e.naturalHeight])"
            )
            shots = {alt: page.locator(f'img[alt="{alt}"]').screenshot() for alt, *_ in images}
            full = page.screenshot(full_page=True)
            title = page.title()
        finally:
            context.close()
    assert errors == []
    # The page itself and its inline images only: nothing from any network.
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert title.startswith("dropkit report")
    alts = [alt for alt, *_ in images]
    assert alts == [
        "arm comparison chart",
        "rate vs accuracy",
        "learning curves",
        "decision boundaries",
        "MC-dropout uncertainty map",
    ]
    for alt, complete, width, height in images:
        assert complete and width > 300 and height > 100, (alt, width, height)
    # Each chart as drawn on screen: lines, points, text and colour maps give many colours;
    # a blank or broken image gives one or two.
    for alt, png in shots.items():
        assert _colours(png) > 100, alt
    assert _colours(full) > 1000
