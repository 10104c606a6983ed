"""The soak benchmark, short (CI): 1000 frames from 4 cameras through the whole pipeline while the
detector is SIGKILLed 3 times, the writer once, the broker restarted once and PostgreSQL stopped
for 10 s (tests/benchmarks/soak.py; the 10 000-frame run with a 30 s outage is outside CI).

PostgreSQL rather than SQLite here: a stopped server (refused connections, pooled connections
broken, reconnecting) is covered nowhere else in CI, while SQLite's lock is
(tests/storage/test_writer.py).  ``python -m tests.benchmarks.soak --db sqlite`` runs the other.
"""

from __future__ import annotations

import glob
import json

import pytest

from tests.benchmarks.soak import build_parser, run

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.timeout(900)]


def test_1000_frames_under_kills_broker_restart_and_database_outage_lose_and_duplicate_nothing(pipeline_checkpoint):
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        pytest.skip("PostgreSQL is not installed (deploy/ci/system-deps.sh installs it)")
    args = build_parser().parse_args([
        "--frames", "1000", "--cameras", "4", "--rate", "10", "--db", "postgresql", "--outage-s", "10",
        "--checkpoint", str(pipeline_checkpoint), "--drain-s", "300", "--timeout-s", "780",
    ])
    r = run(args)
    print(json.dumps(r, indent=1, default=str))

    kinds = [f["kind"] for f in r["faults"]]
    assert sorted(kinds) == sorted(["detector-kill"] * 3 + ["writer-kill", "broker-restart", "database-outage"])
    assert not [f for f in r["faults"] if "error" in f]
    assert r["finished_sending"] and r["drained"]
    assert r["frames_sent"] == 1000 and r["producer_dropped"] == 0
    assert r["lost"] == 0, r["lost_frame_ids"]
    assert r["duplicated"] == 0 and r["unexpected_rows"] == 0
    assert r["rows_stored"] == 1000
    assert r["dead_lettered"] == 0  # faults are not bad messages
    assert not r["service_crashes"]
    health = r["writer_health_during_outage"]
    assert health["honest"], health  # 503 "waiting" while PostgreSQL is down, alive, ready again after
    assert r["target_met"]
