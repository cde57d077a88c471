"""docs/grafana-dashboard.json is valid JSON, each panel queries Prometheus, and every metric
its queries name is one the gateway exports (a renamed metric would leave a panel empty)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from app.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"
PROMQL_WORDS = {"sum", "by", "rate", "min", "max", "histogram_quantile", "le", "job", "peer",
                "operation", "status", "route", "kind", "source", "method"}


def _targets() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"], "the dashboard has no panels"
    targets = [t for panel in dashboard["panels"] for t in panel["targets"]]
    assert all(panel["targets"] for panel in dashboard["panels"])
    return targets


def _metric_names(expr: str) -> set[str]:
    """Identifiers of ``expr`` outside label matchers and strings that are not PromQL words."""
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", expr)
    words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare))
    return {w for w in words if w not in PROMQL_WORDS and not w.startswith("$")}


def test_every_queried_metric_is_exported() -> None:
    exported = set(Metrics().names())
    queried = set().union(*(_metric_names(t["expr"]) for t in _targets()))
    assert queried, "no metric found in the dashboard's queries"
    assert queried <= exported, sorted(queried - exported)


def test_the_dashboard_covers_what_operators_watch() -> None:
    queried = set().union(*(_metric_names(t["expr"]) for t in _targets()))
    for wanted in ("http_request_duration_seconds_bucket", "http_response_bytes_total",
                   "dimse_operation_duration_seconds_bucket", "dimse_associations_open",
                   "dimse_associations_in_use", "dimse_associations_waiting",
                   "cache_hits_total", "cache_misses_total"):
        assert wanted in queried
