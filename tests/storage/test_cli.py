"""``linewatch-storage`` command line: help, migrate, users (password never on argv), stats, purge."""

from __future__ import annotations

import json
import subprocess
import sys

from datetime import timedelta

import pytest

from storage.cli import build_parser
from storage.models import utcnow
from storage.results import store_results

from .helpers import make_result

CLI = [sys.executable, "-m", "storage.cli"]


def run(args, env, stdin: str | None = None, check: bool = True):
    p = subprocess.run(CLI + args, env=env, input=stdin, capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, p.stderr
    return p


@pytest.mark.parametrize("cmd", [[], ["migrate"], ["writer"], ["purge"], ["stats"], ["users"], ["users", "add"],
                                 ["users", "remove"], ["users", "list"], ["users", "passwd"]])
def test_help_explains_each_command(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(cmd + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: linewatch-storage" in out and len(out.splitlines()) > 5


def test_users_cli(storage_db):
    env = storage_db.env
    run(["migrate"], env)
    p = run(["users", "add", "olga", "--role", "operator"], env, stdin="s3cret-pass\n")
    assert "olga" in p.stdout
    # the password is not accepted on the command line
    p = run(["users", "add", "eve", "--role", "admin", "--password", "x"], env, check=False)
    assert p.returncode == 2
    p = run(["users", "add", "olga", "--role", "admin"], env, stdin="another-pass\n", check=False)
    assert p.returncode == 1 and p.stderr.strip() == "linewatch-storage: error: user 'olga' already exists"
    p = run(["users", "add", "eve", "--role", "engineer"], env, stdin="\n", check=False)
    assert p.returncode == 1 and "empty password" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    run(["users", "add", "eve", "--role", "engineer"], env, stdin="s3cret-pass2\n")
    users = json.loads(run(["users", "list", "--json"], env).stdout)
    assert [(x["username"], x["role"]) for x in users] == [("eve", "engineer"), ("olga", "operator")]
    run(["users", "remove", "eve"], env)
    p = run(["users", "remove", "eve"], env, check=False)
    assert p.returncode == 1 and p.stderr.strip() == "linewatch-storage: error: no user 'eve'"
    assert [x["username"] for x in json.loads(run(["users", "list", "--json"], env).stdout)] == ["olga"]

    from storage import users as u

    with storage_db.session() as s:
        assert u.authenticate(s, "olga", "s3cret-pass").role == "operator"


def test_stats_and_purge_cli(storage_db):
    two_days_ago = utcnow() - timedelta(days=2)
    store_results(storage_db.engine, storage_db.blobs,
                  [make_result(i, anomalous=(i == 3), captured_at=two_days_ago) for i in range(10)])
    env = storage_db.env
    stats = json.loads(run(["stats", "--json"], env).stdout)
    assert stats["inspections"]["total"] == 10 and stats["inspections"]["flagged"] == 1
    assert stats["cameras"] == [{"camera": "cam-1", "line": "line-1", "threshold_override": None, "inspections": 10}]
    assert stats["images"]["heatmap"]["count"] == 10
    text = run(["stats"], env).stdout
    assert "inspections:  10 (1 flagged)" in text
    report = json.loads(run(["purge", "--older-than-days", "1", "--dry-run", "--json"], env).stdout)
    assert report["inspections_deleted"] == 9 and report["dry_run"]
    run(["purge", "--older-than-days", "1"], env)
    assert json.loads(run(["stats", "--json"], env).stdout)["inspections"]["total"] == 1
    p = run(["purge", "--keep-sampled", "2"], env, check=False)
    assert p.returncode == 1 and "between 0 and 1" in p.stderr


def test_unreachable_database_is_one_line(tmp_path):
    import os

    env = dict(os.environ, LINEWATCH_DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1:1/none")
    p = run(["stats"], env, check=False)
    assert p.returncode == 1
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("linewatch-storage: error: database error")
