"""The login-cookie routes over HTTP (Starlette's TestClient, no browser): flags of the cookie,
single use of the handoff code, Secure over https or behind a trusted proxy, logout."""

from __future__ import annotations

from datetime import timedelta

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from dashboard.cookie import COOKIE
from dashboard.session_routes import ROUTES
from storage.db import write_session
from storage.models import LoginSession
from storage.sessions import live_session, start_session
from storage.users import get_user


@pytest.fixture
def handoff(seeded):
    db, _ = seeded

    def make() -> str:
        with write_session(db.engine) as s:
            return start_session(s, get_user(s, "olga"), timedelta(hours=12)).handoff_code

    return db, make


def client(base_url: str = "http://testserver") -> TestClient:
    return TestClient(Starlette(routes=ROUTES), base_url=base_url)


def test_handoff_sets_an_httponly_strict_cookie_once(handoff):
    db, make = handoff
    code = make()
    with client() as c:
        assert c.post("/api/session", content="not-a-code").status_code == 403
        r = c.post("/api/session", content=code)
        assert r.status_code == 204
        header = r.headers["set-cookie"]
        assert header.startswith(f"{COOKIE}=")
        assert "HttpOnly" in header and "SameSite=strict" in header and "Path=/" in header
        assert "Secure" not in header  # plain http
        max_age = int(header.split("Max-Age=")[1].split(";")[0])
        assert 12 * 3600 - 60 <= max_age <= 12 * 3600
        assert c.post("/api/session", content=code).status_code == 403  # spent
        assert c.post("/api/session", content="x" * 1000).status_code == 413
    token = r.cookies[COOKIE]
    with db.session() as s:
        assert live_session(s, token=token).user.username == "olga"


@pytest.mark.parametrize("base_url, env, headers, secure", [
    ("https://testserver", {}, {}, True),
    ("http://testserver", {}, {"X-Forwarded-Proto": "https"}, False),  # anyone can send the header
    ("http://testserver", {"LINEWATCH_DASHBOARD_TRUSTED_PROXY_HOPS": "1"}, {"X-Forwarded-Proto": "https"}, True),
    ("https://testserver", {"LINEWATCH_DASHBOARD_COOKIE_SECURE": "false"}, {}, False),
])
def test_secure_flag(handoff, monkeypatch, base_url, env, headers, secure):
    _, make = handoff
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with client(base_url) as c:
        r = c.post("/api/session", content=make(), headers=headers)
    assert r.status_code == 204
    assert ("Secure" in r.headers["set-cookie"]) == secure


def test_logout_revokes_and_clears(handoff):
    db, make = handoff
    with client() as c:
        token = c.post("/api/session", content=make()).cookies[COOKIE]
        assert c.cookies.get(COOKIE) == token  # the client keeps it like a browser
        r = c.post("/api/session/logout")
        assert r.status_code == 204
        assert "Max-Age=0" in r.headers["set-cookie"]
        assert COOKIE not in c.cookies
        assert c.post("/api/session/logout").status_code == 204  # no cookie: nothing to do
        assert c.get("/api/session/logout").status_code == 405
    with db.session() as s:
        assert live_session(s, token=token) is None
        assert s.query(LoginSession).one().revoked_at is not None
