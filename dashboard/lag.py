"""Detector consumer lag from the detector service's Prometheus endpoint.

``LINEWATCH_DETECTOR_METRICS_URL`` (e.g. ``http://detector:9100/metrics``) is fetched with a
short timeout; every sample of a metric whose name contains ``consumer_lag`` (the detector
service exports a consumer-lag gauge, per partition or in total) is summed.  Unset URL,
unreachable endpoint or no such metric: ``None`` ("n/a" on the page).
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def parse_consumer_lag(text: str) -> float | None:
    total = None
    for family in text_string_to_metric_families(text):
        if "consumer_lag" not in family.name:
            continue
        for sample in family.samples:
            if sample.name.endswith(("_created", "_bucket", "_count", "_sum")):
                continue
            total = (total or 0.0) + float(sample.value)
    return total


def fetch_metrics(url: str | None, timeout_s: float = 1.0) -> str | None:
    """The detector service's /metrics text, or None (unset, unreachable: informative only)."""
    if not url:
        return None
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - operator-configured URL
            return resp.read(4 * 1024 * 1024).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - informative only
        return None


def fetch_consumer_lag(url: str | None, timeout_s: float = 1.0, body: str | None = None) -> float | None:
    body = fetch_metrics(url, timeout_s) if body is None else body
    if body is None:
        return None
    try:
        return parse_consumer_lag(body)
    except Exception:  # noqa: BLE001
        return None
