"""The whole linewatch system on one machine, as supervised child processes (README command 1).

Run through ``bash deploy/local/start.sh [options]`` (which prepares the Python environment and
the Kafka jars first), or directly with the environment's Python: ``python deploy/local/stack.py``.

What it starts, in this order (and stops in the reverse order):

1. Kafka: a single-node KRaft broker (``deploy/kafka/kafka.sh start``) on 127.0.0.1
2. storage: SQLite under the state directory, migrated (``linewatch-storage migrate``); the
   topics (``linewatch-ingest topics``); a first ``admin`` user with a generated password when
   there is no user yet -- printed once, stored only as its hash
3. a model: ``--model``, or the product's active version in the model store (``<state>/data/models``:
   the first model, or a newer one a ``linewatch-detector retrain`` promoted), or -- at the first
   start -- a quick first model trained on the simulator's normal parts and registered as the
   active version (``deploy/first-model.sh``; a few minutes on 2 CPU cores)
4. supervised services: dashboard, writer, detector, camera source (the line simulator, or
   ``--folder``), each in its own process group, each logging to ``<state>/logs/<name>.log``

Then it prints the dashboard URL and the login and watches the services.  A service that exits
is restarted with exponential backoff (1 s, 2 s, ... 30 s); one that fails 5 times within
5 minutes, or a broker that dies, stops the whole stack with a message naming it (exit status 1).
Ctrl-C (SIGINT) or SIGTERM stop everything cleanly: each service gets SIGTERM (finishing its
batch and committing), then SIGKILL after a grace period; the broker stops through ``kafka.sh
stop``.  A second Ctrl-C skips the grace periods.  If the stack itself is killed, its services
get SIGTERM from the kernel (parent-death signal) and the broker's watchdog stops the broker.

The state directory keeps everything between starts (Kafka data, SQLite file, images, models,
logs): the next start reuses the model and the users.  ``<state>/stack.json`` lists the running
processes (pids and process groups) while the stack runs.  The stack is self-contained: it ignores
the locations and Kafka settings of the caller's environment (``LINEWATCH_DATABASE_URL``,
``LINEWATCH_DATA_DIR``, ``LINEWATCH_MODEL_STORE_DIR``, ``LINEWATCH_KAFKA_*``, ...).  Retraining by
hand against it: ``LINEWATCH_DATA_DIR=<state>/data linewatch-detector retrain --product flange``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable

REPO = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO / "deploy" / "kafka" / "kafka.sh"
FIRST_MODEL_SH = REPO / "deploy" / "first-model.sh"
BIN = Path(sys.executable).parent  # the environment's console scripts (linewatch-*)

RESTART_BACKOFF_MAX_S = 30.0
CRASH_LOOP_COUNT = 5  # failures within CRASH_LOOP_WINDOW_S that stop the stack
CRASH_LOOP_WINDOW_S = 300.0
STOP_GRACE_S = {"ingest": 20.0, "detector": 60.0, "writer": 40.0, "dashboard": 10.0}

log = logging.getLogger("stack")

# where things are comes from the stack alone, never from the caller's environment
_FOREIGN_LOCATIONS = {
    "LINEWATCH_DATABASE_URL", "LINEWATCH_DATA_DIR", "LINEWATCH_BLOB_DIR", "LINEWATCH_BLOB_STORE",
    "LINEWATCH_MODEL_STORE_DIR", "LINEWATCH_DETECTOR_MODEL", "LINEWATCH_DETECTOR_ROUTES",
    "LINEWATCH_DETECTOR_HTTP_PORT", "KAFKA_WATCH_PID",
}


class StackError(Exception):
    """Start-up or supervision failed; the message is one line for the user."""


# ------------------------------------------------------------------------------------- processes

def _die_with_parent() -> None:
    """In the child, before exec: own process group, and SIGTERM when the stack dies."""
    os.setsid()
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _pgid(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _stop_group(proc: subprocess.Popen, grace_s: float) -> int | None:
    """SIGTERM the child's process group, wait, SIGKILL what is left; reap the child."""
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_alive(pgid):
            break
        time.sleep(0.1)
    if proc.poll() is None or _group_alive(pgid):
        log.warning("pid %d did not stop within %.0f s: SIGKILL", pgid, grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    return proc.wait()


@dataclass
class Service:
    """One supervised child process (and its process group)."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    log_file: IO[bytes] | None = None
    failures: list[float] = field(default_factory=list)
    restart_at: float | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = open(self.log_path, "ab")
        self.log_file.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {shlex.join(self.argv)}\n".encode())
        self.log_file.flush()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self.log_file,
                                     stderr=subprocess.STDOUT, env=self.env, cwd=REPO,
                                     preexec_fn=_die_with_parent)
        self.restart_at = None
        log.info("started %-9s pid %d  (log %s)", self.name, self.proc.pid, _short(self.log_path))

    def stop(self, grace_s: float) -> None:
        if self.proc is not None:
            rc = _stop_group(self.proc, grace_s)
            log.info("stopped %-9s (exit status %s)", self.name, rc)
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None

    def tail(self, n: int = 8) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join("    " + line[:300] for line in lines[-n:])


def _short(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


# ---------------------------------------------------------------------------------------- helpers

def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _run(argv: list[str], env: dict[str, str], log_path: Path, what: str, *, stdin: str | None = None,
         timeout: float = 600, interrupted: Callable[[], bool] = lambda: False) -> str:
    """Run a set-up command to completion, output appended to its log; raise StackError on failure.

    ``interrupted()`` is asked while it runs: when it turns true (Ctrl-C), the command's process
    group is stopped and KeyboardInterrupt raised, so that stopping never waits for a slow step.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=REPO, preexec_fn=_die_with_parent)
    deadline = time.monotonic() + timeout
    feed: str | None = stdin or ""
    while True:
        try:
            # retrying communicate() after a timeout loses no output (subprocess docs)
            stdout, stderr = proc.communicate(input=feed, timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            feed = None
            if interrupted() or time.monotonic() > deadline:
                _stop_group(proc, 5.0)
                proc.communicate()
                if interrupted():
                    raise KeyboardInterrupt from None
                raise StackError(f"{what} did not finish within {timeout:.0f} s (log {_short(log_path)})") from None
    with open(log_path, "ab") as lf:
        lf.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n".encode())
        lf.write((stdout + stderr).encode())
    if proc.returncode != 0:
        detail = (stderr.strip() or stdout.strip()).splitlines()[-1:] or ["no output"]
        raise StackError(f"{what} failed (exit status {proc.returncode}): {detail[0]} (log {_short(log_path)})")
    return stdout


# ------------------------------------------------------------------------------------------ stack

class Stack:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.state = Path(args.state_dir).expanduser().resolve()
        self.logs = self.state / "logs"
        self.data = self.state / "data"
        self.kafka_dir = self.state / "kafka"
        self.record = self.state / "stack.json"
        self.kafka_started = False
        self.kafka_pid: int | None = None
        self.services: list[Service] = []
        self.stopping = False
        self.hurry = False
        self._setup_procs: list[subprocess.Popen] = []
        self.env = self._child_env()

    # -- environment shared by every child
    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not (k in _FOREIGN_LOCATIONS or k.startswith("LINEWATCH_KAFKA_"))}
        a = self.args
        env.update({
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "LINEWATCH_KAFKA_BOOTSTRAP": f"127.0.0.1:{a.kafka_port}",
            "LINEWATCH_KAFKA_CLIENT_ID": "linewatch-local",
            "LINEWATCH_TOPIC_PREFIX": a.topic_prefix,
            "LINEWATCH_DATA_DIR": str(self.data),
            "LINEWATCH_DETECTOR_METRICS_URL": f"http://127.0.0.1:{a.detector_port}/metrics",
            "PYTHONUNBUFFERED": "1",
            # the broker's watchdog stops it if this process dies without stopping it
            "KAFKA_WATCH_PID": str(os.getpid()),
        })
        return env

    # -- signals
    def on_signal(self, signum: int, _frame) -> None:
        if self.stopping:
            self.hurry = True
            log.warning("second %s: stopping without grace periods", signal.Signals(signum).name)
            return
        self.stopping = True
        log.info("%s received: stopping the stack", signal.Signals(signum).name)

    def interrupted(self) -> bool:
        return self.stopping

    def _check_stop(self) -> None:
        if self.stopping:
            raise KeyboardInterrupt

    # -- start-up steps
    def check_ports(self) -> None:
        a = self.args
        wanted = {"Kafka": a.kafka_port, "dashboard": a.dashboard_port, "detector": a.detector_port,
                  "writer": a.writer_port}
        if len(set(wanted.values())) != len(wanted):
            raise StackError(f"two services on one port: {wanted}")
        for name, port in wanted.items():
            host = a.address if name == "dashboard" else "127.0.0.1"
            if not _port_free(port, host):
                raise StackError(f"port {port} ({name}) is already in use: is another stack or service running? "
                                 f"(choose another with --{name.lower()}-port)")

    def start_kafka(self) -> None:
        log.info("starting Kafka on 127.0.0.1:%d (data in %s)", self.args.kafka_port, _short(self.kafka_dir))
        self.kafka_started = True  # from here on, shutdown runs `kafka.sh stop` (harmless if nothing runs)
        _run(["bash", str(KAFKA_SH), "start", str(self.kafka_dir), str(self.args.kafka_port)], self.env,
             self.logs / "kafka-control.log", "starting Kafka", timeout=900, interrupted=self.interrupted)
        self.kafka_pid = int((self.kafka_dir / "kafka.pid").read_text().strip())
        self.write_record()

    def prepare_storage(self) -> str | None:
        """Migrate, create the topics, and the first admin; returns its password if created now."""
        log.info("migrating the database (SQLite %s)", _short(self.data / "linewatch.db"))
        storage_log = self.logs / "setup.log"
        _run([str(BIN / "linewatch-storage"), "migrate"], self.env, storage_log, "database migration",
             interrupted=self.interrupted)
        self._check_stop()
        _run([str(BIN / "linewatch-ingest"), "topics", "--partitions", str(self.args.partitions)], self.env,
             storage_log, "creating the Kafka topics", interrupted=self.interrupted)
        self._check_stop()
        users = json.loads(_run([str(BIN / "linewatch-storage"), "users", "list", "--json"], self.env,
                                storage_log, "listing users", interrupted=self.interrupted))
        if users:
            return None
        password = secrets.token_urlsafe(12)
        # kept in a file only the owner can read, written before the user exists, so a first start that
        # is interrupted (e.g. while the first model trains) never loses the only copy
        secret = self.admin_password_file
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        _run([str(BIN / "linewatch-storage"), "users", "add", self.args.admin_user, "--role", "admin"], self.env,
             storage_log, "creating the first admin", stdin=password + "\n", interrupted=self.interrupted)
        log.info("first dashboard login: user %s  password %s  (also in %s, readable only by you: delete it "
                 "after your first login)", self.args.admin_user, password, secret)
        return password

    @property
    def admin_password_file(self) -> Path:
        return self.state / "first-admin-password"

    def active_model(self) -> Path | None:
        """The product's active version in the model store (<data>/models/<product>/active.json)."""
        from detector.model_store import ModelStore, ModelStoreError

        try:
            pointer = ModelStore(self.data / "models").read_active(self.args.product)
        except ModelStoreError as exc:
            raise StackError(f"model store: {exc}") from None
        if pointer is None or not Path(pointer.path).is_file():
            return None
        log.info("using the active model of %s: version %s", self.args.product, pointer.version)
        return Path(pointer.path)

    def ensure_model(self) -> Path:
        if self.args.model:
            model = Path(self.args.model).expanduser().resolve()
            if not model.is_file():
                raise StackError(f"--model {model}: no such file")
            return model
        active = self.active_model()
        if active is not None:
            return active
        first = self.state / "first-model" / f"{self.args.product}.pt"
        log_path = self.logs / "first-model.log"
        if not first.is_file():
            log.info("no model yet: training a quick first model on simulated normal parts "
                     "(a few minutes on 2 CPU cores; progress in %s)", _short(log_path))
        t0 = time.monotonic()
        with open(log_path, "ab") as lf:
            # trains (unless the file exists) and registers it: the product's first active version
            proc = subprocess.Popen(["bash", str(FIRST_MODEL_SH), str(first), self.args.product],
                                    stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT, env=self.env,
                                    cwd=REPO, preexec_fn=_die_with_parent)
            self._setup_procs.append(proc)
            next_note = t0 + 30
            while proc.poll() is None:
                if self.stopping:
                    _stop_group(proc, 0.0 if self.hurry else 10.0)
                    raise KeyboardInterrupt
                if time.monotonic() >= next_note:
                    log.info("  still training (%.0f s)", time.monotonic() - t0)
                    next_note += 30
                time.sleep(0.2)
            self._setup_procs.remove(proc)
        active = self.active_model() if proc.returncode == 0 else None
        if active is None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-5:])
            raise StackError(f"the first model could not be trained or registered (exit status {proc.returncode}; "
                             f"log {_short(log_path)}):\n{tail}")
        log.info("first model trained and registered in %.0f s", time.monotonic() - t0)
        return active

    def make_services(self, model: Path) -> None:
        a, py = self.args, str(BIN / "python")
        if a.folder:
            source = ["--source", f"folder:{Path(a.folder).expanduser().resolve()}", "--loop"]
        else:
            source = ["--source", f"sim:seed={a.seed},defect_rate={a.defect_rate}"]
        specs = [
            ("dashboard", [py, "-m", "dashboard", "--port", str(a.dashboard_port), "--address", a.address]),
            ("writer", [str(BIN / "linewatch-storage"), "writer", "--http-port", str(a.writer_port)]),
            ("detector", [str(BIN / "linewatch-detector"), "serve", "--model", str(model),
                          "--http-port", str(a.detector_port), "--device", a.device]),
            ("ingest", [str(BIN / "linewatch-ingest"), "run", *source, "--camera-id", a.camera_id,
                        "--line", a.line, "--product", a.product, "--fps", str(a.fps), "--partitions", "0"]),
        ]
        self.services = [Service(name, argv, self.logs / f"{name}.log", self.env) for name, argv in specs]

    def start_services(self) -> None:
        for svc in self.services:
            self._check_stop()
            svc.start()
        self.write_record()

    def wait_ready(self) -> None:
        a = self.args
        checks = {
            "dashboard": f"http://127.0.0.1:{a.dashboard_port}/_stcore/health",
            "writer": f"http://127.0.0.1:{a.writer_port}/readyz",
            "detector": f"http://127.0.0.1:{a.detector_port}/readyz",
        }
        deadline = time.monotonic() + a.ready_timeout
        pending = dict(checks)
        while pending:
            self._check_stop()
            self.supervise_once()
            for name, url in list(pending.items()):
                if _http_ok(url):
                    log.info("%s is ready", name)
                    del pending[name]
            if time.monotonic() > deadline:
                raise StackError(f"not ready after {a.ready_timeout:.0f} s: {', '.join(pending)} "
                                 f"(logs in {_short(self.logs)})")
            time.sleep(0.5)

    # -- supervision
    def supervise_once(self) -> None:
        now = time.monotonic()
        if self.kafka_pid is not None and not _pid_alive(self.kafka_pid):
            raise StackError(f"the Kafka broker (pid {self.kafka_pid}) died; logs in {_short(self.kafka_dir / 'logs')}")
        for svc in self.services:
            if svc.proc is None:
                continue
            if svc.restart_at is not None:
                if now >= svc.restart_at:
                    svc.start()
                    self.write_record()
                continue
            rc = svc.proc.poll()
            if rc is None:
                continue
            svc.failures = [t for t in svc.failures if now - t < CRASH_LOOP_WINDOW_S] + [now]
            log.error("%s exited with status %s; last lines of %s:\n%s", svc.name, rc, _short(svc.log_path),
                      svc.tail())
            # its process group may still hold children: clean it up before a restart
            svc.stop(grace_s=5.0)
            if len(svc.failures) >= CRASH_LOOP_COUNT:
                raise StackError(f"{svc.name} failed {len(svc.failures)} times within "
                                 f"{CRASH_LOOP_WINDOW_S / 60:.0f} minutes: stopping the stack "
                                 f"(log {_short(svc.log_path)})")
            delay = min(RESTART_BACKOFF_MAX_S, 2.0 ** (len(svc.failures) - 1))
            svc.restart_at = now + delay
            log.warning("restarting %s in %.0f s", svc.name, delay)

    def run_forever(self) -> None:
        while True:
            self._check_stop()
            self.supervise_once()
            time.sleep(0.5)

    # -- shutdown
    def shutdown(self) -> None:
        for proc in list(self._setup_procs):
            _stop_group(proc, 0.0 if self.hurry else 10.0)
        for svc in reversed(self.services):
            svc.stop(0.0 if self.hurry else STOP_GRACE_S.get(svc.name, 20.0))
        if self.kafka_started:
            pgid = _pgid(self.kafka_pid)
            env = dict(self.env, KAFKA_STOP_TIMEOUT="1" if self.hurry else "30")
            with contextlib.suppress(StackError):
                _run(["bash", str(KAFKA_SH), "stop", str(self.kafka_dir)], env, self.logs / "kafka-control.log",
                     "stopping Kafka", timeout=120)
            # the broker's process group also holds kafka.sh's watchdog (and its `sleep 1`)
            deadline = time.monotonic() + 5.0
            while pgid is not None and _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if pgid is not None and _group_alive(pgid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
            log.info("stopped Kafka")
        with contextlib.suppress(FileNotFoundError):
            self.record.unlink()

    def write_record(self) -> None:
        """Which processes belong to this stack (for tests and for people): pids = process groups."""
        data = {
            "pid": os.getpid(),
            "state_dir": str(self.state),
            "kafka": {"pid": self.kafka_pid, "pgid": _pgid(self.kafka_pid),
                      "bootstrap": f"127.0.0.1:{self.args.kafka_port}"},
            "services": {s.name: {"pid": s.proc.pid, "pgid": s.proc.pid, "log": str(s.log_path)}
                         for s in self.services if s.proc is not None and s.proc.poll() is None},
            "dashboard_url": self.dashboard_url,
        }
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.record)

    @property
    def dashboard_url(self) -> str:
        host = self.args.address
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        return f"http://{host}:{self.args.dashboard_port}"

    # -- the whole life
    def run(self) -> int:
        self.state.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        lock = open(self.state / "stack.lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise StackError(f"another local stack is running from {self.state} (see {self.record})") from None
        rc = 0
        try:
            self.check_ports()
            self.start_kafka()
            self._check_stop()
            password = self.prepare_storage()
            self._check_stop()
            model = self.ensure_model()
            self._check_stop()
            self.make_services(model)
            self.start_services()
            self.wait_ready()
            self.banner(password)
            self.run_forever()
        except KeyboardInterrupt:
            self.stopping = True
            rc = 0
        except StackError as exc:
            log.error("%s", exc)
            rc = 1
        finally:
            self.shutdown()
            lock.close()
        return rc

    def banner(self, password: str | None) -> None:
        a = self.args
        lines = ["", "linewatch is running", f"  dashboard:  {self.dashboard_url}"]
        if password:
            lines += [f"  first login: user {a.admin_user}  password {password}",
                      f"               (also in {self.admin_password_file}, readable only by you: delete it",
                      "                after your first login; change the password on the Users page)"]
        elif self.admin_password_file.exists():
            lines += [f"  first login: user {a.admin_user}, password in {self.admin_password_file}",
                      "               (readable only by you; delete it after your first login)"]
        else:
            lines += ["  log in with your dashboard account (the first admin was shown at the first start;",
                      f"   reset with: LINEWATCH_DATA_DIR={self.data} linewatch-storage users passwd {a.admin_user})"]
        source = f"folder {a.folder}" if a.folder else "line simulator"
        lines += [f"  camera:     {a.camera_id} ({source}, {a.fps:g} frames/s)",
                  f"  Kafka:      127.0.0.1:{a.kafka_port}   detector metrics: "
                  f"http://127.0.0.1:{a.detector_port}/metrics",
                  f"  state:      {self.state}   logs: {self.logs}",
                  "Ctrl-C stops everything.", ""]
        print("\n".join(lines), flush=True)


# -------------------------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deploy/local/start.sh",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state-dir", default=str(REPO / "var" / "local"),
                   help="everything the stack keeps between starts: Kafka data, SQLite, images, models, logs "
                        "(default var/local in the repository)")
    cam = p.add_argument_group("camera")
    cam.add_argument("--folder", metavar="PATH",
                     help="replay the images of this folder (sorted, looping) instead of the line simulator")
    cam.add_argument("--fps", type=float, default=2.0, help="frames per second the camera sends (default 2)")
    cam.add_argument("--camera-id", default="cam-1", help="camera id (default cam-1)")
    cam.add_argument("--line", default="line-1", help="production line id (default line-1)")
    cam.add_argument("--product", default="flange",
                     help="product id: routes frames to the model and names the first model (default flange)")
    cam.add_argument("--seed", type=int, default=1, help="simulator seed (default 1)")
    cam.add_argument("--defect-rate", type=float, default=0.05,
                     help="fraction of simulated parts with a painted defect (default 0.05)")
    det = p.add_argument_group("detector")
    det.add_argument("--model", metavar="CKPT",
                     help="use this checkpoint instead of the product's active version in the model store "
                          "(a first model is trained and registered at the first start)")
    det.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                     help="inference device (default auto: CUDA when present)")
    net = p.add_argument_group("ports and addresses")
    net.add_argument("--address", default="127.0.0.1",
                     help="dashboard listen address (default 127.0.0.1; 0.0.0.0 to reach it from other machines)")
    net.add_argument("--dashboard-port", type=int, default=8501, help="default 8501")
    net.add_argument("--kafka-port", type=int, default=9092, help="broker port on 127.0.0.1 (default 9092)")
    net.add_argument("--detector-port", type=int, default=9102,
                     help="detector /healthz /readyz /metrics (default 9102)")
    net.add_argument("--writer-port", type=int, default=9103, help="writer /healthz /metrics (default 9103)")
    misc = p.add_argument_group("other")
    misc.add_argument("--topic-prefix", default="linewatch", help="Kafka topic prefix (default linewatch)")
    misc.add_argument("--partitions", type=int, default=6, help="partitions per topic (default 6)")
    misc.add_argument("--admin-user", default="admin", help="name of the first dashboard user (default admin)")
    misc.add_argument("--ready-timeout", type=float, default=300.0,
                      help="seconds the services may take to become ready (default 300)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [stack] %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    if args.folder and not Path(args.folder).expanduser().is_dir():
        print(f"error: --folder {args.folder}: not a directory", file=sys.stderr)
        return 2
    if args.fps <= 0:
        print("error: --fps must be > 0", file=sys.stderr)
        return 2
    stack = Stack(args)
    signal.signal(signal.SIGINT, stack.on_signal)
    signal.signal(signal.SIGTERM, stack.on_signal)
    try:
        return stack.run()
    except StackError as exc:  # before anything was started (lock, state directory)
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
