"""The login form: the only thing a visitor who is not logged in can see."""

from __future__ import annotations

import streamlit as st

from dashboard.auth import attempt_login, request_address
from dashboard.common import dashboard_settings

_, mid, _ = st.columns([1, 2, 1])
mid.title("linewatch")
mid.caption("Visual inspection dashboard. Please log in.")

with mid.form("login", clear_on_submit=False):
    username = st.text_input("Username", key="login_username", autocomplete="username")
    password = st.text_input("Password", type="password", key="login_password", autocomplete="current-password")
    submitted = st.form_submit_button("Log in", type="primary")

if submitted:
    settings = dashboard_settings()
    result = attempt_login(username, password, settings, request_address(settings))
    if result.ok:
        st.rerun()
    else:
        mid.error(result.message)
