"""What a logged-in user sees on a page their role does not allow."""

from __future__ import annotations

import streamlit as st

from dashboard.common import require_role

user = require_role("operator")
st.title("Not allowed")
st.error(f"This page is not available to your role ({user.role}). Thresholds are for engineers and admins; "
         "user management is for admins.")
