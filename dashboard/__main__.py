"""``python -m dashboard`` / ``linewatch-dashboard``: start the Streamlit server on the app.

    python -m dashboard [--port 8501] [--address 0.0.0.0] [extra streamlit options...]

The database and blob store come from the usual ``LINEWATCH_*`` variables (see
``storage.settings`` and ``dashboard.settings``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="linewatch-dashboard",
        description="Serve the linewatch operator dashboard (Streamlit). Users are managed with "
                    "`linewatch-storage users add|remove|list`.")
    parser.add_argument("--port", type=int, default=8501, help="HTTP port (default 8501)")
    parser.add_argument("--address", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    args, extra = parser.parse_known_args(argv)
    from streamlit.web import cli as stcli

    app = Path(__file__).with_name("server.py")  # app.py behind st.App, which adds the cookie routes
    sys.argv = [
        "streamlit", "run", str(app),
        "--server.port", str(args.port), "--server.address", args.address,
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        *extra,
    ]
    return int(stcli.main() or 0)


if __name__ == "__main__":
    raise SystemExit(main())
