"""``linewatch-storage``: database migrations, the results writer, retention, stats, users."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

PROG = "linewatch-storage"


class CliError(Exception):
    """A one-line error for the user."""


DESCRIPTION = """\
Storage of the linewatch inspection line.

Where things are stored comes from the environment (or the global options below):
  LINEWATCH_DATABASE_URL  SQLAlchemy URL (default: SQLite file <data dir>/linewatch.db;
                          PostgreSQL: postgresql+psycopg://user:pass@host/db)
  LINEWATCH_DATA_DIR      data directory (default ./var): SQLite file, blobs/, models/
  LINEWATCH_BLOB_STORE    'local' (files under <data dir>/blobs, default) or 'database'
Kafka settings (writer) come from LINEWATCH_KAFKA_* and LINEWATCH_TOPIC_PREFIX.
"""


def _add_db_options(p: argparse.ArgumentParser, top: bool = False) -> None:
    # accepted before and after the command; SUPPRESS keeps a subcommand from resetting them
    default: Any = None if top else argparse.SUPPRESS
    g = p.add_argument_group("storage location (override the environment)")
    g.add_argument("--database-url", metavar="URL", default=default,
                   help="SQLAlchemy database URL (LINEWATCH_DATABASE_URL)")
    g.add_argument("--data-dir", metavar="DIR", default=default,
                   help="data directory (LINEWATCH_DATA_DIR, default ./var)")
    p.add_argument("-v", "--verbose", action="store_true", default=False if top else argparse.SUPPRESS,
                   help="log more (debug level, tracebacks on errors)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_db_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("migrate", formatter_class=fmt, help="create or upgrade the database schema",
                       description="Bring the database schema to the newest version (Alembic migrations shipped\n"
                                   "with linewatch). Safe to run repeatedly and while services run; services also\n"
                                   "migrate at start.")
    _add_db_options(p)

    p = sub.add_parser("writer", formatter_class=fmt, help="store inspection results from Kafka (service)",
                       description="Consume <prefix>.results in a consumer group and store every result exactly\n"
                                   "once: batches, blobs before rows, INSERT .. ON CONFLICT DO NOTHING, Kafka\n"
                                   "offsets committed only after the database commit. Invalid messages go to\n"
                                   "<prefix>.deadletter with the reason. SIGTERM/SIGINT finish the current batch,\n"
                                   "commit and exit 0.")
    _add_db_options(p)
    p.add_argument("--batch-size", type=int, metavar="N", help="results per transaction (default 200)")
    p.add_argument("--max-wait-ms", type=int, metavar="MS", help="longest a partial batch waits (default 500)")
    p.add_argument("--group", metavar="ID", help="Kafka consumer group (default linewatch-storage-writer)")
    p.add_argument("--http-port", type=int, metavar="PORT",
                   help="serve /healthz and /metrics (Prometheus) on this port (default: off)")

    p = sub.add_parser("purge", formatter_class=fmt, help="delete old normal inspections (retention)",
                       description="Delete normal (not flagged) inspections older than the retention age, with\n"
                                   "their heatmaps. Always kept: flagged inspections and their images, anything\n"
                                   "with operator feedback, and a deterministic sample of the normal frames the\n"
                                   "detector sampled for retraining. Also removes orphan blobs/images.")
    _add_db_options(p)
    p.add_argument("--older-than-days", type=float, metavar="D",
                   help="retention age in days (LINEWATCH_RETENTION_DAYS, default 30)")
    p.add_argument("--keep-sampled", type=float, metavar="F",
                   help="fraction 0..1 of sampled normal frames kept past the age (default 1.0)")
    p.add_argument("--sampled-days", type=float, metavar="D",
                   help="kept samples are deleted after this many days, 0 = never (default 365)")
    p.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("stats", formatter_class=fmt, help="show what is stored",
                       description="Counts of inspections (total, flagged, last 24 h, per camera), images and\n"
                                   "their size, feedback, users, model versions, and the schema revision.")
    _add_db_options(p)
    p.add_argument("--json", action="store_true", help="print as JSON")

    p = sub.add_parser("users", formatter_class=fmt, help="manage dashboard users",
                       description="Dashboard accounts. Roles: operator (reviews flagged parts), engineer (also\n"
                                   "changes thresholds), admin (also manages users). Passwords are read from a\n"
                                   "prompt, or from the first line of standard input when it is not a terminal;\n"
                                   "never from the command line.")
    usub = p.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    up = usub.add_parser("add", help="create a user", formatter_class=fmt,
                         description="Create a user; the password is prompted for (twice) or read from stdin.\n"
                                     "  echo \"$PW\" | linewatch-storage users add alice --role operator")
    _add_db_options(up)
    up.add_argument("username")
    up.add_argument("--role", required=True, choices=["operator", "engineer", "admin"])
    up.add_argument("--password-stdin", action="store_true", help="read the password from stdin even on a terminal")
    up = usub.add_parser("remove", help="delete a user", description="Delete a user (feedback they gave is kept).")
    _add_db_options(up)
    up.add_argument("username")
    up = usub.add_parser("list", help="list users", description="List users with role, state and last login.")
    _add_db_options(up)
    up.add_argument("--json", action="store_true", help="print as JSON")
    up = usub.add_parser("passwd", help="set a user's password (also unlocks it)",
                         description="Set a new password (prompt or stdin) and clear the failed-login lock.")
    _add_db_options(up)
    up.add_argument("username")
    up.add_argument("--password-stdin", action="store_true", help="read the password from stdin even on a terminal")
    up = usub.add_parser("set-role", help="change a user's role", description="Change a user's role.")
    _add_db_options(up)
    up.add_argument("username")
    up.add_argument("role", choices=["operator", "engineer", "admin"])
    up = usub.add_parser("disable", help="deactivate a user (cannot log in)", description="Deactivate a user.")
    _add_db_options(up)
    up.add_argument("username")
    up = usub.add_parser("enable", help="reactivate a user", description="Reactivate a user.")
    _add_db_options(up)
    up.add_argument("username")
    return parser


# ---------------------------------------------------------------------------- helpers

def _settings(args: argparse.Namespace):
    from .settings import StorageSettings

    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    return StorageSettings(**overrides)


def _engine(args: argparse.Namespace, migrate: bool = True):
    from .db import init_db, make_engine

    settings = _settings(args)
    engine = make_engine(settings=settings)
    if migrate:
        init_db(engine)
    return settings, engine


def _read_password(args: argparse.Namespace) -> str:
    if sys.stdin is None:
        raise CliError("no password: standard input is closed")
    if sys.stdin.isatty() and not getattr(args, "password_stdin", False):
        first = getpass.getpass("Password: ")
        second = getpass.getpass("Repeat password: ")
        if first != second:
            raise CliError("the passwords do not match")
        password = first
    else:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
    if not password:
        raise CliError("empty password (give it at the prompt or on the first line of stdin)")
    return password


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for r in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip())


# ---------------------------------------------------------------------------- commands

def cmd_migrate(args: argparse.Namespace) -> int:
    from .db import current_revision, head_revision

    settings, engine = _engine(args)
    print(f"database {engine.url.render_as_string(hide_password=True)} is at revision "
          f"{current_revision(engine)} (newest: {head_revision()})")
    return 0


def cmd_writer(args: argparse.Namespace) -> int:
    from ingest.kafka_config import KafkaSettings

    from .blobs import make_blob_store
    from .writer import ResultWriter, serve_http

    settings, engine = _engine(args)
    kafka = KafkaSettings()
    for name in ("batch_size", "max_wait_ms"):
        value = getattr(args, name)
        if value is not None and value < (1 if name == "batch_size" else 0):
            raise CliError(f"--{name.replace('_', '-')} must be {'>= 1' if name == 'batch_size' else '>= 0'}")
    writer = ResultWriter(kafka, settings, engine, make_blob_store(settings, engine),
                          batch_size=args.batch_size, max_wait_ms=args.max_wait_ms, group_id=args.group)
    writer.install_signal_handlers()
    server = None
    if args.http_port is not None:
        server = serve_http(writer, args.http_port)
        logging.getLogger("linewatch.storage.writer").info("health and metrics on :%d", server.server_address[1])
    try:
        return writer.run()
    finally:
        if server is not None:
            server.shutdown()
        engine.dispose()


def cmd_purge(args: argparse.Namespace) -> int:
    from .blobs import make_blob_store
    from .retention import purge

    settings, engine = _engine(args)
    updates: dict[str, Any] = {}
    if args.older_than_days is not None:
        if args.older_than_days <= 0:
            raise CliError("--older-than-days must be > 0")
        updates["retention_days"] = args.older_than_days
    if args.keep_sampled is not None:
        if not 0 <= args.keep_sampled <= 1:
            raise CliError("--keep-sampled must be between 0 and 1")
        updates["retention_keep_sampled"] = args.keep_sampled
    if args.sampled_days is not None:
        if args.sampled_days < 0:
            raise CliError("--sampled-days must be >= 0")
        updates["retention_sampled_days"] = args.sampled_days
    settings = settings.model_copy(update=updates)
    report = purge(engine, make_blob_store(settings, engine), settings, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{verb} {report.inspections_deleted} normal inspections captured before "
              f"{report.cutoff:%Y-%m-%d %H:%M} UTC and {report.images_deleted} images; "
              f"kept {report.samples_kept} sampled normal frames; orphans: {report.orphan_images_deleted} images, "
              f"{report.orphan_blobs_deleted} blobs")
    return 0


def collect_stats(engine) -> dict[str, Any]:
    from sqlalchemy import case, func, select

    from .db import current_revision, head_revision
    from .models import Camera, Feedback, Image, Inspection, Line, ModelVersion, User, utcnow

    out: dict[str, Any] = {
        "database": engine.url.render_as_string(hide_password=True),
        "revision": current_revision(engine),
        "newest_revision": head_revision(),
    }
    if out["revision"] is None:
        return out
    since = utcnow() - timedelta(hours=24)
    with engine.connect() as c:
        total, flagged, first, last = c.execute(select(
            func.count(), func.coalesce(func.sum(case((Inspection.is_anomalous, 1), else_=0)), 0),
            func.min(Inspection.captured_at), func.max(Inspection.captured_at),
        )).one()
        out["inspections"] = {
            "total": total, "flagged": int(flagged),
            "first_capture": first.isoformat() if first else None,
            "last_capture": last.isoformat() if last else None,
            "last_24h": c.scalar(select(func.count()).where(Inspection.captured_at >= since)),
            "flagged_last_24h": c.scalar(select(func.count()).where(
                Inspection.captured_at >= since, Inspection.is_anomalous.is_(True))),
        }
        out["lines"] = c.scalar(select(func.count()).select_from(Line))
        per_cam = c.execute(
            select(Camera.id, Camera.line_id, Camera.threshold_override,
                   select(func.count()).where(Inspection.camera_id == Camera.id).scalar_subquery())
            .order_by(Camera.id)
        ).all()
        out["cameras"] = [{"camera": cid, "line": line, "threshold_override": thr, "inspections": n}
                          for cid, line, thr, n in per_cam]
        out["images"] = {kind: {"count": n, "bytes": int(b or 0)} for kind, n, b in c.execute(
            select(Image.kind, func.count(), func.sum(Image.size_bytes)).group_by(Image.kind).order_by(Image.kind))}
        out["feedback"] = {
            "rows": c.scalar(select(func.count()).select_from(Feedback)),
            "current": {label: n for label, n in c.execute(
                select(Inspection.current_feedback, func.count()).where(Inspection.current_feedback.is_not(None))
                .group_by(Inspection.current_feedback).order_by(Inspection.current_feedback))},
        }
        out["users"] = {role: n for role, n in c.execute(
            select(User.role, func.count()).group_by(User.role).order_by(User.role))}
        out["model_versions"] = {status: n for status, n in c.execute(
            select(ModelVersion.status, func.count()).group_by(ModelVersion.status).order_by(ModelVersion.status))}
    return out


def cmd_stats(args: argparse.Namespace) -> int:
    settings, engine = _engine(args, migrate=False)
    stats = collect_stats(engine)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"database:     {stats['database']}")
    print(f"schema:       {stats['revision'] or 'empty'} (newest {stats['newest_revision']})")
    if stats["revision"] is None:
        print(f"the database has no linewatch schema yet: run `{PROG} migrate`")
        return 0
    i = stats["inspections"]
    print(f"inspections:  {i['total']} ({i['flagged']} flagged); last 24 h: {i['last_24h']} "
          f"({i['flagged_last_24h']} flagged)")
    if i["first_capture"]:
        print(f"captured:     {i['first_capture']} .. {i['last_capture']}")
    print(f"lines:        {stats['lines']}")
    if stats["cameras"]:
        print("cameras:")
        _print_table([["  " + c["camera"], c["line"], c["inspections"],
                       "model" if c["threshold_override"] is None else c["threshold_override"]]
                      for c in stats["cameras"]], ["  camera", "line", "inspections", "threshold"])
    imgs = stats["images"]
    print("images:       " + (", ".join(f"{k} {v['count']} ({v['bytes'] / 1e6:.1f} MB)" for k, v in imgs.items())
                              or "none"))
    fb = stats["feedback"]
    print(f"feedback:     {fb['rows']} decisions; current: "
          + (", ".join(f"{k} {v}" for k, v in fb["current"].items()) or "none"))
    print("users:        " + (", ".join(f"{k} {v}" for k, v in stats["users"].items()) or "none"))
    print("models:       " + (", ".join(f"{k} {v}" for k, v in stats["model_versions"].items()) or "none"))
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    from . import users as u
    from .db import write_session

    settings, engine = _engine(args)
    action = args.users_command
    if action == "list":
        from sqlalchemy.orm import Session

        with Session(engine) as s:
            rows = u.list_users(s)
            data = [{"username": x.username, "role": x.role, "active": x.is_active,
                     "locked_until": x.locked_until.isoformat() if x.locked_until else None,
                     "failed_logins": x.failed_logins,
                     "last_login": x.last_login_at.isoformat() if x.last_login_at else None,
                     "created": x.created_at.isoformat()} for x in rows]
        if args.json:
            print(json.dumps(data, indent=2))
        elif not data:
            print("no users (add one with: linewatch-storage users add NAME --role admin)")
        else:
            _print_table([[d["username"], d["role"], "active" if d["active"] else "disabled",
                           d["last_login"] or "never", str(d["failed_logins"])] for d in data],
                         ["username", "role", "state", "last login", "failed logins"])
        return 0
    if action in ("add", "passwd"):
        password = _read_password(args)
        with write_session(engine) as s:
            if action == "add":
                u.add_user(s, args.username, password, args.role)
            else:
                u.set_password(s, args.username, password)
        print(f"user {args.username} {'added as ' + args.role if action == 'add' else 'password set'}")
        return 0
    with write_session(engine) as s:
        if action == "remove":
            u.remove_user(s, args.username)
            msg = "removed"
        elif action == "set-role":
            u.set_role(s, args.username, args.role)
            msg = f"is now {args.role}"
        elif action == "disable":
            u.set_active(s, args.username, False)
            msg = "disabled"
        else:
            u.set_active(s, args.username, True)
            msg = "enabled"
    print(f"user {args.username} {msg}")
    return 0


COMMANDS = {"migrate": cmd_migrate, "writer": cmd_writer, "purge": cmd_purge, "stats": cmd_stats, "users": cmd_users}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("kafka", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except (CliError, ValueError, LookupError) as exc:
        msg = exc.args[0] if isinstance(exc, LookupError) and exc.args else exc
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one line for the user; -v shows the traceback
        from sqlalchemy.exc import SQLAlchemyError

        if getattr(args, "verbose", False):
            raise
        kind = "database error" if isinstance(exc, SQLAlchemyError) else type(exc).__name__
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        print(f"{PROG}: error: {kind}: {detail[0] if detail else ''} (use -v for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
