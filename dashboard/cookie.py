"""The login cookie, page side.

Streamlit's script cannot set a cookie (it talks to the browser over a WebSocket), and a
cookie set by page JavaScript cannot be HttpOnly.  So the HTTP routes in
:mod:`dashboard.server` set and clear it, and this module only makes the browser call them:
after a login, a tiny ``st.components.v2`` component POSTs the one-time handoff code to
``api/session`` (the response sets the HttpOnly cookie with the session token); after a
logout it POSTs to ``api/session/logout`` (which clears it).  Reading it back is
``st.context.cookies`` (the cookies of the WebSocket's opening request, i.e. after a reload).
"""

from __future__ import annotations

import streamlit as st

COOKIE = "linewatch_session"
SESSION_PATH = "api/session"
LOGOUT_PATH = "api/session/logout"

HANDOFF_KEY = "lw_cookie_handoff"  # a one-time code waiting to become the cookie
CLEAR_KEY = "lw_cookie_clear"  # a logout whose cookie is still to be cleared (a nonce: one POST each)

# One POST per (path, body): the function runs again on every rerun while the element is shown.
_JS = """
const sent = new Set();
export default function(component) {
    const { data, setTriggerValue } = component;
    if (!data || !data.path) return;
    const once = data.path + "\\n" + (data.body || "");
    if (sent.has(once)) return;
    sent.add(once);
    fetch(new URL(data.path, window.location.href), {
        method: "POST", body: data.body || "", credentials: "same-origin", cache: "no-store",
        headers: {"Content-Type": "text/plain"},
    }).then((r) => setTriggerValue("done", r.ok), () => setTriggerValue("done", false));
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


def sync_cookie() -> None:
    """Make the browser fetch or drop the cookie if a login or logout is waiting for it."""
    ss = st.session_state
    if ss.get(HANDOFF_KEY):
        _component(key="lw_cookie_set", data={"path": SESSION_PATH, "body": ss[HANDOFF_KEY]}, height=0,
                   on_done_change=lambda: ss.pop(HANDOFF_KEY, None))
    elif ss.get(CLEAR_KEY):
        _component(key="lw_cookie_clear", data={"path": LOGOUT_PATH, "body": ss[CLEAR_KEY]}, height=0,
                   on_done_change=lambda: ss.pop(CLEAR_KEY, None))
