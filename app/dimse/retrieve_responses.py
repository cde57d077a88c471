"""What C-GET and C-MOVE share: reading the response stream to its final status and counters
(PS3.4 C.4.2.1.6-9, C.4.3.1.3), and telling timeouts, aborts and cancellations apart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.dataset import Dataset

from app.dimse.bridge import Cancelled, Emitter
from app.dimse.received import failed_uid_list
from app.dimse.status import Category, category
from app.errors import UpstreamError, UpstreamTimeout
from app.settings import PacsPeer


@dataclass
class FinalResponse:
    """The last response of a retrieval: status, counters, failed UIDs."""

    status: int
    completed: int
    failed: int
    warning: int
    failed_uids: tuple[str, ...]


def _counter(status: Dataset, keyword: str) -> int:
    value = status.get(keyword)
    return int(value) if value not in (None, "") else 0


def read_to_final(
    responses: Iterator[tuple[Dataset, Dataset | None]],
    emitter: Emitter[object],
    peer: PacsPeer,
    operation: str,
) -> FinalResponse:
    """Iterate ``responses`` until the final one; sub-operations are handled elsewhere."""
    last = time.monotonic()
    completed = failed = warning = 0
    for status, identifier in responses:
        if not status or "Status" not in status:
            if emitter.cancelled:
                raise Cancelled()
            if time.monotonic() - last >= peer.dimse_timeout * 0.9:
                raise UpstreamTimeout(
                    f"PACS {peer.name} sent no {operation} response within {peer.dimse_timeout:g} s"
                )
            raise UpstreamError(f"PACS {peer.name} aborted the {operation} association")
        last = time.monotonic()
        code = int(status.Status)
        completed = _counter(status, "NumberOfCompletedSuboperations") or completed
        failed = _counter(status, "NumberOfFailedSuboperations") or failed
        warning = _counter(status, "NumberOfWarningSuboperations") or warning
        if category(code) is Category.PENDING:
            continue
        return FinalResponse(code, completed, failed, warning, failed_uid_list(identifier))
    raise UpstreamError(f"PACS {peer.name} ended the {operation} without a final status")
