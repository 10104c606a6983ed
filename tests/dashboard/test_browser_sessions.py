"""Browser tests of the login session: the cookie keeps a login across reloads, logout,
disabling a user or changing a password ends sessions, failed logins are throttled per client
address.  Same harness as ``test_browser.py`` (real server, Debian's Chromium)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from dashboard.auth import REFUSED
from dashboard.cookie import COOKIE
from storage.models import LoginAddressFailure, LoginSession, User

from .seed import PASSWORDS
from .test_browser import browser, login, new_page, open_page, page, server, shot  # noqa: F401

pytestmark = pytest.mark.browser

QUIET = {"LINEWATCH_DASHBOARD_REFRESH_S": "600"}  # no Live refresh keeping the server busy between clicks


@pytest.fixture
def server_env() -> dict[str, str]:
    return QUIET


def session_cookie(pg, present: bool = True, timeout_s: float = 15.0) -> dict | None:
    """The login cookie once it is there (``present``) or gone (not ``present``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        cookie = next((c for c in pg.context.cookies() if c["name"] == COOKIE), None)
        if (cookie is not None) == present:
            return cookie
        assert time.monotonic() < deadline, f"cookie {'never came' if present else 'still there'}"
        pg.wait_for_timeout(100)


def logged_out(pg) -> None:
    pg.get_by_role("button", name="Log in").wait_for()
    # no user line, no page links (an empty sidebar may stay after a page link was clicked)
    pg.get_by_role("button", name="Log out").wait_for(state="detached")
    assert pg.locator('[data-testid="stPageLink"]').count() == 0


def choose(pg, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox ``label`` (the list can re-render under the click: retry)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(5):
        pg.get_by_role("combobox", name=label).click()
        try:
            pg.get_by_role("option", name=option, exact=True).click(timeout=3000)
            return
        except PlaywrightTimeout:
            pg.keyboard.press("Escape")
    raise AssertionError(f"could not choose {option!r} in {label!r}")


def sessions_of(db, username: str) -> list[LoginSession]:
    with db.session() as s:
        user_id = s.scalar(select(User.id).where(User.username == username))
        return list(s.scalars(select(LoginSession).where(LoginSession.user_id == user_id).order_by(LoginSession.id)))


def test_reload_keeps_login_and_logout_ends_it(server, page, new_page, request):
    base, db, _sd = server
    login(page, base, "olga")
    cookie = session_cookie(page)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert not cookie["secure"]  # plain http here; https (or a trusted proxy's X-Forwarded-Proto) sets it
    assert cookie["expires"] > time.time() + 11 * 3600  # 12 h by default
    assert COOKIE not in page.evaluate("() => document.cookie")  # HttpOnly: page scripts cannot read it
    page.reload()
    page.get_by_text("olga ·").wait_for()
    page.get_by_text("Parts inspected").wait_for()
    other_tab = page.context.new_page()  # another tab of the same browser: logged in too, on a deep link
    other_tab.goto(f"{base}/history")
    other_tab.get_by_text("olga ·").wait_for()
    other_tab.close()
    shot(page, request, "after-reload")

    page.get_by_role("button", name="Log out").click()
    logged_out(page)
    session_cookie(page, present=False)
    page.reload()
    logged_out(page)
    assert [s.revoked_at is not None for s in sessions_of(db, "olga")] == [True]
    # the old token, replayed from elsewhere, is dead on the server too
    thief = new_page()
    thief.context.add_cookies([{**cookie, "expires": -1}])
    thief.goto(f"{base}/review")
    logged_out(thief)


def test_disabled_user_is_logged_out_on_next_action(server, new_page, request):
    base, db, _sd = server
    olga = new_page()
    login(olga, base, "olga")
    session_cookie(olga)
    admin = new_page()
    login(admin, base, "ada", "users")
    admin.get_by_role("heading", name="Users").wait_for()
    admin.get_by_role("button", name="Disable").wait_for()
    choose(admin, "User", "olga")
    admin.get_by_role("button", name="Disable").click()
    admin.get_by_text("olga disabled and logged out").wait_for()
    shot(admin, request, "admin-disabled")
    open_page(olga, "Review")  # her next click
    logged_out(olga)
    olga.reload()  # and the cookie does not bring her back
    logged_out(olga)
    assert all(s.revoked_at is not None for s in sessions_of(db, "olga"))


def test_password_change_ends_other_sessions(server, new_page, request):
    base, db, _sd = server
    here, there = new_page(), new_page()
    login(here, base, "olga")
    login(there, base, "olga")
    session_cookie(here)
    here.get_by_role("button", name="Change password").click()
    here.get_by_label("Current password").fill(PASSWORDS["olga"])
    here.get_by_label("New password (8+ characters)").fill("a-brand-new-pass")
    here.get_by_label("New password again").fill("a-brand-new-pass")
    here.get_by_role("button", name="Change password").last.click()
    here.get_by_text("Password changed; your other logins are ended.").wait_for()
    shot(here, request, "changed")
    open_page(there, "History")  # the other browser's next click
    logged_out(there)
    here.reload()  # the browser that changed it stays logged in
    here.get_by_text("olga ·").wait_for()
    assert [s.revoked_at is None for s in sessions_of(db, "olga")] == [True, False]
    login(there, base, "olga", password="a-brand-new-pass")


@pytest.mark.parametrize("server_env", [{**QUIET, "LINEWATCH_DASHBOARD_LOGIN_MAX_FAILURES_PER_ADDRESS": "3"}])
def test_failed_logins_are_throttled_per_address(server, new_page, request):
    base, db, _sd = server

    def attempt(pg, username: str, password: str) -> None:
        pg.get_by_role("textbox", name="Username").fill(username)
        pg.get_by_role("textbox", name="Password", exact=True).fill(password)
        pg.get_by_role("button", name="Log in").click()

    def address_failures() -> int:
        with db.session() as s:
            row = s.get(LoginAddressFailure, "local")  # Streamlit's loopback peer
            return row.failures if row else 0

    # three failures from two browsers (separate sessions, no shared cookie): only the address links them
    first, second = new_page(), new_page()
    first.goto(f"{base}/")
    attempt(first, "nobody-at-all", "some-password")
    first.get_by_text(REFUSED).wait_for()
    unknown_user = first.locator('[data-testid="stAlert"]').inner_text()
    attempt(first, "olga", "wrong-password")
    deadline = time.monotonic() + 15
    while address_failures() < 2:
        assert time.monotonic() < deadline
        first.wait_for_timeout(100)
    second.goto(f"{base}/")
    attempt(second, "erik", "wrong-password")
    second.get_by_text(REFUSED).wait_for()
    assert second.locator('[data-testid="stAlert"]').inner_text() == unknown_user  # a known user reads the same
    # the right password, from a browser session with a single failure, now has to wait
    attempt(second, "olga", PASSWORDS["olga"])
    second.get_by_text("Too many failed logins. Try again in").wait_for()
    shot(second, request, "throttled")
    assert second.get_by_text("olga ·").count() == 0
    assert address_failures() == 3
    assert sessions_of(db, "olga") == []
