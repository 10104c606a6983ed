"""Dashboard speed benchmark (not part of CI): every page must render in < 2 s on 1,000,000
inspection rows in SQLite.

    python -m tests.benchmarks.dashboard_seed --rows 1000000 --data-dir /tmp/lwbench   # once
    python -m tests.benchmarks.dashboard_bench --data-dir /tmp/lwbench [--browser] [--json out.json]

Three measurements, each the median (and max) of ``--repeat`` runs:

* ``query``   — each storage.queries call the pages make, alone;
* ``apptest`` — the whole page script in Streamlit's AppTest (server-side render: every query,
  the image decoding and the chart building), a fresh session per run;
* ``browser`` (``--browser``) — the real server in Debian's headless Chromium: from the click on
  the sidebar link (or the window change) until the page's last element is on screen.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LIMIT_S = 2.0


def _stats(samples: list[float]) -> dict:
    return {"median_s": round(statistics.median(samples), 3), "max_s": round(max(samples), 3),
            "first_s": round(samples[0], 3), "n": len(samples)}


def bench_queries(repeat: int) -> dict:
    from sqlalchemy.orm import Session

    from storage.db import make_engine
    from storage.queries import history, live, review, thresholds

    engine = make_engine()
    now = datetime.now(timezone.utc)
    out = {}

    def t(name, fn):
        samples = []
        for _ in range(repeat):
            with Session(engine) as s:
                t0 = time.perf_counter()
                fn(s)
                samples.append(time.perf_counter() - t0)
        out[name] = _stats(samples)

    for label, minutes in (("15min", 15), ("hour", 60), ("day", 1440)):
        since = now - timedelta(minutes=minutes)
        t(f"live.camera_counts[{label}]", lambda s, since=since: live.camera_counts(s, since))
        t(f"live.camera_counts usual 7d before [{label}]",
          lambda s, since=since: live.camera_counts(s, since - timedelta(days=7), since))
        t(f"live.rate_series[{label}]", lambda s, since=since, m=minutes: live.rate_series(
            s, since, now, max(10, m * 60 // 60)))
    t("live.latest_model_versions", live.latest_model_versions)
    t("review.queue_count[pending]", lambda s: review.queue_count(s, "pending"))
    t("review.queue_item[pending]", lambda s: review.queue_item(s, "pending"))
    t("review.queue_item[flagged]", lambda s: review.queue_item(s, "flagged"))
    t("review.queue_count[reviewed]", lambda s: review.queue_count(s, "reviewed"))
    f7 = history.HistoryFilter(start=now - timedelta(days=7))
    t("history.count[7d]", lambda s: history.history_count(s, f7))
    t("history.page[7d, page 1]", lambda s: history.history_page(s, f7, 50, 0))
    t("history.page[7d, page 1000]", lambda s: history.history_page(s, f7, 50, 50_000))
    fall = history.HistoryFilter()
    t("history.count[all]", lambda s: history.history_count(s, fall))
    fcam = history.HistoryFilter(cameras=("cam-1a",), feedback="false_alarm")
    t("history.count[cam-1a, false alarm]", lambda s: history.history_count(s, fcam))
    t("history.page[cam-1a, false alarm]", lambda s: history.history_page(s, fcam, 50, 0))
    t("history.csv[flagged 7d, all rows]", lambda s: history.history_csv(
        s, history.HistoryFilter(start=now - timedelta(days=7), verdict="flagged")))
    for label, days in (("30d", 30), ("all", None)):
        since = now - timedelta(days=days) if days else None
        t(f"thresholds.score_histogram[{label}]",
          lambda s, since=since: thresholds.score_histogram(s, "cam-1a", 40, since=since))
        t(f"thresholds.rates[{label}]",
          lambda s, since=since: thresholds.rates(s, "cam-1a", [0.5, 0.6], since=since))
        t(f"thresholds.distribution (page: both) [{label}]",
          lambda s, since=since: thresholds.distribution(s, "cam-1a", [0.5, 0.6], 40, since=since))
    engine.dispose()
    return out


APP_SCENARIOS = [
    # (name, view or None for app.py, user role, session state presets)
    ("login form (app.py, no user)", None, None, {}),
    ("live [last 15 minutes]", "live", "operator", {"live_window": "Last 15 minutes"}),
    ("live [last hour]", "live", "operator", {"live_window": "Last hour"}),
    ("live [current shift]", "live", "operator", {"live_window": "Current shift"}),
    ("live [last 24 hours]", "live", "operator", {"live_window": "Last 24 hours"}),
    ("review [unreviewed]", "review", "operator", {}),
    ("review [all flagged]", "review", "operator", {"review_mode": "flagged"}),
    ("history [default: last 7 days]", "history", "operator", {}),
    ("history [cam-1a, false alarms]", "history", "operator",
     {"history_cameras": ["cam-1a"], "history_feedback": "false_alarm"}),
    ("history [7 days, page 1000]", "history", "operator", {"history_page": 1000}),
    ("thresholds [last 30 days]", "thresholds", "engineer", {}),
    ("thresholds [all stored]", "thresholds", "engineer", {"thr_window": "All stored"}),
    ("users", "users", "admin", {}),
]
USERS = {"operator": "bench-operator", "engineer": "bench-engineer", "admin": "bench-admin"}


def bench_apptest(repeat: int) -> dict:
    from streamlit.testing.v1 import AppTest

    out = {}
    for name, view, role, preset in APP_SCENARIOS:
        path = REPO / "dashboard" / ("app.py" if view is None else f"views/{view}.py")
        samples = []
        for _ in range(repeat):
            at = AppTest.from_file(str(path), default_timeout=60)
            if role:
                at.session_state["lw_user"] = {"username": USERS[role], "role": role}
            for k, v in preset.items():
                at.session_state[k] = v
            t0 = time.perf_counter()
            at.run()
            samples.append(time.perf_counter() - t0)
            if at.exception:
                raise RuntimeError(f"{name}: {at.exception[0].message}")
        out[name] = _stats(samples)
    return out


def bench_browser(repeat: int, env: dict) -> dict:
    import socket
    import urllib.request

    from playwright.sync_api import sync_playwright

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "dashboard", "--port", str(port), "--address", "127.0.0.1"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    out: dict = {}
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(base + "/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.3)
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"])
            pg = b.new_page(viewport={"width": 1400, "height": 1000})
            pg.set_default_timeout(60_000)
            t0 = time.perf_counter()
            pg.goto(base)
            pg.get_by_role("button", name="Log in").wait_for()
            out["login form (first load, cold browser cache)"] = _stats([time.perf_counter() - t0])
            again = []
            for _ in range(repeat):
                p2 = b.new_page()
                t0 = time.perf_counter()
                p2.goto(base)
                p2.get_by_role("button", name="Log in").wait_for()
                again.append(time.perf_counter() - t0)
                p2.close()
            out["login form (new tab, browser cache warm)"] = _stats(again)
            pg.get_by_role("textbox", name="Username").fill(USERS["admin"])
            pg.get_by_role("textbox", name="Password").fill("bench-password-1")
            t0 = time.perf_counter()
            pg.get_by_role("button", name="Log in").click()
            pg.get_by_text("Per camera").wait_for()
            out["log in -> live [last hour]"] = _stats([time.perf_counter() - t0])
            marks = {"Review": "Decisions", "History": "inspections match", "Thresholds": "What a threshold would give",
                     "Users": "Add a user", "Live": "Per camera"}
            samples: dict[str, list[float]] = {k: [] for k in marks}
            for _ in range(repeat):
                for title, marker in marks.items():
                    link = pg.locator('[data-testid="stSidebar"] [data-testid="stPageLink"] a', has_text=title)
                    t0 = time.perf_counter()
                    link.click()
                    pg.get_by_text(marker).first.wait_for(state="visible")
                    pg.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')")
                    samples[title].append(time.perf_counter() - t0)
            for title, s in samples.items():
                out[f"{title.lower()} (sidebar click -> rendered)"] = _stats(s)
            b.close()
    finally:
        import signal
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="dashboard speed benchmark (see module docstring)")
    ap.add_argument("--data-dir", type=Path, default=Path("var/bench"))
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--browser", action="store_true", help="also time the pages in headless Chromium")
    ap.add_argument("--json", type=Path, help="write the figures here")
    a = ap.parse_args(argv)
    os.environ["LINEWATCH_DATA_DIR"] = str(a.data_dir.resolve())
    if a.database_url:
        os.environ["LINEWATCH_DATABASE_URL"] = a.database_url
    else:
        os.environ.pop("LINEWATCH_DATABASE_URL", None)
    os.environ.pop("LINEWATCH_DETECTOR_METRICS_URL", None)
    from sqlalchemy import func, select

    from storage.db import make_engine
    from storage.models import Inspection

    eng = make_engine()
    with eng.connect() as c:
        n = c.execute(select(func.count()).select_from(Inspection)).scalar_one()
    eng.dispose()
    result = {"database": eng.url.render_as_string(hide_password=True), "inspections": n,
              "limit_s": LIMIT_S, "query": bench_queries(a.repeat), "apptest": bench_apptest(a.repeat)}
    if a.browser:
        result["browser"] = bench_browser(a.repeat, dict(os.environ))
    worst = 0.0
    for section in ("query", "apptest", "browser"):
        if section not in result:
            continue
        print(f"\n== {section} ({n:,} inspections) ==")
        for name, st in result[section].items():
            print(f"  {name:<52} median {st['median_s']:7.3f} s   max {st['max_s']:7.3f} s")
            if section != "query":
                worst = max(worst, st["max_s"])
    result["worst_page_s"] = worst
    result["ok"] = worst < LIMIT_S
    print(f"\nslowest page render: {worst:.3f} s -> {'OK' if worst < LIMIT_S else 'TOO SLOW'} (limit {LIMIT_S} s)")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
