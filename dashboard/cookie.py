"""The login cookie, page side.

Streamlit's script cannot set a cookie (it talks to the browser over a WebSocket), and a
cookie set by page JavaScript cannot be HttpOnly.  So the HTTP routes in
:mod:`dashboard.session_routes` set and clear it, and this module only makes the browser call them:
after a login, a tiny ``st.components.v2`` component POSTs the one-time handoff code to
``api/session`` (the response sets the HttpOnly cookie with the session token); after a
logout it POSTs to ``api/session/logout`` (which clears it).  Reading it back is
``st.context.cookies`` (the cookies of the WebSocket's opening request, i.e. after a reload).
"""

from __future__ import annotations

import time

import streamlit as st

COOKIE = "linewatch_session"
SESSION_PATH = "api/session"
LOGOUT_PATH = "api/session/logout"

HANDOFF_KEY = "lw_cookie_handoff"  # a one-time code waiting to become the cookie
CLEAR_KEY = "lw_cookie_clear"  # a logout whose cookie is still to be cleared (a nonce: one POST each)
# How long the component stays on the page after a login or logout.  It reports nothing back:
# a report would rerun the app, and a rerun racing a page-link click can undo the navigation.
SHOW_S = 60.0

# One POST per (path, body): the function runs again on every rerun while the element is shown.
_JS = """
const sent = new Set();
export default function(component) {
    const { data } = component;
    if (!data || !data.path) return;
    const once = data.path + "\\n" + (data.body || "");
    if (sent.has(once)) return;
    sent.add(once);
    fetch(new URL(data.path, window.location.href), {
        method: "POST", body: data.body || "", credentials: "same-origin", cache: "no-store",
        headers: {"Content-Type": "text/plain"},
    }).catch(() => sent.delete(once));
}
"""

_component = st.components.v2.component("linewatch_session_cookie", js=_JS)


def cookie_token() -> str | None:
    """The session token the browser sent when this tab connected (``None``: none)."""
    try:
        value = st.context.cookies.get(COOKIE)
    except Exception:  # noqa: BLE001 - no browser connection (e.g. AppTest): no cookie
        return None
    return value if isinstance(value, str) and value else None


def pending(key: str, body: str) -> None:
    """Ask the browser to POST ``body`` for ``key`` (:data:`HANDOFF_KEY` or :data:`CLEAR_KEY`)."""
    for other in (HANDOFF_KEY, CLEAR_KEY):
        st.session_state.pop(other, None)
    st.session_state[key] = {"body": body, "until": time.time() + SHOW_S}


def sync_cookie() -> None:
    """Show the component while a login or logout waits for the browser to fetch or drop the cookie."""
    for key, path in ((HANDOFF_KEY, SESSION_PATH), (CLEAR_KEY, LOGOUT_PATH)):
        job = st.session_state.get(key)
        if job and job["until"] > time.time():
            _component(key=f"{key}_component", data={"path": path, "body": job["body"]}, height=0)
        else:
            st.session_state.pop(key, None)
