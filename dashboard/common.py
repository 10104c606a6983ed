"""Shared plumbing of the dashboard pages: database engine, blob store, the logged-in user.

Pages call :func:`require_role` first: it stops the script (showing nothing but a notice)
unless a user with at least that role is logged in.  The login is a server-side session
(:mod:`storage.sessions`): the tab keeps its id, a reload finds it again through the cookie
(:mod:`dashboard.cookie`).  Session and user are re-read from the database on every run, so
logging out elsewhere, a password change, removing, disabling or demoting an account takes
effect at the next click.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import streamlit as st
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from storage.blobs import BlobStore, make_blob_store
from storage.db import init_db, make_engine, write_session
from storage.settings import StorageSettings
from storage.sessions import live_session, revoke_session
from storage.users import role_allows

from .cookie import CLEAR_KEY, HANDOFF_KEY, cookie_token, pending
from .settings import DashboardSettings

USER_KEY = "lw_user"


def _warm_imports() -> None:
    """Import what the pages need (pandas, altair, pyarrow, OpenCV: ~2 s) in the background
    while the first visitor is still on the login form, so their first page is not the slow one."""
    import importlib

    for name in ("pandas", "pyarrow", "altair", "cv2", "PIL.Image", "dashboard.images", "dashboard.live_logic",
                 "storage.queries.live", "storage.queries.review", "storage.queries.history",
                 "storage.queries.thresholds"):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the page itself will report a real import problem
            pass


threading.Thread(target=_warm_imports, name="linewatch-warm-imports", daemon=True).start()


@dataclass(frozen=True)
class CurrentUser:
    username: str
    role: str
    session_id: int


@st.cache_resource(show_spinner=False)
def _resources(url: str, data_dir: str, blob_store: str) -> tuple[Engine, BlobStore]:
    settings = StorageSettings()
    engine = make_engine(settings=settings)
    init_db(engine)  # migrations are idempotent; a fresh database gets the schema
    return engine, make_blob_store(settings, engine)


def storage_settings() -> StorageSettings:
    return StorageSettings()


def resources() -> tuple[Engine, BlobStore]:
    s = storage_settings()
    return _resources(s.url, str(s.data_dir), s.blob_store)


def engine() -> Engine:
    return resources()[0]


def blobs() -> BlobStore:
    return resources()[1]


def dashboard_settings() -> DashboardSettings:
    return DashboardSettings()


@contextlib.contextmanager
def read_session() -> Iterator[Session]:
    with Session(engine(), expire_on_commit=False) as s:
        yield s


@contextlib.contextmanager
def writing() -> Iterator[Session]:
    with write_session(engine()) as s:
        yield s


def current_user() -> CurrentUser | None:
    """The logged-in user: this tab's session, else the cookie's (after a reload), if it is still
    live in the database (not expired or revoked, user active); otherwise logged out."""
    state = st.session_state.get(USER_KEY)
    with read_session() as s:
        if state:
            row = live_session(s, session_id=state.get("session_id"))
        else:
            token = cookie_token()
            row = live_session(s, token=token) if token else None
        if row is None:
            st.session_state.pop(USER_KEY, None)
            return None
        user = CurrentUser(row.user.username, row.user.role, row.id)
    st.session_state[USER_KEY] = {"username": user.username, "role": user.role, "session_id": user.session_id}
    return user


_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
# GitHub-flavoured Markdown turns bare "http://", "www." and "name@host" into links even when their
# punctuation is escaped; an invisible word joiner on both sides of ':', '.' and '@' breaks those patterns
# (after the character alone is not enough: "www." followed by a joiner still starts a link)
_AUTOLINK_BREAK = re.compile(r"([:.@])")
WORD_JOINER = "\u2060"


def md_text(value: object) -> str:
    """``value`` as literal text inside Streamlit Markdown: every ASCII punctuation character escaped,
    and a word joiner (invisible) on both sides of each ':', '.' and '@' so that no address becomes a link.

    Values that come from cameras and producers (camera, line, part, product, model version) go
    through this, so ``[x](http://...)``, ``**``, ``_``, ``www.`` or e-mail addresses are shown, never
    rendered or linked (checked in Chromium: ``tests/dashboard/test_browser_plain_text.py``).
    """
    text = _AUTOLINK_BREAK.sub(WORD_JOINER + r"\1" + WORD_JOINER, str(value))
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", text)


def authorize(needed: str) -> CurrentUser | None:
    """The current user if their role, read from the database now, allows ``needed``; else ``None``.

    Actions that run in widget callbacks (before the page script, so before :func:`require_role`)
    call this at the moment they act: a user disabled or demoted while their tab was open does nothing.
    """
    user = current_user()
    return user if user is not None and role_allows(user.role, needed) else None


def require_role(needed: str) -> CurrentUser:
    """Stop the page unless someone with at least ``needed`` is logged in."""
    user = current_user()
    if user is None:
        st.warning("Please log in.")
        st.stop()
    if not role_allows(user.role, needed):
        st.error(f"This page is for {needed}s and above; you are logged in as {user.role}.")
        st.stop()
    return user


def log_in(username: str, role: str, session_id: int, handoff_code: str) -> None:
    st.session_state[USER_KEY] = {"username": username, "role": role, "session_id": session_id}
    pending(HANDOFF_KEY, handoff_code)  # the browser turns it into the cookie


def log_out() -> None:
    """End this login everywhere (the session is revoked) and forget this tab's state."""
    state = st.session_state.get(USER_KEY)
    if state:
        with writing() as s:
            revoke_session(s, session_id=state["session_id"])
    for key in list(st.session_state.keys()):
        del st.session_state[key]
    pending(CLEAR_KEY, secrets.token_hex(8))


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f} %"
