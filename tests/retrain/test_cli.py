"""linewatch-detector register | models | rollback (the registry commands, via the entry-point group)."""

from __future__ import annotations

import json
import subprocess

from detector.model_store import ModelStore
from tests.retrain.helpers import detector_cli


def test_installed_command_finds_the_registry_commands():
    res = subprocess.run([*detector_cli(), "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and all(f"    {c} " in res.stdout for c in ("retrain", "rollback", "models",
                                                                         "register"))


def test_register_list_rollback(sqlite_db, tiny_checkpoint, second_checkpoint, monkeypatch, capsys):
    from detector.cli import main

    for k in ("LINEWATCH_DATABASE_URL", "LINEWATCH_DATA_DIR"):
        monkeypatch.setenv(k, sqlite_db.env[k])
    monkeypatch.delenv("LINEWATCH_MODEL_STORE_DIR", raising=False)

    def _run(*args, ok=True):
        code = main(list(args))
        out, err = capsys.readouterr()
        if ok:
            assert code == 0, err
        return subprocess.CompletedProcess(args, code, out, err)

    ms = ModelStore(sqlite_db.settings.model_store_dir)

    out = _run("register", "--product", "flange", "--checkpoint", str(tiny_checkpoint)).stdout
    first = ms.read_active("flange")
    assert first is not None and f"registered {first.version} (active)" in out
    out = _run("register", "--product", "flange", "--checkpoint", str(second_checkpoint), "--no-activate").stdout
    assert "(candidate)" in out and ms.read_active("flange").version == first.version
    second = json.loads(_run("models", "--product", "flange", "--json").stdout)[1]["version"]
    _run("register", "--product", "flange", "--checkpoint", str(second_checkpoint), "--activate")
    assert ms.read_active("flange").version == second

    rows = json.loads(_run("models", "--product", "flange", "--json").stdout)
    assert [(r["version"], r["status"]) for r in rows] == [(first.version, "retired"), (second, "active")]
    table = _run("models").stdout.splitlines()
    assert table[0].split()[:3] == ["product", "version", "status"] and len(table) == 3

    out = _run("rollback", "--product", "flange", "--reason", "too many false alarms").stdout
    assert f"{first.version} is active again (was {second})" in out
    assert ms.read_active("flange").version == first.version
    rows = json.loads(_run("models", "--product", "flange", "--json").stdout)
    assert {r["version"]: r["status"] for r in rows} == {first.version: "active", second: "retired"}

    res = _run("rollback", "--product", "bottle", ok=False)
    assert res.returncode == 2 and res.stderr.strip() == \
        "linewatch-detector: error: no earlier version of 'bottle' to roll back to"
    res = _run("register", "--product", "../x", "--checkpoint", str(tiny_checkpoint), ok=False)
    assert res.returncode == 2 and "invalid product name" in res.stderr and "Traceback" not in res.stderr
    bad = sqlite_db.settings.data_dir / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    res = _run("register", "--product", "flange", "--checkpoint", str(bad), ok=False)
    assert res.returncode == 2 and "not a linewatch detector checkpoint" in res.stderr
