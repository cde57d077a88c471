"""DIMSE operation durations by PACS, operation and final status, for whichever engine runs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from app.dimse.budget import DimseMetrics


class Observation:
    """What one timed operation ended with (set ``result`` to the operation's outcome)."""

    result: Any = None


def status_label(result: Any) -> str:
    """``0xNNNN`` for an outcome with a DIMSE status (or a bare status), else ``done``."""
    status = getattr(result, "status", result)
    if isinstance(status, int) and not isinstance(status, bool):
        return f"0x{status:04X}"
    return "done"


def failure_label(exc: BaseException) -> str:
    """What ended an operation that raised: timeout, aborted, cancelled or error."""
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return "cancelled"
    name = type(exc).__name__.lower()
    if "timeout" in name:
        return "timeout"
    if "abort" in name or "cancel" in name:
        return "aborted" if "abort" in name else "cancelled"
    return "error"


@contextmanager
def observed(metrics: DimseMetrics | None, peer: str, operation: str) -> Iterator[Observation]:
    """Time the block as one ``operation`` on ``peer``: its status from ``Observation.result``
    (or from the exception that ended it)."""
    observation = Observation()
    start = time.perf_counter()
    status = "done"
    try:
        yield observation
    except BaseException as exc:
        status = failure_label(exc)
        raise
    else:
        status = status_label(observation.result)
    finally:
        if metrics is not None:
            metrics.observe("dimse_operation_duration_seconds", time.perf_counter() - start,
                            peer=peer, operation=operation, status=status)
