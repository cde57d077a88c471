"""Unit tests of the STOW-RS service on a scripted store session: per-part outcomes, the
size limits, when it stops asking an unreachable PACS, and what the cache forgets."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from types import TracebackType

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from app.cache.memory import MemoryBackend
from app.cache.store import GatewayCache, SeriesIndex
from app.dicomweb.multipart import encode_multipart, multipart_content_type
from app.dicomweb.stow import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, PROCESSING_FAILURE
from app.dimse.outgoing import OutgoingInstance, StoreStatus
from app.errors import BadRequest, GatewayError, UpstreamError, UpstreamUnavailable
from app.metrics import Metrics
from app.services.store import StoreService

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY, SERIES = "1.2.3", "1.2.3.4"
CONTENT_TYPE = multipart_content_type("application/dicom", "bnd")


def part10(sop: str, pixels: int = 8) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.Rows, ds.Columns, ds.BitsAllocated = 1, pixels // 2, 16
    ds.PixelData = b"\x01" * pixels
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class ScriptedSession:
    """A store session answering each C-STORE from ``answer`` (a status or an error)."""

    def __init__(self, answer: Callable[[OutgoingInstance], int | GatewayError]) -> None:
        self.answer = answer
        self.sent: list[OutgoingInstance] = []
        self.closed = False

    async def store(self, instance: OutgoingInstance) -> StoreStatus:
        self.sent.append(instance)
        outcome = self.answer(instance)
        if isinstance(outcome, GatewayError):
            raise outcome
        return StoreStatus(outcome)

    async def __aenter__(self) -> ScriptedSession:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.closed = True


def service(session: ScriptedSession, cache: GatewayCache | None = None, *,
            max_instance: int = 10_000, max_request: int = 1_000_000) -> StoreService:
    return StoreService("pacs", lambda: session, cache, Metrics(),
                        max_instance_bytes=max_instance, max_request_bytes=max_request)


async def chunks(body: bytes, size: int = 100) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start:start + size]


def body(*parts: bytes) -> bytes:
    return encode_multipart([(p, "application/dicom") for p in parts], "bnd")


async def test_statuses_become_stored_warned_and_failed() -> None:
    statuses = {"1.1": 0x0000, "1.2": 0xB007, "1.3": 0xA701}
    session = ScriptedSession(lambda i: statuses[i.sop_instance])
    outcome = await service(session).store_instances(
        chunks(body(part10("1.1"), part10("1.2"), part10("1.3"), b"junk")), CONTENT_TYPE, None)
    assert [(i.sop_instance, i.warning) for i in outcome.stored] == [("1.1", None),
                                                                    ("1.2", 0xB007)]
    assert [(f.sop_instance, f.reason) for f in outcome.failed] == [("1.3", 0xA701),
                                                                   (None, CANNOT_UNDERSTAND)]
    assert outcome.http_status == 202 and session.closed
    sent = session.sent[0]  # the data set goes out as it came in
    assert bytes(sent.dataset) == part10("1.1")[sent.dataset_offset:]


async def test_an_instance_over_the_limit_fails_and_the_next_is_stored() -> None:
    session = ScriptedSession(lambda i: 0)
    big, small = part10("1.1", pixels=20_000), part10("1.2")
    outcome = await service(session, max_instance=10_000).store_instances(
        chunks(body(big, small)), CONTENT_TYPE, None)
    assert [(f.sop_class, f.sop_instance, f.reason) for f in outcome.failed] == [
        (CT, "1.1", OUT_OF_RESOURCES)]
    assert [i.sop_instance for i in outcome.stored] == ["1.2"]
    assert [i.sop_instance for i in session.sent] == ["1.2"]


async def test_a_body_over_the_request_limit_stops_reading() -> None:
    session = ScriptedSession(lambda i: 0)
    parts = [part10(f"1.{n}") for n in range(1, 6)]
    limit = len(body(*parts[:2])) + 10
    outcome = await service(session, max_request=limit).store_instances(
        chunks(body(*parts)), CONTENT_TYPE, None)
    assert outcome.halted is not None and outcome.halted.http_status == 413
    assert [i.sop_instance for i in outcome.stored] == ["1.1", "1.2"]
    assert outcome.http_status == 202  # what was stored is reported, not hidden behind a 413
    nothing = await service(ScriptedSession(lambda i: 0), max_request=100).store_instances(
        chunks(body(*parts)), CONTENT_TYPE, None)
    assert nothing.http_status == 413 and not nothing.stored


async def test_an_unreachable_pacs_is_asked_once_and_answers_the_status() -> None:
    session = ScriptedSession(lambda i: UpstreamUnavailable("PACS pacs is unavailable"))
    outcome = await service(session).store_instances(
        chunks(body(*[part10(f"1.{n}") for n in range(1, 5)])), CONTENT_TYPE, None)
    assert len(session.sent) == 1
    assert [f.reason for f in outcome.failed] == [PROCESSING_FAILURE] * 4
    assert outcome.http_status == 503


async def test_aborted_stores_are_retried_until_two_in_a_row_fail() -> None:
    answers = iter([UpstreamError("aborted"), 0, UpstreamError("aborted"),
                    UpstreamError("aborted"), 0, 0])
    session = ScriptedSession(lambda i: next(answers))
    outcome = await service(session).store_instances(
        chunks(body(*[part10(f"1.{n}") for n in range(1, 7)])), CONTENT_TYPE, None)
    assert [i.sop_instance for i in session.sent] == ["1.1", "1.2", "1.3", "1.4"]
    assert [i.sop_instance for i in outcome.stored] == ["1.2"]
    assert outcome.http_status == 202


@pytest.mark.parametrize(("payload", "status"), [
    (b"--bnd\r\nContent-Type: application/dicom\r\n\r\nunterminated", 400),
    (b"--bnd--\r\n", 400),
])
async def test_malformed_or_empty_bodies(payload: bytes, status: int) -> None:
    outcome = await service(ScriptedSession(lambda i: 0)).store_instances(
        chunks(payload), CONTENT_TYPE, None)
    assert outcome.http_status == status and isinstance(outcome.halted, BadRequest)


async def test_a_content_type_without_boundary_is_400_before_reading() -> None:
    with pytest.raises(BadRequest):
        await service(ScriptedSession(lambda i: 0)).store_instances(
            chunks(b""), 'multipart/related; type="application/dicom"', None)


async def test_the_cache_forgets_the_touched_series_and_old_searches() -> None:
    cache = GatewayCache(MemoryBackend(1 << 20), "pacs", ttl=60, query_ttl=60)
    keys = cache.keys
    await cache.put_series_index(SeriesIndex(STUDY, SERIES, True, (("1.0", CT, "x"),)))
    await cache.put_summary(SERIES, 1, [CT])
    await cache.put_study_series(STUDY, [SERIES])
    await cache.backend.set(keys.metadata(SERIES, "1.1"), b"old", 60)
    await cache.backend.set(keys.metadata(SERIES, "1.0"), b"kept", 60)
    await cache.backend.set(keys.lock(SERIES), b"fill", 60)
    before = await cache.query_generation()
    await service(ScriptedSession(lambda i: 0), cache).store_instances(
        chunks(body(part10("1.1"))), CONTENT_TYPE, None)
    assert await cache.get_series_index(SERIES) is None
    assert await cache.get_summary(SERIES) is None
    assert await cache.get_study_series(STUDY) is None
    assert await cache.backend.get(keys.metadata(SERIES, "1.1")) is None
    assert await cache.backend.get(keys.metadata(SERIES, "1.0")) == b"kept"
    assert await cache.backend.get(keys.lock(SERIES)) == b"fill"  # a running fill keeps it
    assert await cache.query_generation() != before


async def test_a_body_malformed_after_a_stored_instance_is_202() -> None:
    good = body(part10("1.1"))[:-len(b"--bnd--\r\n")]
    outcome = await service(ScriptedSession(lambda i: 0)).store_instances(
        chunks(good + b"--bnd\r\nContent-Type: application/dicom\r\n\r\ncut"), CONTENT_TYPE, None)
    assert [i.sop_instance for i in outcome.stored] == ["1.1"]
    assert isinstance(outcome.halted, BadRequest) and outcome.http_status == 202


async def test_a_fill_running_during_the_store_is_forgotten_after_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A fill that started before the store writes the old series' index at its end: the
    store forgets the series again once the fill's lock is gone."""
    from app.services import store as store_module

    monkeypatch.setattr(store_module, "FILL_POLL_S", 0.01)
    cache = GatewayCache(MemoryBackend(1 << 20), "pacs", ttl=60, query_ttl=60)
    token = await cache.backend.acquire_lock(cache.keys.lock(SERIES), 60)
    assert token is not None
    stores = service(ScriptedSession(lambda i: 0), cache)
    await stores.store_instances(chunks(body(part10("1.1"))), CONTENT_TYPE, None)
    # the fill ends: it writes the series as it found it, then lets go of its lock
    await cache.put_series_index(SeriesIndex(STUDY, SERIES, True, (("1.0", CT, "x"),)))
    await cache.backend.release_lock(cache.keys.lock(SERIES), token)
    for _ in range(200):
        if await cache.get_series_index(SERIES) is None:
            break
        await asyncio.sleep(0.01)
    assert await cache.get_series_index(SERIES) is None
    await stores.close()


async def test_a_body_that_fails_midway_still_reports_and_forgets() -> None:
    """The HTTP layer turns a client that went away into a BadRequest from the body: the
    instances stored before it are kept in the outcome, and the cache forgets them."""
    cache = GatewayCache(MemoryBackend(1 << 20), "pacs", ttl=60, query_ttl=60)
    await cache.put_series_index(SeriesIndex(STUDY, SERIES, True, (("1.0", CT, "x"),)))
    whole = body(part10("1.1"), part10("1.2"))

    async def cut() -> AsyncIterator[bytes]:
        yield whole[:len(whole) // 2 + 200]
        raise BadRequest("the client closed the connection")

    outcome = await service(ScriptedSession(lambda i: 0), cache).store_instances(
        cut(), CONTENT_TYPE, None)
    assert [i.sop_instance for i in outcome.stored] == ["1.1"]
    assert isinstance(outcome.halted, BadRequest) and outcome.http_status == 202
    assert await cache.get_series_index(SERIES) is None
