"""The drift alert rules shipped in deploy/ match what the detector service exports and its defaults."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from detector.drift import DriftMonitor, DriftSettings

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "linewatch-rules.yaml"
K8S_RULE = REPO / "deploy" / "k8s" / "monitoring" / "prometheusrule.yaml"


def _alerts() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"]}


def test_rules_use_the_exported_gauges_and_the_default_limits():
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry()
    DriftMonitor(registry=reg)
    exported = {m.name for m in reg.collect()}
    alerts = _alerts()
    assert set(alerts) == {"LinewatchScoreDrift", "LinewatchImageDrift"}
    s = DriftSettings()
    limits = {"LinewatchScoreDrift": s.psi_alert, "LinewatchImageDrift": s.shift_alert}
    for name, rule in alerts.items():
        metrics = set(re.findall(r"linewatch_\w+", rule["expr"]))
        assert metrics and metrics <= exported, (name, metrics, exported)
        assert float(rule["expr"].rsplit(">", 1)[1]) == limits[name]
        # held as long as the service holds a breach at 2 frames/s
        assert rule["for"] == f"{round(s.hold_frames / 2.0 / 60)}m"
        assert "{{ $labels.camera }}" in rule["annotations"]["summary"]


def test_the_kubernetes_prometheusrule_carries_the_same_groups():
    doc = yaml.safe_load(K8S_RULE.read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert doc["spec"] == yaml.safe_load(RULES.read_text())
