"""Browser tests: the real Streamlit server (a subprocess on a free port) driven by Debian's
headless Chromium through Playwright's Python package (``executable_path=/usr/bin/chromium``;
no downloaded browser).  Screenshots go to ``artifacts/dashboard/`` (gitignored)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import select

from storage.models import Feedback, Inspection

from .seed import PASSWORDS

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("LINEWATCH_ARTIFACTS_DIR", REPO / "artifacts")) / "dashboard"
CHROMIUM = os.environ.get("LINEWATCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-default-apps", "--mute-audio"]
WAIT_MS = 30_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (deploy/ci/system-deps.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def server_env() -> dict[str, str]:
    """Extra environment for the server (a test overrides it with ``parametrize("server_env", ...)``)."""
    return {}


@pytest.fixture
def server(seeded, tmp_path, server_env):
    """The dashboard as ``python -m dashboard`` on a free port; stopped (process group) afterwards."""
    db, sd = seeded
    port = _free_port()
    env = dict(db.env)
    env.pop("LINEWATCH_DETECTOR_METRICS_URL", None)
    env["LINEWATCH_DASHBOARD_REFRESH_S"] = "2"
    env.update(server_env)
    log = open(tmp_path / "streamlit.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dashboard", "--port", str(port), "--address", "127.0.0.1"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited: {(tmp_path / 'streamlit.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(base + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("streamlit did not become healthy in 60 s")
            time.sleep(0.3)
        yield base, db, sd
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


@pytest.fixture
def new_page(browser):
    """Makes pages, each in a browser context of its own (own cookies: as if another browser)."""
    contexts = []

    def make():
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
        contexts.append(ctx)
        pg = ctx.new_page()
        pg.set_default_timeout(WAIT_MS)
        return pg

    yield make
    for ctx in contexts:
        ctx.close()


@pytest.fixture
def page(new_page):
    return new_page()


def shot(pg, request, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    node = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    path = ARTIFACTS / f"{node}-{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    return path


def login(pg, base: str, username: str, path: str = "", password: str | None = None) -> None:
    pg.goto(f"{base}/{path}")
    pg.get_by_role("textbox", name="Username").fill(username)
    pg.get_by_role("textbox", name="Password").fill(password or PASSWORDS[username])
    pg.get_by_role("button", name="Log in").click()
    pg.get_by_text(f"{username} ·").wait_for()  # the sidebar's user line


def nav_links(pg, expect: list[str] | None = None, timeout_s: float = 15.0) -> list[str]:
    """Titles of the sidebar's page links (waits until they equal ``expect``, if given)."""
    deadline = time.monotonic() + timeout_s
    while True:
        # the link text is the material icon's ligature name, then the title
        texts = pg.locator('[data-testid="stSidebar"] [data-testid="stPageLink"] a').all_inner_texts()
        titles = [t.strip().split("\n")[-1].strip() for t in texts]
        if expect is None or titles == expect or time.monotonic() > deadline:
            return titles
        pg.wait_for_timeout(250)


def open_page(pg, title: str) -> None:
    pg.locator('[data-testid="stSidebar"] [data-testid="stPageLink"] a', has_text=title).click()


def test_visitor_sees_only_login(server, page, request):
    base, _db, _sd = server
    for path in ("", "review", "thresholds", "history"):
        page.goto(f"{base}/{path}")
        page.get_by_role("button", name="Log in").wait_for()
        page.wait_for_timeout(500)
        assert page.get_by_role("textbox", name="Username").is_visible()
        assert page.locator('[data-testid="stSidebar"]').count() == 0
        body = page.inner_text("body")
        for secret in ("Parts inspected", "Anomaly rate", "Decisions", "inspections match", "cam-a1", "P000"):
            assert secret not in body, (path, secret)
        assert page.locator('[data-testid="stImage"]').count() == 0
    shot(page, request, "login")
    # a wrong password keeps the form, with a message
    page.get_by_role("textbox", name="Username").fill("olga")
    page.get_by_role("textbox", name="Password").fill("wrong-password")
    page.get_by_role("button", name="Log in").click()
    page.get_by_text("Wrong username or password").wait_for()


def test_operator_marks_false_alarm(server, page, request):
    base, db, sd = server
    login(page, base, "olga")
    assert nav_links(page, ["Live", "Review", "History"]) == ["Live", "Review", "History"]
    page.get_by_text("Parts inspected").wait_for()
    page.wait_for_timeout(1500)
    shot(page, request, "live")
    open_page(page, "Review")
    page.get_by_text(f"Part {sd.newest_flagged_part}").first.wait_for()
    page.get_by_text("frame + heatmap").wait_for()  # the overlay image's caption
    imgs = page.locator('[data-testid="stImage"] img')
    imgs.nth(1).wait_for()  # overlay + colour bar
    # the overlay is the frame's size (320 x 240), the heatmap (160 x 120) resized onto it
    page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=imgs.first.element_handle())
    assert page.evaluate("(img) => [img.naturalWidth, img.naturalHeight]", imgs.first.element_handle()) == [320, 240]
    shot(page, request, "review")
    first = sd.flagged_ids[0]
    with db.session() as s:
        first_frame = s.get(Inspection, first).frame_id
        second_frame = s.get(Inspection, sd.flagged_ids[1]).frame_id
    assert page.get_by_text(first_frame).count() >= 1
    page.get_by_role("textbox", name="Comment (optional)").fill("glare on the shoulder")
    page.get_by_role("button", name="False alarm").click()
    page.get_by_text(second_frame).wait_for()  # the next item came up
    page.get_by_text(f"Saved: False alarm (inspection {first})").wait_for()
    shot(page, request, "review-after")
    with db.session() as s:
        rows = s.scalars(select(Feedback).where(Feedback.inspection_id == first)).all()
        assert [(r.label, r.username, r.comment) for r in rows] == [
            ("false_alarm", "olga", "glare on the shoulder")]
        assert s.get(Inspection, first).current_feedback == "false_alarm"


def test_operator_cannot_open_thresholds(server, page, request):
    base, _db, _sd = server
    login(page, base, "olga", "thresholds")  # log in on the thresholds URL itself
    page.get_by_text("This page is not available to your role (operator)").wait_for()
    page.wait_for_timeout(1000)
    assert nav_links(page, ["Live", "Review", "History"]) == ["Live", "Review", "History"]
    assert page.get_by_role("heading", name="Thresholds").count() == 0
    assert page.get_by_text("Save threshold").count() == 0
    shot(page, request, "operator-thresholds")


def test_engineer_opens_thresholds(server, page, request):
    base, _db, _sd = server
    login(page, base, "erik")
    everything = ["Live", "Review", "History", "Thresholds", "Models"]
    assert nav_links(page, everything) == everything
    open_page(page, "Thresholds")
    page.get_by_role("heading", name="Thresholds").wait_for()
    page.get_by_text("What a threshold would give on stored data").wait_for()
    page.get_by_role("button", name=re.compile(r"Save threshold")).wait_for()
    page.wait_for_timeout(1000)
    shot(page, request, "thresholds")
