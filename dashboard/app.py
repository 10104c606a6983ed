"""linewatch operator dashboard (Streamlit multipage app).

Run:  ``streamlit run dashboard/app.py``  or  ``python -m dashboard [--port N]``.

Nothing but the login form is registered until someone logs in; then the pages their role
allows: Live, Review, History for everyone; Thresholds for engineers and admins; Users for
admins.  A page that is not registered for the session cannot be opened, even by URL, and
each page checks the role again itself.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard.common import current_user, log_out
from storage.users import role_allows

st.set_page_config(page_title="linewatch", page_icon=":mag:", layout="wide")

VIEWS = Path(__file__).with_name("views")

user = current_user()
if user is None:
    page = st.navigation([st.Page(VIEWS / "login.py", title="Log in", url_path="login", default=True)],
                         position="hidden")
    page.run()
else:
    pages = [
        st.Page(VIEWS / "live.py", title="Live", icon=":material/monitoring:", url_path="live", default=True),
        st.Page(VIEWS / "review.py", title="Review", icon=":material/fact_check:", url_path="review"),
        st.Page(VIEWS / "history.py", title="History", icon=":material/history:", url_path="history"),
    ]
    if role_allows(user.role, "engineer"):
        pages.append(st.Page(VIEWS / "thresholds.py", title="Thresholds", icon=":material/tune:",
                             url_path="thresholds"))
    if role_allows(user.role, "admin"):
        pages.append(st.Page(VIEWS / "users.py", title="Users", icon=":material/group:", url_path="users"))
    page = st.navigation(pages)
    with st.sidebar:
        st.markdown(f"**{user.username}** · {user.role}")
        if st.button("Log out", key="logout"):
            log_out()
            st.rerun()
    page.run()
