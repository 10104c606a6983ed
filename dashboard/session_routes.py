"""The two HTTP routes that set and clear the login cookie (served beside the Streamlit app by
:mod:`dashboard.server`).

``POST /api/session`` with a one-time handoff code as the body (see :mod:`storage.sessions`)
answers 204 with ``Set-Cookie: linewatch_session=<token>; HttpOnly; SameSite=Strict; Path=/``
(``Secure`` over https), or 403.  ``POST /api/session/logout`` revokes the cookie's session
and clears the cookie.
"""

from __future__ import annotations

import functools
from datetime import datetime

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dashboard.cookie import COOKIE, LOGOUT_PATH, SESSION_PATH
from dashboard.settings import DashboardSettings
from storage.db import init_db, make_engine, write_session
from storage.models import utcnow
from storage.sessions import revoke_session, take_handoff
from storage.settings import StorageSettings

MAX_BODY = 256  # a handoff code is 43 characters


@functools.lru_cache(maxsize=4)
def _engine_for(url: str) -> Engine:
    return init_db(make_engine(url))  # idempotent; a request may come before the app script ran


def _engine() -> Engine:
    return _engine_for(StorageSettings().url)


def _exchange(code: str) -> tuple[str, datetime] | None:
    with write_session(_engine()) as s:
        return take_handoff(s, code)


def _revoke(token: str) -> None:
    with write_session(_engine()) as s:
        revoke_session(s, token=token)


def _secure(request: Request, settings: DashboardSettings) -> bool:
    if settings.dashboard_cookie_secure is not None:
        return settings.dashboard_cookie_secure
    if request.url.scheme in ("https", "wss"):
        return True
    forwarded = request.headers.get("x-forwarded-proto", "") if settings.dashboard_trusted_proxy_hops else ""
    return "https" in forwarded.lower()


async def take_session(request: Request) -> Response:
    body = await request.body()
    if len(body) > MAX_BODY:
        return Response(status_code=413)
    try:
        taken = await run_in_threadpool(_exchange, body.decode("ascii").strip())
    except UnicodeDecodeError:
        taken = None
    if taken is None:
        return Response(status_code=403)
    token, expires_at = taken
    response = Response(status_code=204, headers={"Cache-Control": "no-store"})
    response.set_cookie(COOKIE, token, max_age=max(1, int((expires_at - utcnow()).total_seconds())), path="/",
                        secure=_secure(request, DashboardSettings()), httponly=True, samesite="strict")
    return response


async def end_session(request: Request) -> Response:
    token = request.cookies.get(COOKIE)
    if token:
        await run_in_threadpool(_revoke, token)
    response = Response(status_code=204, headers={"Cache-Control": "no-store"})
    response.delete_cookie(COOKIE, path="/", secure=_secure(request, DashboardSettings()), httponly=True,
                           samesite="strict")
    return response


ROUTES = [
    Route(f"/{SESSION_PATH}", take_session, methods=["POST"]),
    Route(f"/{LOGOUT_PATH}", end_session, methods=["POST"]),
]
