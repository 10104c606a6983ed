"""Users (admins): the same account management as ``linewatch-storage users ...``."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.common import read_session, require_role, writing
from storage.models import ROLES
from storage.users import add_user, list_users, remove_user, set_active, set_password, set_role

me = require_role("admin")
ss = st.session_state

st.title("Users")
if "users_msg" in ss:
    st.success(ss.pop("users_msg"))

with read_session() as s:
    users = list_users(s)
st.dataframe(pd.DataFrame([{
    "username": u.username, "role": u.role, "active": u.is_active, "failed logins": u.failed_logins,
    "locked until (UTC)": f"{u.locked_until:%Y-%m-%d %H:%M:%S}" if u.locked_until else "",
    "last login (UTC)": f"{u.last_login_at:%Y-%m-%d %H:%M:%S}" if u.last_login_at else "",
} for u in users]), hide_index=True, width="stretch")

left, right = st.columns(2, gap="large")
with left, st.form("users_add", clear_on_submit=True):
    st.subheader("Add a user")
    name = st.text_input("Username")
    pw = st.text_input("Password (8+ characters)", type="password")
    role = st.selectbox("Role", ROLES)
    if st.form_submit_button("Add"):
        try:
            with writing() as s:
                add_user(s, name.strip(), pw, role)
            ss["users_msg"] = f"Added {name.strip()} ({role})."
            st.rerun()
        except ValueError as exc:
            st.error(str(exc))

with right:
    st.subheader("Change a user")
    names = [u.username for u in users]
    who = st.selectbox("User", names, key="users_who")
    new_role = st.selectbox("Role", ROLES, key="users_role")
    new_pw = st.text_input("New password", type="password", key="users_pw")
    c = st.columns(4)
    try:
        if c[0].button("Set role", key="users_set_role"):
            with writing() as s:
                set_role(s, who, new_role)
            ss["users_msg"] = f"{who} is now {new_role}."
            st.rerun()
        if c[1].button("Set password", key="users_set_pw", disabled=not new_pw):
            with writing() as s:
                # their other logins end; an admin changing their own keeps this one
                set_password(s, who, new_pw, keep_session_id=me.session_id if who == me.username else None)
            ss["users_msg"] = f"Password of {who} changed (and unlocked); their other logins are ended."
            st.rerun()
        active = next((u.is_active for u in users if u.username == who), True)
        if c[2].button("Disable" if active else "Enable", key="users_toggle", disabled=who == me.username):
            with writing() as s:
                set_active(s, who, not active)
            ss["users_msg"] = f"{who} {'disabled and logged out' if active else 'enabled'}."
            st.rerun()
        if c[3].button("Remove", key="users_remove", disabled=who == me.username):
            with writing() as s:
                remove_user(s, who)
            ss["users_msg"] = f"Removed {who} (their feedback history is kept)."
            st.rerun()
    except (ValueError, LookupError) as exc:
        st.error(str(exc))
