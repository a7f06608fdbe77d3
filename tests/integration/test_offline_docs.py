"""The Data Docs site and the API's /docs render in a real headless Chromium with no network
beyond loopback (every other request goes to a dead proxy), as on a cluster without internet."""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from expectations.runner import run_suite
from expectations.suites import GOLD_DAILY_ACTIVE_USERS
from lklab.core.config import Settings
from tests.conftest import free_port
from tests.integration.test_expectations import dau, where

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium")


def render(url: str, profile: Path) -> tuple[str, list[str]]:
    """The page's DOM after its scripts ran, and the console errors Chromium logged."""
    assert CHROMIUM, "chromium not found: scripts/setup.sh installs it (apt-get install chromium)"
    shown = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--disable-sync", f"--user-data-dir={profile}", "--proxy-server=http://127.0.0.1:9",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    return shown.stdout, [line for line in shown.stderr.splitlines() if ":CONSOLE" in line and "Uncaught" in line]


def loaded_assets(page: Path) -> list[str]:
    """What a page loads by itself: <script src>, <link href>, <img src> (not the <a> links)."""
    return re.findall(r"<(?:script|link|img)\b[^>]*?\b(?:src|href)=[\"']([^\"']+)[\"']", page.read_text())


def test_data_docs_render_offline_with_their_list_styles_and_icons(spark, tmp_path: Path) -> None:
    assert run_suite(tmp_path, GOLD_DAILY_ACTIVE_USERS, dau(spark)).passed
    failed = run_suite(tmp_path, GOLD_DAILY_ACTIVE_USERS, where(dau(spark), "city = 'paris'", active_users="-1"))
    assert not failed.passed
    site = failed.data_docs_index.parent
    pages = sorted(site.rglob("*.html"))
    validations = [p for p in pages if "validations" in p.parts]
    assert len(validations) == 2

    for page in pages:  # every script, style, font and image a page loads is in the site itself
        for asset in loaded_assets(page):
            assert "://" not in asset, f"{page.relative_to(site)} loads {asset}"
            assert (page.parent / asset.split("?")[0]).resolve().is_file(), f"{page.relative_to(site)}: {asset} missing"
    fonts = site / "static" / "vendor" / "@fortawesome" / "fontawesome-free@6.6.0"
    for font in re.findall(r"url\((\.\./webfonts/[^)]+)\)", (fonts / "css" / "all.min.css").read_text()):
        assert (fonts / "css" / font).resolve().is_file(), font

    dom, errors = render(failed.data_docs_index.as_uri(), tmp_path / "chromium-index")
    assert errors == []
    drawn = re.findall(r'<tr class="clickable-row" data-href="([^"]+)" data-index="\d+">', dom)  # bootstrap-table's rows
    assert sorted(drawn) == sorted(p.relative_to(site).as_posix() for p in pages if p != failed.data_docs_index), dom[-3000:]
    for page in validations:
        dom, errors = render(page.as_uri(), tmp_path / f"chromium-{page.parent.name}")
        assert errors == [] and GOLD_DAILY_ACTIVE_USERS in dom


@pytest.fixture
def api_url(isolated: Settings):
    port = free_port()
    env = {**isolated.to_env(), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "lklab.cli", "serve", "--port", str(port)], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_api_docs_render_offline(api_url: str, tmp_path: Path) -> None:
    dom, errors = render(f"{api_url}/docs", tmp_path / "chromium-docs")
    assert errors == []
    operations = re.findall(r'data-path="([^"]+)"', dom)  # Swagger UI draws one block per operation
    assert {"/views", "/views/{view}", "/lambda/status", "/health"} <= set(operations), dom[-3000:]
    dom, errors = render(f"{api_url}/redoc", tmp_path / "chromium-redoc")
    assert errors == [] and "/views/{view}" in dom
