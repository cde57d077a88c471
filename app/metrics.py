"""Counters and gauges exposed at /metrics in the Prometheus text format.

A deliberately small registry (labels, counters, gauges) so the services can count what matters
to operators (retrievals, partial failures, cache hits) without a metrics dependency. One
instance per app, created in the lifespan and injected, never a module-level singleton.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

HELP: dict[str, str] = {
    "dimse_retrievals_total": "C-GET/C-MOVE retrievals started",
    "dimse_retrieve_partial_total": "retrievals where some sub-operations failed",
    "dimse_retrieve_lost_total": "retrievals the PACS reported sent but nothing arrived",
    "dimse_get_refusals_total": "C-GETs a PACS refused before any instance (retrieve_method "
                                "auto), each followed by a C-MOVE when the storage SCP runs",
    "qido_capped_subqueries_total": "StudyDate/StudyTime sub-queries completing capped C-FINDs",
    "qido_capped_incomplete_total": "capped C-FINDs left incomplete by the sub-query bounds",
    "dimse_capability_learned_total": "capabilities learned about a PACS (e.g. C-GET refused)",
    "cache_prefetches_total": "series prefetches started, by what triggered them",
}


class Metrics:
    """A thread-safe registry of labelled counters and read-on-scrape gauges."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._gauges: dict[str, tuple[Callable[[], float], str]] = {}

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` to a counter."""
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0.0) + amount

    def value(self, name: str, **labels: str) -> float:
        """A counter's value (0 if never incremented); with no labels, the sum over all."""
        with self._lock:
            if labels:
                return self._counters.get((name, tuple(sorted(labels.items()))), 0.0)
            return sum(v for (n, _), v in self._counters.items() if n == name)

    def gauge(self, name: str, read: Callable[[], float], help_text: str = "") -> None:
        """Register a gauge whose value is read when /metrics is scraped."""
        with self._lock:
            self._gauges[name] = (read, help_text)

    def render(self) -> str:
        """All metrics in the Prometheus text exposition format."""
        with self._lock:
            counters = sorted(self._counters.items())
            gauges = sorted(self._gauges.items())
        lines: list[str] = []
        seen: set[str] = set()
        for (name, labels), amount in counters:
            if name not in seen:
                seen.add(name)
                lines += [f"# HELP {name} {HELP.get(name, name)}", f"# TYPE {name} counter"]
            label_text = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{name}{{{label_text}}} {amount:g}" if label_text
                         else f"{name} {amount:g}")
        for name, (read, help_text) in gauges:
            try:
                current = float(read())
            except Exception:  # a gauge that cannot be read is left out, not fatal
                continue
            lines += [f"# HELP {name} {help_text or name}", f"# TYPE {name} gauge",
                      f"{name} {current:g}"]
        return "\n".join(lines) + "\n"
