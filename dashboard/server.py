"""The dashboard as an ASGI app: the Streamlit app (``app.py``) plus the HTTP routes that set and
clear the login cookie (:mod:`dashboard.session_routes`), through Streamlit's own ``st.App``: the
app's WebSocket cannot set cookies.  ``python -m dashboard`` runs ``streamlit run`` on this file.
"""

from pathlib import Path

import streamlit as st

from dashboard.session_routes import ROUTES

app = st.App(Path(__file__).with_name("app.py"), routes=ROUTES)
