"""CI checks of the deployments it cannot run: Kubernetes, Compose, systemd.

* Kubernetes (deploy/k8s): every object against the Kubernetes API schemas (kubernetes-validate,
  strict: an unknown field fails); KEDA's ScaledObject (a CRD, not in those schemas) against KEDA's
  CRD-generated pydantic models (cloudcoil.models.keda), strictly too: the document must survive a
  round trip unchanged, so a misspelt field fails; kustomization.yaml lists every manifest.
* Compose (deploy/compose): compose.yaml against the Compose specification's JSON schema that
  check-jsonschema vendors (``vendor.compose-spec``), with the real CLI; the CPU override merged
  the way Compose does (``!reset`` removes the key) and validated again.
* systemd (deploy/systemd): ``systemd-analyze verify`` on the units, with the install paths
  (/opt/linewatch/venv, /opt/linewatch/src, /etc/linewatch) pointed at this checkout; skipped
  where systemd-analyze is missing.

Plus what ties the files together: probes point at the paths the services really serve, the
scheduled retraining runs the command the issue names, the image copies the scripts that the
manifests call.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
COMPOSE = REPO / "deploy" / "compose"
SYSTEMD = REPO / "deploy" / "systemd"

K8S_FILES = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
RETRAIN = ["linewatch-detector", "retrain", "--product"]


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_k8s() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in K8S_FILES for d in _docs(p)]


def _pod_specs(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
        return [spec["template"]["spec"]]
    return []


# ------------------------------------------------------------------------------------ kubernetes

@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_k8s_manifest_matches_api_schema(path):
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    docs = _docs(path)
    assert docs, f"{path.name} holds no object"
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: test_keda_scaledobject_matches_crd
        kubernetes_validate.validate(doc, version, strict=True)


def test_k8s_validation_rejects_a_misspelt_field():
    """The strict schema check really looks inside the pod template (guards the test above)."""
    import kubernetes_validate

    doc = copy.deepcopy(_docs(K8S / "writer.yaml")[0])
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbe"]["httpGett"] = container["livenessProbe"].pop("httpGet")
    with pytest.raises(kubernetes_validate.ValidationError, match="httpGett"):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def _validate_keda(doc: dict) -> None:
    from cloudcoil.models.keda import v1alpha1

    obj = getattr(v1alpha1, doc["kind"]).model_validate(doc)
    round_trip = obj.model_dump(by_alias=True, exclude_unset=True, mode="json")
    if round_trip != doc:
        raise ValueError(f"fields the ScaledObject CRD does not know: {json.dumps(doc)} -> {json.dumps(round_trip)}")


def test_keda_scaledobject_matches_crd():
    pytest.importorskip("cloudcoil.models.keda", reason="cloudcoil.models.keda (test extra) not installed")
    doc, auth = _docs(K8S / "detector-scaledobject.yaml")
    _validate_keda(doc)
    _validate_keda(auth)

    bad = copy.deepcopy(doc)
    bad["spec"]["maxReplicaCount"] = "six"
    with pytest.raises(Exception, match="maxReplicaCount"):
        _validate_keda(bad)
    typo = copy.deepcopy(doc)
    typo["spec"]["cooldownPeriods"] = typo["spec"].pop("cooldownPeriod")
    with pytest.raises(ValueError, match="does not know"):
        _validate_keda(typo)


def test_keda_scales_the_detector_on_its_group_and_topic():
    """The scaler watches the consumer group and frames topic the detector really uses."""
    from detector.service.settings import ServiceSettings
    from ingest.kafka_config import KafkaSettings

    so, auth = _docs(K8S / "detector-scaledobject.yaml")
    config = _docs(K8S / "config.yaml")[0]["data"]
    [trigger] = so["spec"]["triggers"]
    # over SASL_SSL / SCRAM-SHA-512 like the services, credentials from the clients' Secret
    assert trigger["metadata"]["sasl"] == "scram_sha512" and trigger["metadata"]["tls"] == "enable"
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"username", "password", "ca"} and {n for n, _ in refs.values()} == {"linewatch-kafka"}
    assert trigger["metadata"]["bootstrapServers"].rsplit(":", 1)[1] == config["LINEWATCH_KAFKA_BOOTSTRAP"].rsplit(":", 1)[1]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == ServiceSettings().group
    kafka = KafkaSettings(topic_prefix=config["LINEWATCH_TOPIC_PREFIX"])
    assert meta["topic"] == kafka.topic("frames")
    assert meta["bootstrapServers"].split(".")[0] == config["LINEWATCH_KAFKA_BOOTSTRAP"].split(":")[0]
    deployments = {d["metadata"]["name"] for _, d in _all_k8s() if d["kind"] == "Deployment"}
    assert so["spec"]["scaleTargetRef"]["name"] in deployments
    # more detectors than partitions would idle: the init Job creates 6
    init = " ".join(_pod_specs(_docs(K8S / "init-job.yaml")[0])[0]["containers"][0]["command"])
    partitions = int(re.search(r"topics --partitions (\d+)", init).group(1))
    assert so["spec"]["maxReplicaCount"] <= partitions


def test_kustomization_lists_every_manifest_but_the_secret_example():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S_FILES}
    assert listed == present - {"secret.example.yaml"}
    assert all(d["metadata"].get("namespace", "linewatch") == "linewatch" for _, d in _all_k8s())


def test_k8s_probes_secrets_and_gpu_retraining():
    by_name = {(d["kind"], d["metadata"]["name"]): d for _, d in _all_k8s()}
    probes = {}
    for (kind, name), doc in by_name.items():
        for spec in _pod_specs(doc):
            for c in spec["containers"]:
                probes[name] = (c.get("livenessProbe"), c.get("readinessProbe"))
                # credentials only from Secrets: no literal password or database URL in a pod
                for env in c.get("env", []):
                    if any(k in env["name"] for k in ("PASSWORD", "DATABASE_URL")):
                        assert "secretKeyRef" in env.get("valueFrom", {}), (name, env)
    live, ready = probes["detector"]
    assert live["httpGet"]["path"] == "/healthz" and ready["httpGet"]["path"] == "/readyz"
    live, ready = probes["writer"]
    assert live["httpGet"]["path"] == "/healthz" and ready["httpGet"]["path"] == "/readyz"
    live, ready = probes["dashboard"]
    assert live["httpGet"]["path"] == ready["httpGet"]["path"] == "/_stcore/health"
    for bridge in ("bridge-mqtt", "bridge-opcua"):
        live, ready = probes[bridge]
        assert live["httpGet"]["path"] == "/healthz" and ready["httpGet"]["path"] == "/readyz"
    config = _docs(K8S / "config.yaml")[0]["data"]
    assert not any("PASSWORD" in k for k in config)

    cron = by_name[("CronJob", "retrain-flange")]
    pod = _pod_specs(cron)[0]
    [c] = pod["containers"]
    assert c["args"][:3] == RETRAIN
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"


def _containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_k8s_containers_run_locked_down():
    """No privilege escalation, no capabilities, read-only root file systems (writable emptyDirs
    where a process writes), non-root, the runtime's default seccomp profile: in every pod."""
    seen = set()
    for _, doc in _all_k8s():
        for spec in _pod_specs(doc):
            pod = spec["securityContext"]
            assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, doc["metadata"]["name"]
            assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, doc["metadata"]["name"]
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for c in _containers(spec):
                seen.add(c["name"])
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, c["name"]
                assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
                assert sc["readOnlyRootFilesystem"] is True, c["name"]
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                if c["image"] == "linewatch":
                    assert "emptyDir" in volumes[mounts["/tmp"]], c["name"]
                if c["name"] == "kafka":  # test_kafka_read_only.py runs it so
                    for path in ("/opt/kafka/config", "/opt/kafka/logs", "/tmp"):
                        assert "emptyDir" in volumes[mounts[path]], path
    assert {"detector", "writer", "dashboard", "ingest", "kafka", "postgres", "wait-for-model"} <= seen
    config = _docs(K8S / "config.yaml")[0]["data"]
    assert config["HOME"] == "/tmp"  # caches (torch, Streamlit, ONNX exports) on the emptyDir


def _selects(selector: dict, labels: dict) -> bool:
    """Kubernetes label selector semantics (matchLabels and matchExpressions In / NotIn / Exists)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        ok = {"In": labels.get(e["key"]) in e.get("values", []),
              "NotIn": labels.get(e["key"]) not in e.get("values", []),
              "Exists": e["key"] in labels, "DoesNotExist": e["key"] not in labels}[e["operator"]]
        if not ok:
            return False
    return True


def _ingress_allowed(policies: list[dict], src: str | None, src_ns: str, dst: str, port: int) -> bool:
    """Whether a connection from a pod named ``src`` (app.kubernetes.io/name; None: not a pod of
    ours) in namespace ``src_ns`` to pod ``dst`` on ``port`` passes the NetworkPolicies."""
    src_labels = {"app.kubernetes.io/name": src} if src else {}
    ns_labels = {"kubernetes.io/metadata.name": src_ns}
    dst_labels = {"app.kubernetes.io/name": dst}
    selecting = [p for p in policies if _selects(p["spec"]["podSelector"], dst_labels)
                 and "Ingress" in p["spec"]["policyTypes"]]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            if rule.get("ports") and port not in [p["port"] for p in rule["ports"]]:
                continue
            peers = rule.get("from")
            if not peers:
                return True
            for peer in peers:
                pod_ok = "podSelector" not in peer or _selects(peer["podSelector"], src_labels)
                if "namespaceSelector" in peer:
                    ns_ok = _selects(peer["namespaceSelector"], ns_labels)
                else:
                    ns_ok = src_ns == "linewatch" and src is not None
                if pod_ok and ns_ok:
                    return True
    return False


def test_k8s_network_policies_allow_only_the_pipeline_flows():
    policies = [d for _, d in _all_k8s() if d["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"]

    def allowed(src, dst, port, ns="linewatch"):
        return _ingress_allowed(policies, src, ns, dst, port)

    for client in ("ingest", "detector", "writer", "bridge-mqtt", "linewatch-init"):
        assert allowed(client, "kafka", 9094), client
    assert allowed(None, "kafka", 9094, ns="keda")  # the ScaledObject reads the group's lag
    for client in ("writer", "dashboard", "retrain", "linewatch-init", "linewatch-first-model"):
        assert allowed(client, "postgres", 5432), client
    assert allowed(None, "dashboard", 8501, ns="ingress-nginx")
    for name, port in (("detector", 9102), ("writer", 9103), ("bridge-mqtt", 9104), ("bridge-opcua", 9105)):
        assert allowed(None, name, port, ns="monitoring"), name
        assert not allowed(None, name, port, ns="default"), name
        assert not allowed("ingest", name, port), name
    assert allowed("dashboard", "detector", 9102)  # LINEWATCH_DETECTOR_METRICS_URL
    # what does not flow is refused
    for src, dst, port in (("ingest", "postgres", 5432), ("detector", "postgres", 5432),
                           ("dashboard", "kafka", 9094), ("retrain", "kafka", 9094), ("ingest", "dashboard", 8501),
                           ("ingest", "kafka", 9092),
                           ("writer", "kafka", 9093), ("detector", "writer", 9103)):
        assert not allowed(src, dst, port), (src, dst, port)
    assert not allowed(None, "dashboard", 8501, ns="monitoring")
    assert not allowed(None, "postgres", 5432, ns="ingress-nginx")
    # the ports the policies open are the ones the pods listen on
    listening = {p["containerPort"] for _, d in _all_k8s() for spec in _pod_specs(d) for c in spec["containers"]
                 for p in c.get("ports", [])}
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                assert p["port"] in listening, (policy["metadata"]["name"], p)


def test_k8s_health_ports_reach_no_service_but_the_detectors_metrics():
    """Health and metrics ports are scraped from the pods: only the detector's is behind a Service,
    for the dashboard's LINEWATCH_DETECTOR_METRICS_URL."""
    health = {9102, 9103, 9104, 9105}
    exposed = {(d["metadata"]["name"], p["port"]) for _, d in _all_k8s() if d["kind"] == "Service"
               for p in d["spec"]["ports"] if p["port"] in health}
    assert exposed == {("detector", 9102)}
    config = _docs(K8S / "config.yaml")[0]["data"]
    assert config["LINEWATCH_DETECTOR_METRICS_URL"] == "http://detector:9102/metrics"


def _secrets_used(spec: dict) -> set[str]:
    """Names of the Secrets a pod reads: env, envFrom and volumes."""
    names = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
    for c in _containers(spec):
        names |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                  if "secretKeyRef" in e.get("valueFrom", {})}
        names |= {e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e}
    return names


K8S_SECRETS = {  # workload -> the Secrets it may read, no more
    "postgres": {"postgres"},
    "linewatch-init": {"linewatch-database", "linewatch-admin", "linewatch-kafka"},
    "linewatch-first-model": {"linewatch-database"},
    "writer": {"linewatch-database", "linewatch-kafka"},
    "dashboard": {"linewatch-database"},
    "retrain-flange": {"linewatch-database"},
    "detector": {"linewatch-kafka"},
    "ingest-cam-1": {"linewatch-kafka"},
    "bridge-mqtt": {"linewatch-kafka"},
    "bridge-opcua": {"linewatch-kafka"},
    "kafka": {"kafka-server"},
}


def test_k8s_each_pod_gets_only_the_secrets_it_uses():
    used = {d["metadata"]["name"]: _secrets_used(spec) for _, d in _all_k8s() for spec in _pod_specs(d)}
    assert used == K8S_SECRETS
    example = {d["metadata"]["name"]: set(d["stringData"]) for d in _docs(K8S / "secret.example.yaml")}
    assert set(example) == set().union(*K8S_SECRETS.values())
    for _, d in _all_k8s():
        for spec in _pod_specs(d):
            for c in _containers(spec):
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["key"] in example[ref["name"]], (d["metadata"]["name"], ref)


def test_k8s_kafka_is_sasl_ssl_with_scram_and_clients_use_it():
    docs = {(d["kind"], d["metadata"]["name"]): d for _, d in _all_k8s()}
    broker = _pod_specs(docs[("StatefulSet", "kafka")])[0]
    [c] = broker["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    example = {d["metadata"]["name"]: set(d["stringData"]) for d in _docs(K8S / "secret.example.yaml")}
    volumes = {v["name"]: v for v in broker["volumes"]}
    files = set()
    for m in c["volumeMounts"]:
        secret = volumes.get(m["name"], {}).get("secret")
        if secret:
            files |= {f"{m['mountPath']}/{key}" for key in example[secret["secretName"]]}
    port = _check_sasl_ssl_broker(env, files)
    assert "SCRAM-SHA-512=[password=$$(cat /etc/kafka/secrets/kafka_password)]" in c["command"][-1]
    assert "SCRAM-SHA-512" in " ".join(c["readinessProbe"]["exec"]["command"])
    jaas_path = env["KAFKA_OPTS"].split("=", 1)[1]
    jaas_mount = next(m for m in c["volumeMounts"] if jaas_path.startswith(m["mountPath"] + "/"))
    jaas = docs[("ConfigMap", volumes[jaas_mount["name"]]["configMap"]["name"])]["data"]
    assert "ScramLoginModule required" in jaas[jaas_path.rsplit("/", 1)[1]]
    # the Services offer the SASL_SSL port, never the plaintext one
    for name in ("kafka", "kafka-headless"):
        ports = {str(p["port"]) for p in docs[("Service", name)]["spec"]["ports"]}
        assert port in ports and "9092" not in ports, name

    config = _docs(K8S / "config.yaml")[0]["data"]
    clients = 0
    for (kind, name), doc in docs.items():
        for spec in _pod_specs(doc):
            if "linewatch-kafka" not in _secrets_used(spec):
                continue
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for c in spec["containers"]:
                env = _env(c)
                values = {**config, **{k: "from-secret" for k in env if k.startswith("LINEWATCH_KAFKA_SASL_")}}
                _check_kafka_client_env(values, port)
                for key in ("LINEWATCH_KAFKA_SASL_USERNAME", "LINEWATCH_KAFKA_SASL_PASSWORD"):
                    assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "linewatch-kafka", (name, key)
                ca_dir, ca_file = config["LINEWATCH_KAFKA_SSL_CAFILE"].rsplit("/", 1)
                mount = next(m for m in c["volumeMounts"] if m["mountPath"] == ca_dir)
                assert volumes[mount["name"]]["secret"]["secretName"] == "linewatch-kafka", name
                assert ca_file in example["linewatch-kafka"]
                clients += 1
    assert clients == 6  # ingest, detector, writer, two bridges, init


def test_k8s_dashboard_trusts_the_one_ingress_hop():
    from dashboard.settings import DashboardSettings

    [deployment] = [d for d in _docs(K8S / "dashboard.yaml") if d["kind"] == "Deployment"]
    [c] = _pod_specs(deployment)[0]["containers"]
    value = _env(c)["LINEWATCH_DASHBOARD_TRUSTED_PROXY_HOPS"]["value"]
    assert DashboardSettings(dashboard_trusted_proxy_hops=value).dashboard_trusted_proxy_hops == 1


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed (kustomize build)")
def test_kustomize_builds():
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
    assert kinds.count("Deployment") == 6 and "ScaledObject" in kinds and "CronJob" in kinds
    assert "Secret" not in kinds
    assert "image: linewatch:0.1.0" in out.stdout


# ----------------------------------------------------------------------------------------- compose

def _compose_schema() -> dict:
    path = resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    return json.loads(path.read_text())


class _ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's `!reset` (remove the key when merging) and `!override` tags."""


class _Reset:
    pass


_ComposeLoader.add_constructor("!reset", lambda loader, node: _Reset())
_ComposeLoader.add_constructor(
    "!override", lambda loader, node: loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.MappingNode) else loader.construct_sequence(node, deep=True))


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, _Reset):
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def test_compose_file_matches_compose_spec():
    # the real tool, with the schema it vendors
    out = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         str(COMPOSE / "compose.yaml")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_validation_rejects_a_misspelt_field():
    import jsonschema

    doc = yaml.load((COMPOSE / "compose.yaml").read_text(), Loader=_ComposeLoader)
    jsonschema.validate(doc, _compose_schema())
    doc["services"]["detector"]["healthchek"] = doc["services"]["detector"].pop("healthcheck")
    with pytest.raises(jsonschema.ValidationError, match="healthchek"):
        jsonschema.validate(doc, _compose_schema())


def test_compose_cpu_override_drops_only_the_gpu_reservations():
    import jsonschema

    base = yaml.load((COMPOSE / "compose.yaml").read_text(), Loader=_ComposeLoader)
    override = yaml.load((COMPOSE / "compose.cpu.yaml").read_text(), Loader=_ComposeLoader)
    gpu = [name for name, s in base["services"].items()
           if s.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")]
    assert sorted(gpu) == ["detector", "retrain"]
    assert all(d["capabilities"] == ["gpu"] for d in base["services"]["detector"]["deploy"]["resources"]
               ["reservations"]["devices"])
    merged = _merge(base, override)
    jsonschema.validate(merged, _compose_schema())
    assert not any("deploy" in s for s in merged["services"].values())
    assert merged["services"]["detector"]["command"] == base["services"]["detector"]["command"]


def test_compose_services_and_wiring():
    doc = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    services = doc["services"]
    assert {"kafka", "postgres", "init", "first-model", "ingest", "detector", "writer", "dashboard",
            "retrain"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["postgres"]["image"].startswith("postgres:")
    retrain = services["retrain"]["command"]
    assert retrain[:2] == ["bash", "/app/deploy/nightly.sh"] and retrain[3:6] == RETRAIN
    # the same broker version as the development broker (deploy/kafka/pom.xml)
    pom = (REPO / "deploy" / "kafka" / "pom.xml").read_text()
    version = re.search(r"<kafka.version>(.*)</kafka.version>", pom).group(1)
    assert services["kafka"]["image"] == f"apache/kafka:{version}"
    for kind in ("mqtt", "opcua"):  # optional, behind a profile
        bridge = services[f"bridge-{kind}"]
        assert bridge["command"][:2] == ["linewatch-bridge", kind] and bridge["profiles"] == ["bridges"]
    # every linewatch service runs the one image built from the Dockerfile
    app = {n for n, s in services.items() if s.get("build")}
    assert app == set(services) - {"kafka", "postgres"}
    assert len({services[n]["image"] for n in app}) == 1
    # passwords are Docker secrets (files), never environment variables or ${...} substitutions
    assert {k: v["file"] for k, v in doc["secrets"].items()} == {
        "postgres_password": "./secrets/postgres_password", "admin_password": "./secrets/admin_password",
        "kafka_password": "./secrets/kafka/kafka_password", "kafka_ca": "./secrets/kafka/ca.crt",
        "kafka_keystore": "./secrets/kafka/kafka.keystore.p12",
        "kafka_keystore_password": "./secrets/kafka/keystore_password"}
    text = (COMPOSE / "compose.yaml").read_text()
    assert "PASSWORD:" not in text and "PASSWORD}" not in text
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    # each service gets only the secrets it uses: the database password only where the database is used
    database = {"init", "first-model", "writer", "dashboard", "retrain"}
    for name in app:
        env = services[name].get("environment", {})
        if name not in database:
            assert "postgres_password" not in services[name].get("secrets", []), name
            assert not any(k.startswith("LINEWATCH_DATABASE") for k in env), name
            continue
        assert "postgres_password" in services[name]["secrets"], name
        assert env["LINEWATCH_DATABASE_PASSWORD_FILE"] == "/run/secrets/postgres_password", name
        assert "@postgres:" in env["LINEWATCH_DATABASE_URL"] and ":" not in env["LINEWATCH_DATABASE_URL"].split("@")[0][
            len("postgresql+psycopg://"):], name
    assert services["init"]["secrets"] == ["postgres_password", "admin_password", "kafka_password", "kafka_ca"]
    assert "< /run/secrets/admin_password" in services["init"]["command"][-1]
    assert "admin_password" not in str({n: s.get("secrets") for n, s in services.items() if n != "init"})
    ignored = (COMPOSE / ".gitignore").read_text().split()
    assert ".env" in ignored and "secrets/" in ignored


KAFKA_CLIENTS = {"init", "ingest", "detector", "writer", "bridge-mqtt", "bridge-opcua"}


def _listeners(value: str) -> dict[str, str]:
    """``NAME://host:port,...`` -> {NAME: host:port}."""
    return dict(item.split("://", 1) for item in value.split(","))


def _check_sasl_ssl_broker(env: dict, secret_files: set[str]) -> str:
    """The broker offers SASL_SSL with SCRAM-SHA-512 from a PKCS12 keystore the image finds under
    /etc/kafka/secrets, plain text only on loopback; returns the SASL_SSL port."""
    listeners = _listeners(env["KAFKA_LISTENERS"])
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert protocols["SASL_SSL"] == "SASL_SSL" and protocols["PLAINTEXT"] == "PLAINTEXT"
    assert listeners["PLAINTEXT"].startswith("127.0.0.1:")  # the broker's own tools only
    assert set(_listeners(env["KAFKA_ADVERTISED_LISTENERS"])) == {"SASL_SSL", "PLAINTEXT"}
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
    assert env["KAFKA_SSL_KEYSTORE_TYPE"] == "PKCS12"
    assert "java.security.auth.login.config=" in env["KAFKA_OPTS"]  # the image insists on it for SASL
    for key in ("KAFKA_SSL_KEYSTORE_FILENAME", "KAFKA_SSL_KEYSTORE_CREDENTIALS", "KAFKA_SSL_KEY_CREDENTIALS"):
        assert f"/etc/kafka/secrets/{env[key]}" in secret_files, key
    return listeners["SASL_SSL"].rsplit(":", 1)[1]


def _check_kafka_client_env(env: dict, port: str) -> None:
    from ingest.kafka_config import KafkaSettings

    values = {k.removeprefix("LINEWATCH_").lower(): v for k, v in env.items()
              if k.startswith("LINEWATCH_KAFKA_") and k != "LINEWATCH_KAFKA_SASL_PASSWORD_FILE"}
    kwargs = KafkaSettings(**{"kafka_sasl_password": "x", **values}).client_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL" and kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] and kwargs["ssl_cafile"]
    assert all(b.split(":")[0].startswith("kafka") and b.endswith(f":{port}") for b in kwargs["bootstrap_servers"])


def test_compose_kafka_is_sasl_ssl_with_scram_and_only_clients_get_its_secrets():
    doc = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    services = doc["services"]
    kafka = services["kafka"]
    targets = {s["target"] for s in kafka["secrets"] if isinstance(s, dict)}
    port = _check_sasl_ssl_broker({k: str(v) for k, v in kafka["environment"].items()}, targets)
    assert "kafka_password" in kafka["secrets"] and "SCRAM-SHA-512=[password=" in kafka["command"][-1]
    jaas = doc["configs"]["kafka_jaas"]["content"]
    assert "ScramLoginModule required" in jaas
    assert {"source": "kafka_jaas", "target": kafka["environment"]["KAFKA_OPTS"].split("=", 1)[1]} in kafka["configs"]
    assert "SCRAM-SHA-512" in " ".join(kafka["healthcheck"]["test"])  # healthy once the user exists
    for name, service in services.items():
        secrets = {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}
        env = service.get("environment", {})
        if name in KAFKA_CLIENTS:
            assert {"kafka_password", "kafka_ca"} <= secrets, name
            assert env["LINEWATCH_KAFKA_SASL_PASSWORD_FILE"] == "/run/secrets/kafka_password", name
            _check_kafka_client_env(env, port)
        elif name != "kafka":
            assert not secrets & {"kafka_password", "kafka_ca"}, name
            assert not any(k.startswith("LINEWATCH_KAFKA") for k in env), name
        if name != "kafka":
            assert not secrets & {"kafka_keystore", "kafka_keystore_password"}, name


def test_compose_containers_run_locked_down():
    doc = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    for name, service in doc["services"].items():
        assert "no-new-privileges:true" in service["security_opt"], name
        if service.get("build"):  # linewatch's own image
            assert service["cap_drop"] == ["ALL"] and service["read_only"] is True, name
            assert "/tmp" in service["tmpfs"] and service["environment"]["HOME"] == "/tmp", name
        if name in ("kafka", "postgres"):  # Kafka: test_kafka_read_only.py runs it so
            assert service["cap_drop"] == ["ALL"] and service["read_only"] is True, name
        if name == "postgres":
            assert service["user"] == "999:999" and "/var/run/postgresql" in service["tmpfs"]
        if name == "kafka":
            assert {"/opt/kafka/config", "/opt/kafka/logs", "/tmp:exec"} <= set(service["tmpfs"])
        assert not any(str(p).split(":")[-1] in ("9102", "9103", "9104", "9105")
                       for p in service.get("ports", [])), name  # health ports stay inside


def test_image_ships_the_scripts_the_deployments_call():
    dockerfile = (REPO / "Dockerfile").read_text()
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for script in ("deploy/first-model.sh", "deploy/nightly.sh"):
        assert script in dockerfile and (REPO / script).is_file()
        assert not any(script == i or script.startswith(i.rstrip("/") + "/") for i in ignored), script
    assert "deploy/local" in ignored and "tests" in ignored


# ------------------------------------------------------------------------------------------ systemd

@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_units_verify(tmp_path):
    venv = Path(sys.executable).parent.parent
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copy(SYSTEMD / "linewatch.env.example", etc / "linewatch.env")
    shutil.copy(SYSTEMD / "camera-cam-1.env.example", etc / "camera-cam-1.env")
    units = []
    for unit in sorted(SYSTEMD.glob("linewatch*.*")):
        if unit.suffix not in (".service", ".timer", ".target"):
            continue
        text = (unit.read_text().replace("/opt/linewatch/venv", str(venv))
                .replace("/opt/linewatch/src", str(REPO)).replace("/etc/linewatch/", f"{etc}/"))
        names = [unit.name]
        if "@." in unit.name:  # a template is verified as an instance
            names = [unit.name.replace("@.", "@cam-1." if "ingest" in unit.name else "@flange.")]
        for name in names:
            (tmp_path / name).write_text(text)
            units.append(name)
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", *units], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"})
    # unknown keys and bad assignments are only warnings (exit 0): any output fails the test
    assert out.returncode == 0 and not out.stderr.strip() and not out.stdout.strip(), out.stdout + out.stderr
    assert {"linewatch-detector.service", "linewatch-retrain@flange.timer"} <= set(units)


def test_systemd_timer_runs_the_nightly_retraining():
    service = (SYSTEMD / "linewatch-retrain@.service").read_text()
    timer = (SYSTEMD / "linewatch-retrain@.timer").read_text()
    assert re.search(r"^ExecStart=\S+/linewatch-detector retrain --product %i$", service, re.M)
    assert re.search(r"^OnCalendar=\*-\*-\* 02:30:00$", timer, re.M) and "Persistent=true" in timer
    for unit in SYSTEMD.glob("*.service"):
        text = unit.read_text()
        if "linewatch-kafka" in unit.name:
            continue
        assert "EnvironmentFile=/etc/linewatch/linewatch.env" in text, unit.name



SYSTEMD_CREDENTIALS = {  # credential -> (the setting that reads it, the units that use it)
    "db-password": ("LINEWATCH_DATABASE_PASSWORD_FILE",
                    {"init", "first-admin", "first-model", "writer", "dashboard", "retrain@"}),
    "kafka-password": ("LINEWATCH_KAFKA_SASL_PASSWORD_FILE",
                       {"init", "ingest@", "detector", "writer", "bridge-mqtt", "bridge-opcua"}),
    "mqtt-password": ("LINEWATCH_MQTT_PASSWORD_FILE", {"bridge-mqtt"}),
}


@pytest.mark.parametrize("credential", sorted(SYSTEMD_CREDENTIALS))
def test_systemd_passwords_are_credentials_of_the_units_that_use_them(credential):
    """Not in linewatch.env (group-readable, every unit's environment): /etc/linewatch/<credential>,
    loaded as a credential by the units that use it and by no other, with an empty fallback."""
    variable, users = SYSTEMD_CREDENTIALS[credential]
    lines = [f"LoadCredential={credential}:/etc/linewatch/{credential}", f"SetCredential={credential}:\\n",
             f"Environment={variable}=%d/{credential}"]
    for unit in SYSTEMD.glob("*.service"):
        text = unit.read_text()
        has = [re.search(rf"^{re.escape(line)}$", text, re.M) is not None for line in lines]
        expected = unit.name.removeprefix("linewatch-").removesuffix(".service") in users
        assert has == [expected] * 3, unit.name
    env = (SYSTEMD / "linewatch.env.example").read_text()
    assert f"{variable}=" not in env  # it would override the units' credential path


def test_systemd_environment_file_holds_no_password():
    env = (SYSTEMD / "linewatch.env.example").read_text()
    assert not re.search(r"^#?\s*LINEWATCH_\w*PASSWORD\w*=", env, re.M)
    urls = re.findall(r"^#?LINEWATCH_DATABASE_URL=(\S+)", env, re.M)
    assert urls and all(make_url(u).password is None for u in urls)


# ---------------------------------------------------------------------------------------- scheduler

def test_nightly_scheduler_rejects_bad_time_and_stops_on_sigterm(tmp_path):
    import signal
    import time

    bad = subprocess.run(["bash", str(REPO / "deploy" / "nightly.sh"), "25:00", "true"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "usage" in bad.stderr
    marker = tmp_path / "ran"
    proc = subprocess.Popen(["bash", str(REPO / "deploy" / "nightly.sh"), "00:00", "touch", str(marker)],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        line = proc.stderr.readline()
        assert "next run at" in line and time.monotonic() < deadline
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not marker.exists()


def test_systemd_first_admin_from_a_credential_once():
    unit = (SYSTEMD / "linewatch-first-admin.service").read_text()
    assert "LoadCredential=admin-password:/etc/linewatch/admin-password" in unit
    assert "< %d/admin-password" in unit and "ADMIN_PASSWORD" not in unit  # a credential, not the environment
    assert "users list --json" in unit  # only while there is no user at all
    assert "linewatch-first-admin.service" in (SYSTEMD / "linewatch.target").read_text()


# ---------------------------------------------------------------------------- fast runtimes and export cache

def _mount_of(path: str, mounts: dict[str, str]) -> str:
    """The mount point holding ``path`` (the longest prefix among ``mounts``)."""
    holders = [m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")]
    assert holders, (path, mounts)
    return max(holders, key=len)


def test_images_have_the_fast_runtimes_and_keep_the_export_cache_on_a_persistent_volume():
    """``serve --backend auto`` can pick ONNX Runtime or OpenVINO in the containers, and the exports
    it makes survive a restart: Compose's data volume, a writable subPath of the Kubernetes models
    PVC, systemd's CacheDirectory; never /tmp."""
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("onnxruntime") for d in extras["onnx"])
    assert any(d.startswith("openvino") for d in extras["openvino"])
    dockerfile = (REPO / "Dockerfile").read_text()
    [install] = re.findall(r'pip install "\.\[([a-z,]+)\]"', dockerfile)
    assert {"onnx", "openvino"} <= set(install.split(","))
    assert re.search(r"LINEWATCH_EXPORT_CACHE=/data/export-cache\b", dockerfile)
    assert 'VOLUME ["/data"]' in dockerfile

    compose = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    detector = compose["services"]["detector"]
    cache = detector["environment"]["LINEWATCH_EXPORT_CACHE"]
    volumes = {v.split(":")[1]: v.split(":")[0] for v in detector["volumes"]}
    holder = _mount_of(cache, {**volumes, **{t.split(":")[0]: "tmpfs" for t in detector["tmpfs"]}})
    assert volumes.get(holder) in compose["volumes"], (cache, holder)  # a named volume, not a tmpfs

    config = _docs(K8S / "config.yaml")[0]["data"]
    cache = config["LINEWATCH_EXPORT_CACHE"]
    deployment = next(d for d in _docs(K8S / "detector.yaml") if d["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    [c] = spec["containers"]
    assert any(e.get("configMapRef", {}).get("name") == "linewatch-config" for e in c["envFrom"])
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    mount = mounts[_mount_of(cache, mounts)]
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert "persistentVolumeClaim" in volume and not mount.get("readOnly"), mount
    assert mounts["/data/models"]["readOnly"] is True  # the checkpoints themselves stay read-only

    unit = (SYSTEMD / "linewatch-detector.service").read_text()
    [cache_dir] = re.findall(r"^CacheDirectory=(\S+)$", unit, re.M)
    assert f"Environment=LINEWATCH_EXPORT_CACHE=%C/{cache_dir}" in unit.splitlines()
