"""linewatch operator dashboard (Streamlit multipage app).

Run:  ``python -m dashboard [--port N]``  or  ``streamlit run dashboard/server.py`` (this script behind
``st.App``, which adds the login-cookie routes; run alone, a reload asks for the login again).

Before login every URL (``/``, ``/review``, ``/thresholds``, ...) shows the login form and
nothing else; after login the same URL opens the page, if the role allows it.  Pages by role:
Live, Review, History for everyone; Thresholds and Models for engineers and admins; Users for admins.
A page the role does not allow is answered by a "not allowed" notice (and is not linked in the
sidebar); each page also checks the role itself.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard.auth import change_own_password
from dashboard.common import current_user, log_out
from dashboard.cookie import sync_cookie
from storage.users import role_allows

st.set_page_config(page_title="linewatch", page_icon=":mag:", layout="wide")

VIEWS = Path(__file__).with_name("views")

# (url path, title, icon, least role)
PAGES = [
    ("live", "Live", ":material/monitoring:", "operator"),
    ("review", "Review", ":material/fact_check:", "operator"),
    ("history", "History", ":material/history:", "operator"),
    ("thresholds", "Thresholds", ":material/tune:", "engineer"),
    ("models", "Models", ":material/model_training:", "engineer"),
    ("users", "Users", ":material/group:", "admin"),
]

user = current_user()
sync_cookie()
if user is None:
    login = VIEWS / "login.py"
    pages = [st.Page(login, title="Log in", url_path="login", default=True)]
    pages += [st.Page(login, title="Log in", url_path=path) for path, *_ in PAGES]
    st.navigation(pages, position="hidden").run()
else:
    allowed, denied = [], []
    for path, title, icon, needed in PAGES:
        if role_allows(user.role, needed):
            allowed.append(st.Page(VIEWS / f"{path}.py", title=title, icon=icon, url_path=path,
                                   default=path == "live"))
        else:
            denied.append(st.Page(VIEWS / "denied.py", title=title, url_path=path))
    page = st.navigation(allowed + denied, position="hidden")
    with st.sidebar:
        st.markdown("### linewatch")
        for p in allowed:
            st.page_link(p)
        st.divider()
        st.markdown(f"**{user.username}** · {user.role}")
        with st.popover("Change password"), st.form("own_password", clear_on_submit=True, border=False):
            current = st.text_input("Current password", type="password", autocomplete="current-password")
            new = st.text_input("New password (8+ characters)", type="password", autocomplete="new-password")
            repeat = st.text_input("New password again", type="password", autocomplete="new-password")
            if st.form_submit_button("Change password"):
                problem = change_own_password(user, current, new, repeat)
                if problem:
                    st.error(problem)
                else:
                    st.success("Password changed; your other logins are ended.")
        if st.button("Log out", key="logout"):
            log_out()
            st.rerun()
    page.run()
