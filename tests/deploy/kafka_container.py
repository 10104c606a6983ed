"""Run the Kafka container of a deployment (Compose or Kubernetes) as its manifest declares it, with a
read-only root file system, where neither Docker nor Kubernetes is available.

What is real: the broker (Apache Kafka from Maven Central, the version the image ships), the
manifest's command, environment, health check, secrets and configuration files, the image's own
config generator (``kafka.docker.KafkaDockerWrapper``, in the broker's jar), the clients' settings,
and the file system constraints, which the kernel enforces: in a mount and network namespace of its
own every mount is read-only except the paths the manifest makes writable (volumes, ``tmpfs``,
``emptyDir``), and Compose's tmpfs mounts are ``noexec`` as Docker makes them unless the entry says
``:exec``.  The broker runs as uid 1000 (the image's ``appuser``); host names the manifest uses
resolve to the namespace's loopback.

What stands in: the image's shell scripts (``/etc/kafka/docker/run``, ``bin/kafka-*.sh``), rewritten
after the apache/kafka sources for what touches files (the config directory must be writable, the
wrapper writes ``server.properties`` and the log4j files there, ``kafka-run-class.sh`` creates
``LOG_DIR`` = ``/opt/kafka/logs``, the server writes its GC log and log4j files there), and the
distribution's log4j files.  Java is the host's, not the image's.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO / "deploy" / "kafka" / "kafka.sh"
APPUSER = 1000


@dataclass
class Container:
    """The Kafka container a manifest declares."""

    command: list[str]
    env: dict[str, str]
    files: dict[str, Path]  # read-only files in the container -> their content on this machine
    writable: dict[str, bool]  # writable mount -> exec allowed (False: a noexec tmpfs)
    health: str  # shell command; exit 0 = healthy
    client_env: dict[str, str]  # LINEWATCH_* of the deployment's Kafka clients (paths in the container)
    image: str
    kept_on_restart: set[str] = field(default_factory=set)  # writable mounts that survive a restart


def _unescape(s: str) -> str:
    return s.replace("$$", "$")  # Compose and Kubernetes both turn $$ into $


def _compose_value(value: object) -> str:
    """Compose's interpolation with nothing set in .env: ${NAME:-default} -> default, then $$ -> $."""
    return _unescape(re.sub(r"(?<!\$)\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", str(value)))


def _hosts(c: Container) -> set[str]:
    names = {"localhost", socket.gethostname()}  # the container's own name, as Docker and Kubernetes write it
    for key in ("KAFKA_ADVERTISED_LISTENERS", "KAFKA_CONTROLLER_QUORUM_VOTERS"):
        for item in c.env.get(key, "").split(","):
            host = item.split("//")[-1].split("@")[-1].rsplit(":", 1)[0]
            if host:
                names.add(host)
    for item in c.client_env.get("LINEWATCH_KAFKA_BOOTSTRAP", "").split(","):
        names.add(item.rsplit(":", 1)[0])
    return names


def from_compose(doc: dict, certs: Path) -> Container:
    """The ``kafka`` service of a Compose file; its secret files are taken from ``certs``
    (``deploy/kafka/certs.sh``'s output, matched by file name)."""
    service = doc["services"]["kafka"]
    files: dict[str, Path] = {}
    for s in service.get("secrets", []):
        source, target = (s, s) if isinstance(s, str) else (s["source"], s.get("target", s["source"]))
        files[target if target.startswith("/") else f"/run/secrets/{target}"] = \
            certs / Path(doc["secrets"][source]["file"]).name
    # the clients run beside the broker here: their CA too, where their own containers have it
    files["/run/secrets/kafka_ca"] = certs / Path(doc["secrets"]["kafka_ca"]["file"]).name
    for c in service.get("configs", []):
        content = certs.parent / f"config-{c['source']}"
        content.write_text(doc["configs"][c["source"]]["content"])
        files[c["target"]] = content
    writable = {}
    for v in service.get("volumes", []):
        writable[v.split(":")[1]] = True
    for t in service.get("tmpfs", []):
        path, _, opts = t.partition(":")
        writable[path] = "exec" in opts.split(",")
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    x_env = doc["x-kafka-env"]
    return Container(command=[_compose_value(a) for a in service["command"]],
                     env={k: _compose_value(v) for k, v in service["environment"].items()},
                     files=files, writable=writable, health=test[1], image=service["image"],
                     client_env={k: _compose_value(v) for k, v in x_env.items()},
                     kept_on_restart={v.split(":")[1] for v in service.get("volumes", [])})


def from_k8s(docs: list[dict], config: dict, certs: Path) -> Container:
    """The ``kafka`` StatefulSet of ``kafka.yaml`` (its ConfigMaps from the same file, the Secret's
    keys from ``certs`` by file name); ``config`` is the linewatch ConfigMap's data (the clients)."""
    sts = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "kafka")
    maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    pod = sts["spec"]["template"]["spec"]
    c = pod["containers"][0]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    files: dict[str, Path] = {}
    writable = {}
    for m in c["volumeMounts"]:
        v = volumes.get(m["name"], {})
        if m["name"] in claims or "emptyDir" in v:
            assert not m.get("readOnly")
            writable[m["mountPath"]] = True  # emptyDirs and volumes are not noexec
        elif "secret" in v:
            for name in ("kafka.keystore.p12", "keystore_password", "kafka_password"):  # secret.example.yaml
                files[f"{m['mountPath']}/{name}"] = certs / name
        elif "configMap" in v:
            for key, content in maps[v["configMap"]["name"]].items():
                path = certs.parent / f"config-{key}"
                path.write_text(content)
                files[f"{m['mountPath']}/{key}"] = path
    client_env = {k: v for k, v in config.items() if k.startswith("LINEWATCH_KAFKA_")}
    client_env["LINEWATCH_KAFKA_SASL_USERNAME"] = "linewatch"  # from the Secret linewatch-kafka
    client_env["LINEWATCH_KAFKA_SASL_PASSWORD_FILE"] = "/etc/kafka/secrets/kafka_password"
    client_env["LINEWATCH_KAFKA_SSL_CAFILE"] = "/etc/kafka/ca.crt"
    files["/etc/kafka/ca.crt"] = certs / "ca.crt"
    return Container(command=[_unescape(a) for a in c["command"]],
                     env={e["name"]: _unescape(str(e["value"])) for e in c["env"]},
                     files=files, writable=writable, image=c["image"],
                     health=shlex.join(c["readinessProbe"]["exec"]["command"]),
                     client_env=client_env, kept_on_restart=set(writable))


# ------------------------------------------------------------------ the image's scripts, stood in

_RUN_CLASS = r"""#!/usr/bin/env bash
# stand-in for bin/kafka-run-class.sh: LOG_DIR, log4j, GC log, class path as the distribution's
base_dir=/opt/kafka
LOG_DIR="${LOG_DIR:-$base_dir/logs}"
[ -d "$LOG_DIR" ] || mkdir -p "$LOG_DIR"
gc=()
if [ "${1:-}" = "-name" ]; then name="$2"; shift 2; fi
if [ "${1:-}" = "-loggc" ]; then gc=("-Xlog:gc*:file=$LOG_DIR/$name-gc.log:time,tags:filecount=10,filesize=100M"); shift; fi
# (C1 only: a quicker start on a busy test machine; the image starts from CDS archives for the same)
exec java ${KAFKA_HEAP_OPTS:--Xmx256M} -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:TieredStopAtLevel=1 "${gc[@]}" \
  ${KAFKA_JMX_OPTS:--Dcom.sun.management.jmxremote -Dcom.sun.management.jmxremote.authenticate=false -Dcom.sun.management.jmxremote.ssl=false} \
  "-Dkafka.logs.dir=$LOG_DIR" ${KAFKA_LOG4J_OPTS:--Dlog4j.configuration=file:$base_dir/config/tools-log4j.properties} \
  -cp "$base_dir/libs/*" ${KAFKA_OPTS:-} "$@"
"""

_TOOLS = {
    "kafka-server-start.sh": 'export KAFKA_LOG4J_OPTS="${KAFKA_LOG4J_OPTS:--Dlog4j.configuration=file:/opt/kafka/config/'
                             'log4j.properties}"\nexport KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}"\n'
                             'exec /opt/kafka/bin/kafka-run-class.sh -name kafkaServer -loggc kafka.Kafka "$@"',
    "kafka-configs.sh": 'exec /opt/kafka/bin/kafka-run-class.sh kafka.admin.ConfigCommand "$@"',
    "kafka-broker-api-versions.sh": 'exec /opt/kafka/bin/kafka-run-class.sh kafka.admin.BrokerApiVersionsCommand "$@"',
}

# /etc/kafka/docker/run = configure + launch of the image (3.8/3.9), what they do to files and env
_RUN = r"""#!/usr/bin/env bash
set -euo pipefail
[ -w /opt/kafka/config/ ] || { echo "/opt/kafka/config/ file not writable"; exit 1; }
if [[ "${KAFKA_ADVERTISED_LISTENERS:-}" == *"SSL://"* ]]; then
  export KAFKA_SSL_KEYSTORE_LOCATION="/etc/kafka/secrets/$KAFKA_SSL_KEYSTORE_FILENAME"
  [ -e "$KAFKA_SSL_KEYSTORE_LOCATION" ] || { echo "$KAFKA_SSL_KEYSTORE_LOCATION file does not exist"; exit 1; }
  export KAFKA_SSL_KEY_PASSWORD="$(cat "/etc/kafka/secrets/$KAFKA_SSL_KEY_CREDENTIALS")"
  export KAFKA_SSL_KEYSTORE_PASSWORD="$(cat "/etc/kafka/secrets/$KAFKA_SSL_KEYSTORE_CREDENTIALS")"
fi
export KAFKA_JMX_OPTS="-Dcom.sun.management.jmxremote=true -Dcom.sun.management.jmxremote.authenticate=false -Dcom.sun.management.jmxremote.ssl=false"
result=$(/opt/kafka/bin/kafka-run-class.sh kafka.docker.KafkaDockerWrapper setup \
      --default-configs-dir /etc/kafka/docker --mounted-configs-dir /mnt/shared/config \
      --final-configs-dir /opt/kafka/config 2>&1) || echo "$result" | grep -i "already formatted" \
  || { echo "$result"; exit 1; }
exec /opt/kafka/bin/kafka-server-start.sh /opt/kafka/config/server.properties
"""

# the distribution's config/log4j.properties in short: console and files under kafka.logs.dir
_LOG4J = """log4j.rootLogger=INFO, stdout, kafkaAppender
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.appender.kafkaAppender=org.apache.log4j.DailyRollingFileAppender
log4j.appender.kafkaAppender.DatePattern='.'yyyy-MM-dd-HH
log4j.appender.kafkaAppender.File=${kafka.logs.dir}/server.log
log4j.appender.kafkaAppender.layout=org.apache.log4j.PatternLayout
log4j.appender.kafkaAppender.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.appender.controllerAppender=org.apache.log4j.DailyRollingFileAppender
log4j.appender.controllerAppender.DatePattern='.'yyyy-MM-dd-HH
log4j.appender.controllerAppender.File=${kafka.logs.dir}/controller.log
log4j.appender.controllerAppender.layout=org.apache.log4j.PatternLayout
log4j.appender.controllerAppender.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.controller=TRACE, controllerAppender
log4j.additivity.kafka.controller=false
"""
_TOOLS_LOG4J = """log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.appender.stderr.Target=System.err
"""

# the broker's compression codecs load native code from java.io.tmpdir (/tmp)
_PROBE = """public class Probe {
    public static void main(String[] a) {
        com.github.luben.zstd.Zstd.compress(new byte[64]);
        org.xerial.snappy.Snappy.maxCompressedLength(64);
        System.out.println("native codecs loaded");
    }
}
"""

# the deployment's clients: topic, produce, consume (after a restart: the same records again)
_CLIENT = """import sys
from kafka import KafkaConsumer, KafkaProducer
from ingest.kafka_config import KafkaSettings
from ingest.topics import ensure_topics

s = KafkaSettings()
topic = s.topic("results")
if sys.argv[1] == "produce":
    ensure_topics(s, 1, ("results",))
    p = KafkaProducer(**s.client_kwargs(), acks="all", compression_type="gzip")
    for i in range(20):
        p.send(topic, f"record {i}".encode())
    p.flush(30)
    p.close()
c = KafkaConsumer(topic, **s.client_kwargs(), auto_offset_reset="earliest", consumer_timeout_ms=15000)
got = []
for m in c:
    got.append(m.value.decode())
    if len(got) == 20:
        break
c.close()
print(f"CLIENT {len(got)} records back")
sys.exit(0 if got == [f"record {i}" for i in range(20)] else 1)
"""


def _image(root: Path, c: Container) -> None:
    """The image's files, to lie read-only over the machine's /etc, /opt, /var, /run."""
    for name, text in {"bin/kafka-run-class.sh": _RUN_CLASS,
                       **{f"bin/{k}": f"#!/usr/bin/env bash\n{v}\n" for k, v in _TOOLS.items()}}.items():
        p = root / "opt/kafka" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(0o755)
    (root / "opt/kafka/libs").mkdir(parents=True)
    docker = root / "etc/kafka/docker"
    docker.mkdir(parents=True)
    (docker / "run").write_text(_RUN)
    (docker / "run").chmod(0o755)
    (docker / "server.properties").write_text("# the image's default: used only when no KAFKA_* variable is set\n")
    (docker / "log4j.properties").write_text(_LOG4J)
    (docker / "tools-log4j.properties").write_text(_TOOLS_LOG4J)
    (root / "opt/probe").mkdir(parents=True)
    (root / "opt/probe/Probe.java").write_text(_PROBE)
    (root / "opt/probe/client.py").write_text(_CLIENT)
    for path, source in c.files.items():
        p = root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, p)
        p.chmod(0o444)
    for path in c.writable:
        (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (root / "etc/hosts").write_text("".join(f"127.0.0.1 {h}\n" for h in sorted(_hosts(c))))


def kafka_version() -> str:
    """The Kafka version deploy/kafka/kafka.sh runs (its pom.xml): the image's tag must be the same."""
    return subprocess.run(["bash", str(KAFKA_SH), "version"], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()


def kafka_libs() -> Path:
    xdg = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    cache = os.environ.get("LINEWATCH_CACHE") or xdg / "linewatch"  # as kafka.sh finds it
    return Path(cache) / f"kafka-{kafka_version()}" / "libs"


def writable_dir(work: Path, path: str) -> Path:
    """Where the contents of the container's writable mount ``path`` are kept."""
    return work / "rw" / path.strip("/").replace("/", "_")


def run_read_only(c: Container, work: Path, *, restart: bool, start_s: float = 600,
                  timeout_s: float = 1500) -> subprocess.CompletedProcess:
    """Start the container's command in a read-only root, wait for its health check, run the
    clients, stop it with SIGTERM (and start it again, if ``restart``).  Returns the driver's
    output; the writable mounts' contents stay under ``work/rw``."""
    libs = kafka_libs()
    root = work / "image"
    _image(root, c)
    rw = {}
    for path in c.writable:
        d = writable_dir(work, path)
        d.mkdir(parents=True)
        os.chown(d, APPUSER, APPUSER)
        d.chmod(0o1777 if path not in c.kept_on_restart else 0o775)
        rw[path] = d
    port = re.search(r"(?<![A-Z_])PLAINTEXT://[^,]*:(\d+)", c.env["KAFKA_LISTENERS"]).group(1)  # the broker's tools'
    tops = sorted({Path(p).parts[1] for p in [*c.files, *c.writable, "/opt/kafka", "/etc/hosts"]} - {"tmp"})
    env = " ".join(shlex.quote(f"{k}={v}") for k, v in {**c.env, "PATH": "/usr/bin:/bin"}.items())
    # the clients run this interpreter (its environment) and this checkout, either of which may live
    # under /tmp, which the container's own /tmp hides: both are bound under /opt/probe first
    prefix, exe = Path(sys.prefix), Path(sys.executable)
    python = f"/opt/probe/python/{exe.relative_to(prefix)}" if exe.is_relative_to(prefix) else str(exe)
    for d in ("python", "repo"):
        (root / "opt" / "probe" / d).mkdir(parents=True, exist_ok=True)
    client_env = " ".join(shlex.quote(f"{k}={v}") for k, v in {
        **c.client_env, "PATH": "/usr/bin:/bin", "PYTHONPATH": "/opt/probe/repo",
        "PYTHONDONTWRITEBYTECODE": "1"}.items())
    as_app = f"setpriv --reuid={APPUSER} --regid={APPUSER} --clear-groups env -i {env}"
    rw_mounts = "\n".join(
        f"mount --bind {shlex.quote(str(rw[p]))} {shlex.quote(p)}\n"
        f"mount -o remount,bind,rw,nosuid,nodev,{'exec' if x else 'noexec'} {shlex.quote(p)}"
        for p, x in sorted(c.writable.items(), key=lambda kv: kv[0] == "/tmp"))  # /tmp last: work is under it
    clear = "\n".join(f"find {shlex.quote(p)} -mindepth 1 -delete" for p in sorted(c.writable)
                      if p not in c.kept_on_restart)
    driver = textwrap.dedent(f"""\
        set -euo pipefail
        mount --make-rprivate /
        ip link set lo up
        for top in {' '.join(tops)}; do
          mount -t overlay overlay -o "lowerdir={root}/$top:/$top" "/$top"
        done
        mount --bind {shlex.quote(str(libs))} /opt/kafka/libs
        mount --bind {shlex.quote(str(prefix))} /opt/probe/python
        mount --bind {shlex.quote(str(REPO))} /opt/probe/repo
        # a read-only root: every mount read-only but the kernel's (/proc, /sys, /dev as Docker has
        # them); nothing may be open for writing on them now (stdout, stderr are pipes)
        awk '{{print $5}}' /proc/self/mountinfo | sort -u | while read -r mp; do
          case "$mp" in /proc*|/sys*|/dev*) continue ;; esac
          mount -o remount,bind,ro "$mp" 2>/dev/null || true
        done
        {textwrap.indent(rw_mounts, '        ').strip()}
        for p in / /etc/kafka /opt/kafka /opt/kafka/bin /var/lib; do
          if f=$(mktemp -p "$p" 2>/dev/null); then rm -f "$f"; echo "PROBE $p writable"; else echo "PROBE $p read-only"; fi
        done
        echo "PROBE native: $({as_app} java -cp '/opt/kafka/libs/*' /opt/probe/Probe.java 2>&1 | tail -n 1)"
        start() {{
          setsid {as_app} {shlex.join(c.command)} >&2 &  # the container's output: stderr
          pid=$!
          local deadline=$((SECONDS + {int(start_s)}))
          # the health check starts a JVM: first wait, cheaply, for the broker's port
          until (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null; do
            kill -0 $pid 2>/dev/null || {{ echo "EXITED"; return 1; }}
            [ $SECONDS -lt $deadline ] || {{ echo "NOT SERVING"; return 1; }}
            sleep 1
          done
          until {as_app} sh -c {shlex.quote(c.health)} >/dev/null 2>&1; do
            kill -0 $pid 2>/dev/null || {{ echo "EXITED"; return 1; }}
            [ $SECONDS -lt $deadline ] || {{ echo "NOT HEALTHY"; return 1; }}
            sleep 2
          done
          echo "HEALTHY"
        }}
        stop() {{
          kill -TERM $pid
          for _ in $(seq 1 60); do kill -0 $pid 2>/dev/null || break; sleep 1; done
          wait $pid && rc=0 || rc=$?
          echo "STOPPED rc=$rc"
          pkill -KILL -s $pid 2>/dev/null || true
        }}
        start
        env -i {client_env} {shlex.quote(python)} /opt/probe/client.py produce
        stop
        if {'true' if restart else 'false'}; then
          {clear or 'true'}
          start
          env -i {client_env} {shlex.quote(python)} /opt/probe/client.py consume
          stop
        fi
        echo "DONE"
        """)
    (work / "driver.sh").write_text(driver)
    # a PID namespace too: when the driver ends (or is killed on a timeout) every process in it goes
    with open(work / "container.log", "wb") as log:
        done = subprocess.run(["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc",
                               "bash", str(work / "driver.sh")], stdout=subprocess.PIPE, stderr=log,
                              text=True, timeout=timeout_s)
    return done


def namespaces_available() -> str | None:
    """Why a read-only root cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root (mount namespaces, and the broker run as the image's uid 1000)"
    for tool in ("unshare", "setpriv", "ip", "java", "javac"):  # deploy/ci/system-deps.sh installs them
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "no overlay file system in this kernel"
    probe = subprocess.run(["unshare", "--mount", "--net", "--fork", "sh", "-c",
                            "mount --make-rprivate / && mount -t tmpfs tmpfs /mnt"],
                           capture_output=True, text=True, timeout=30)
    return None if probe.returncode == 0 else f"no mount namespace here: {probe.stderr.strip()[:200]}"
