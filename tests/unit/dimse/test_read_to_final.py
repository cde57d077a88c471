"""read_to_final (the pynetdicom engine's C-GET/C-MOVE response reader): the final status with
the last counters any response carried and the failed UIDs; an empty status tells a cancel, a
timeout and an abort apart; a stream without a final status is an error."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset

from app.dimse.bridge import Cancelled
from app.dimse.retrieve_responses import read_to_final
from app.errors import UpstreamError, UpstreamTimeout
from app.settings import PacsPeer

PEER = PacsPeer(name="pacs", ae_title="PACS", dimse_timeout=30)


class Emitter:
    def __init__(self, cancelled: bool = False) -> None:
        self.cancelled = cancelled


def status(code: int, **counters: int) -> Dataset:
    ds = Dataset()
    ds.Status = code
    for keyword, value in counters.items():
        setattr(ds, f"NumberOf{keyword}Suboperations", value)
    return ds


def failed_list(*uids: str) -> Dataset:
    ds = Dataset()
    ds.FailedSOPInstanceUIDList = list(uids) if len(uids) > 1 else uids[0]
    return ds


def responses(*items: tuple[Dataset, Dataset | None]) -> Iterator[tuple[Dataset, Dataset | None]]:
    yield from items


def test_final_status_keeps_the_last_counters_and_failed_uids() -> None:
    final = read_to_final(responses(
        (status(0xFF00, Remaining=2, Completed=1), None),
        (status(0xFF00, Remaining=1, Completed=2, Failed=0), None),
        (status(0xB000, Failed=1), failed_list("1.2", "1.3")),
    ), Emitter(), PEER, "C-GET")  # type: ignore[arg-type]
    assert (final.status, final.completed, final.failed, final.warning) == (0xB000, 2, 1, 0)
    assert final.failed_uids == ("1.2", "1.3")


def test_an_empty_status_while_cancelled_is_the_cancel() -> None:
    with pytest.raises(Cancelled):
        read_to_final(responses((Dataset(), None)), Emitter(cancelled=True), PEER,
                      "C-GET")  # type: ignore[arg-type]


def test_an_empty_status_soon_is_an_abort() -> None:
    with pytest.raises(UpstreamError, match="PACS pacs aborted the C-MOVE association"):
        read_to_final(responses((Dataset(), None)), Emitter(), PEER,
                      "C-MOVE")  # type: ignore[arg-type]


def test_an_empty_status_after_dimse_timeout_is_a_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 100.0 + 30 * 0.9])
    monkeypatch.setattr("app.dimse.retrieve_responses.time.monotonic", lambda: next(clock))
    with pytest.raises(UpstreamTimeout, match="sent no C-GET response within 30 s"):
        read_to_final(responses((Dataset(), None)), Emitter(), PEER,
                      "C-GET")  # type: ignore[arg-type]


def test_no_final_status_is_an_error() -> None:
    with pytest.raises(UpstreamError, match="ended the C-GET without a final status"):
        read_to_final(responses((status(0xFF00, Remaining=1), None)), Emitter(), PEER,
                      "C-GET")  # type: ignore[arg-type]
