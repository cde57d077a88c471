"""PacsRetrieval's outcome checks against a scripted fake client: what a C-GET or C-MOVE
delivered is compared with what the PACS said it holds and with the final status. Lost
sub-operations are an error, partial failures are counted and logged, the one-instance C-GET
retry and the C-MOVE fallback fill the gaps, and an "auto" PACS that refuses C-GET is
retrieved by C-MOVE."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from pydicom.dataset import Dataset

from app.dicomweb.refs import InstanceRef, SeriesRef, StudyRef
from app.dicomweb.sop_classes import sop_classes_for_modality
from app.dicomweb.transfer_syntax import UNCOMPRESSED
from app.dimse.received import ReceivedInstance, RetrieveOutcome
from app.dimse.status import ContextsRejected
from app.errors import GatewayError, NotFound, UpstreamError, UpstreamUnavailable
from app.metrics import Metrics
from app.services.pacs_retrieval import (
    PacsRetrieval,
    Retrieval,
    Summary,
    Tally,
    refuses_get,
)
from app.settings import PacsPeer
from tests.support.fake_client import (
    CT_IMAGE,
    MR_IMAGE,
    SOP_UID,
    Archive,
    Call,
    FakeClient,
    Script,
    Stored,
    failing,
    found,
    in_turn,
    retrieved,
    series_of,
)

STUDY = "1.2.3"
SERIES = "1.2.3.4"
OTHER_SERIES = "1.2.3.5"
PEER = "pacs"


def peer(**extra: Any) -> PacsPeer:
    return PacsPeer(name=PEER, ae_title="PACS", **extra)


def service(client: FakeClient, metrics: Metrics, **extra: Any) -> PacsRetrieval:
    return PacsRetrieval(client, metrics, local_ae_title="GW", **extra)  # type: ignore[arg-type]


async def collect(svc: PacsRetrieval, ref: Any, **extra: Any) -> list[ReceivedInstance]:
    return (await retrieve(svc, ref, **extra))[0]


async def retrieve(svc: PacsRetrieval, ref: Any, **extra: Any
                   ) -> tuple[list[ReceivedInstance], Retrieval]:
    """The instances of one retrieval, and the retrieval (its tally, the series it listed)."""
    run = svc.received(ref, **extra)
    return [i async for i in run], run


def uids(instances: list[ReceivedInstance]) -> list[str]:
    return [i.sop_instance_uid for i in instances]


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def archive() -> Archive:
    return Archive(series_of(STUDY, SERIES, 3))


SERIES_REF = SeriesRef(STUDY, SERIES)
ALL = [f"{SERIES}.{n}" for n in (1, 2, 3)]


# -- a retrieval that works ------------------------------------------------------------------


async def test_series_c_get_starts_after_one_series_level_find(
        archive: Archive, metrics: Metrics) -> None:
    client = FakeClient(peer(retrieve_method="get"), on_find=archive.find, on_get=archive.deliver)
    got, run = await retrieve(service(client, metrics), SERIES_REF)
    assert uids(got) == ALL
    assert [c.level for c in client.sent("C-FIND")] == ["SERIES"]  # no IMAGE-level listing
    [get] = client.sent("C-GET")
    assert get.level == "SERIES" and get.uids(0x0020000E) == [SERIES]
    assert {cls for cls, _ in get.contexts or []} == set(sop_classes_for_modality("CT"))
    assert run.tally == Tally(3, 3, 0)
    assert metrics.value("dimse_retrievals_total", peer=PEER, operation="C-GET") == 1
    assert metrics.value("dimse_retrieve_partial_total") == 0
    assert metrics.value("dimse_retrieve_lost_total") == 0


async def test_a_known_summary_skips_the_find(archive: Archive, metrics: Metrics) -> None:
    client = FakeClient(peer(retrieve_method="get"), on_get=archive.deliver)  # no C-FIND allowed
    got = await collect(service(client, metrics), SERIES_REF, known=Summary(3, (CT_IMAGE,)))
    assert uids(got) == ALL and client.sent("C-FIND") == []


async def test_an_instance_is_listed_first_and_routed_by_series(metrics: Metrics) -> None:
    archive = Archive(series_of(STUDY, SERIES, 2) + series_of(STUDY, OTHER_SERIES, 1))
    client = FakeClient(peer(retrieve_method="get"), on_find=archive.find, on_get=archive.deliver)
    ref = InstanceRef(STUDY, OTHER_SERIES, f"{OTHER_SERIES}.1")
    got, run = await retrieve(service(client, metrics), ref)
    assert uids(got) == [f"{OTHER_SERIES}.1"]
    assert [c.level for c in client.sent("C-FIND")] == ["IMAGE"]
    assert run.series_of == {f"{OTHER_SERIES}.1": OTHER_SERIES}


# -- nothing arrived ---------------------------------------------------------------------------


async def test_success_with_sub_operations_but_nothing_arrived_is_an_error(
        archive: Archive, metrics: Metrics) -> None:
    client = FakeClient(peer(retrieve_method="get"), on_find=archive.find,
                        on_get=in_turn(retrieved(status=0x0000, completed=3)))
    with pytest.raises(UpstreamError, match="reported 3 instance.* none reached the gateway"
                       ) as caught:
        await collect(service(client, metrics), SERIES_REF)
    assert caught.value.dimse_status == 0x0000
    assert metrics.value("dimse_retrieve_lost_total", peer=PEER) == 1


async def test_success_with_no_sub_operation_is_not_found(
        archive: Archive, metrics: Metrics) -> None:
    client = FakeClient(peer(retrieve_method="get"), on_find=archive.find,
                        on_get=in_turn(retrieved(status=0x0000, completed=0)))
    with pytest.raises(NotFound):
        await collect(service(client, metrics), SERIES_REF)
    assert metrics.value("dimse_retrieve_lost_total") == 0


async def test_no_match_in_the_find_is_not_found_before_any_retrieval(metrics: Metrics) -> None:
    client = FakeClient(peer(retrieve_method="get"), on_find=lambda call: found())
    with pytest.raises(NotFound, match=f"series {SERIES} not found"):
        await collect(service(client, metrics), SERIES_REF)
    assert client.sent("C-GET") == []


async def test_a_failure_status_with_nothing_received_maps_to_its_error(
        archive: Archive, metrics: Metrics) -> None:
    client = FakeClient(peer(retrieve_method="get"), on_find=archive.find,
                        on_get=in_turn(retrieved(status=0xA702, completed=0)))
    with pytest.raises(UpstreamUnavailable, match="0xA702") as caught:
        await collect(service(client, metrics), SERIES_REF)
    assert caught.value.dimse_status == 0xA702


# -- partial results -----------------------------------------------------------------------------


async def test_failed_sub_operations_are_retried_one_instance_at_a_time(
        archive: Archive, metrics: Metrics, caplog: pytest.LogCaptureFixture) -> None:
    first = archive.deliver  # the series C-GET misses the last instance
    calls: list[Call] = []

    def on_get(call: Call) -> Script:
        calls.append(call)
        if call.level == "SERIES":
            return first(call, skip=[ALL[2]])
        return archive.deliver(call)

    client = FakeClient(peer(retrieve_method="get"), on_find=archive.find, on_get=on_get)
    with caplog.at_level(logging.WARNING, "app.services.pacs_retrieval"):
        got, run = await retrieve(service(client, metrics), SERIES_REF)
    assert sorted(uids(got)) == ALL
    retry = calls[1]
    assert retry.level == "IMAGE" and retry.uids(SOP_UID) == [ALL[2]]
    # The second chance proposes compressed syntaxes first (PACS that send each file over the
    # first accepted context of its class).
    assert retry.contexts and not set(retry.contexts[0][1]) <= set(UNCOMPRESSED)
    assert [c.level for c in client.sent("C-FIND")] == ["SERIES", "IMAGE"]
    assert run.tally == Tally(3, 3, 0)
    assert metrics.value("dimse_retrieve_partial_total") == 0
    assert metrics.value("dimse_retrievals_total", peer=PEER, operation="C-GET") == 2
    assert "partial" not in caplog.text


async def test_a_partial_result_is_counted_and_logged_not_raised(
        archive: Archive, metrics: Metrics, caplog: pytest.LogCaptureFixture) -> None:
    def on_get(call: Call) -> Script:
        if call.level == "SERIES":
            return archive.deliver(call, skip=[ALL[1]])
        return retrieved(status=0xA702, completed=0, failed=1)  # the retry fails too

    client = FakeClient(peer(retrieve_method="get"), on_find=archive.find, on_get=on_get)
    with caplog.at_level(logging.WARNING, "app.services.pacs_retrieval"):
        got, run = await retrieve(service(client, metrics), SERIES_REF)
    assert uids(got) == [ALL[0], ALL[2]]
    assert run.tally == Tally(3, 2, 1)
    assert metrics.value("dimse_retrieve_partial_total", peer=PEER) == 1
    assert "was partial: status 0xB000, 2 received of 3 expected, 1 failed" in caplog.text


async def test_a_retry_that_raises_is_logged_and_the_partial_result_stands(
        archive: Archive, metrics: Metrics, caplog: pytest.LogCaptureFixture) -> None:
    def on_get(call: Call) -> Script:
        if call.level == "SERIES":
            return archive.deliver(call, skip=[ALL[0]])
        return failing(UpstreamError("association aborted", detail="aborted by the PACS"))

    client = FakeClient(peer(retrieve_method="get"), on_find=archive.find, on_get=on_get)
    with caplog.at_level(logging.WARNING, "app.services.pacs_retrieval"):
        got = await collect(service(client, metrics), SERIES_REF)
    assert uids(got) == ALL[1:]
    assert "second C-GET of instance" in caplog.text and "aborted by the PACS" in caplog.text
    assert metrics.value("dimse_retrieve_partial_total") == 1


async def test_fewer_instances_than_counted_is_partial_without_a_failed_counter(
        archive: Archive, metrics: Metrics) -> None:
    client = FakeClient(peer(retrieve_method="get"), on_find=archive.find,
                        on_get=in_turn(retrieved(*[s.received() for s in archive.instances[:2]])))
    got, run = await retrieve(service(client, metrics), SERIES_REF)
    assert len(got) == 2 and client.sent("C-GET", "IMAGE") == []  # no failed counter: no retry
    assert run.tally == Tally(3, 2, 1)
    assert metrics.value("dimse_retrieve_partial_total") == 1


async def test_a_failure_status_after_some_arrived_ends_the_stream_with_an_error(
        archive: Archive, metrics: Metrics) -> None:
    sent = [s.received() for s in archive.instances[:2]]
    client = FakeClient(peer(retrieve_method="get"), on_find=archive.find,
                        on_get=in_turn(retrieved(*sent, status=0xC000, completed=0)))
    got: list[ReceivedInstance] = []
    with pytest.raises(UpstreamError, match="after 2 of 3 instance") as caught:
        async for instance in service(client, metrics).received(SERIES_REF):
            got.append(instance)
    assert len(got) == 2  # handed on before the error: the response is cut short, not hidden
    assert caught.value.dimse_status == 0xC000
    assert metrics.value("dimse_retrieve_partial_total") == 1


async def test_without_a_count_the_sub_operation_counters_set_what_is_expected(
        metrics: Metrics) -> None:
    archive = Archive(series_of(STUDY, SERIES, 2), counts=False)
    sent = [s.received() for s in archive.instances]
    client = FakeClient(peer(retrieve_method="get"), on_find=archive.find,
                        on_get=in_turn(retrieved(*sent, status=0x0000, completed=2, warning=1)))
    _, run = await retrieve(service(client, metrics), SERIES_REF)
    assert run.tally is not None
    assert run.tally.expected == 3  # 2 completed + 1 warning, though only 2 arrived
    assert metrics.value("dimse_retrieve_partial_total") == 1


# -- the C-MOVE fallback ---------------------------------------------------------------------


async def test_move_fallback_fetches_what_the_c_get_and_its_retry_did_not(
        metrics: Metrics) -> None:
    archive = Archive(series_of(STUDY, SERIES, 4))
    missing = [f"{SERIES}.2", f"{SERIES}.3", f"{SERIES}.4"]

    def on_get(call: Call) -> Script:
        if call.level == "SERIES":
            return archive.deliver(call, skip=missing)
        return retrieved(status=0xA702, completed=0, failed=1)

    client = FakeClient(peer(retrieve_method="get", max_uids_per_query=2),
                        on_find=archive.find, on_get=on_get, on_move=archive.deliver)
    got, run = await retrieve(service(client, metrics, move_fallback=True), SERIES_REF)
    assert sorted(uids(got)) == sorted(f"{SERIES}.{n}" for n in range(1, 5))
    moves = client.sent("C-MOVE")
    assert [m.uids(SOP_UID) for m in moves] == [missing[:2], missing[2:]]  # max_uids_per_query
    assert all(m.level == "IMAGE" and m.uids(0x0020000E) == [SERIES] for m in moves)
    assert [m.expected_uids for m in moves] == [frozenset(missing[:2]), frozenset(missing[2:])]
    assert metrics.value("dimse_move_fallbacks_total", peer=PEER) == 2
    assert metrics.value("dimse_retrievals_total", peer=PEER, operation="C-MOVE") == 2
    assert run.tally == Tally(4, 4, 0)
    assert metrics.value("dimse_retrieve_partial_total") == 0


async def test_move_fallback_skips_duplicates_and_survives_its_own_failure(
        archive: Archive, metrics: Metrics, caplog: pytest.LogCaptureFixture) -> None:
    def on_get(call: Call) -> Script:
        if call.level == "SERIES":
            return archive.deliver(call, skip=[ALL[2]])
        return retrieved(status=0xA702, completed=0, failed=1)

    again = archive.instances[0].received()  # already delivered by the C-GET
    client = FakeClient(peer(retrieve_method="get"), on_find=archive.find, on_get=on_get,
                        on_move=in_turn(failing(UpstreamError("move destination unknown"),
                                                again)))
    with caplog.at_level(logging.WARNING, "app.services.pacs_retrieval"):
        got = await collect(service(client, metrics, move_fallback=True), SERIES_REF)
    assert uids(got) == ALL[:2]  # the duplicate is not handed on twice
    assert "C-MOVE fallback for series" in caplog.text
    assert metrics.value("dimse_retrieve_partial_total") == 1


async def test_without_move_fallback_no_c_move_is_sent(archive: Archive, metrics: Metrics) -> None:
    def on_get(call: Call) -> Script:
        if call.level == "SERIES":
            return archive.deliver(call, skip=[ALL[2]])
        return retrieved(status=0xA702, completed=0, failed=1)

    client = FakeClient(peer(retrieve_method="get"), on_find=archive.find, on_get=on_get)
    await collect(service(client, metrics), SERIES_REF)  # on_move would raise
    assert client.sent("C-MOVE") == []


async def test_undelivered_instances_of_an_unknown_class_say_why(metrics: Metrics) -> None:
    # The PACS names no SOP class in C-FIND (DCMTK dcmqrscp) and gives no counts: the classes
    # proposed are guessed from the Modality, and the MR instance of this "CT" series is not.
    archive = Archive([Stored(STUDY, SERIES, "9.1", sop_class=MR_IMAGE)], sop_classes=False,
                      counts=False)
    client = FakeClient(peer(retrieve_method="get"), on_find=archive.find,
                        on_get=lambda call: retrieved(status=0xA702, completed=0, failed=1))
    with pytest.raises(UpstreamError) as caught:
        await collect(service(client, metrics), SERIES_REF)
    assert "1 instance(s) not delivered ['9.1']: their SOP class is unknown" in caught.value.message
    assert 'set retrieve_method = "move"' in caught.value.message


# -- C-MOVE and the "auto" method --------------------------------------------------------------


async def test_c_move_lists_the_instances_first_and_expects_them(
        archive: Archive, metrics: Metrics) -> None:
    client = FakeClient(peer(retrieve_method="move"), on_find=archive.find,
                        on_move=archive.deliver)
    got = await collect(service(client, metrics), SERIES_REF)
    assert uids(got) == ALL
    [move] = client.sent("C-MOVE")
    assert move.level == "SERIES" and move.expected_uids == frozenset(ALL)
    assert move.message_id is None  # no relay: the PACS's own Message ID routing
    assert [c.level for c in client.sent("C-FIND")] == ["IMAGE"]


async def test_c_move_without_the_storage_scp_fails_before_any_dimse(metrics: Metrics) -> None:
    client = FakeClient(peer(retrieve_method="move"))
    with pytest.raises(UpstreamError) as caught:
        await collect(service(client, metrics, storage_scp=False), SERIES_REF)
    assert 'retrieve_method = "move"' in caught.value.message
    assert "storage SCP is off" in caught.value.message
    assert client.calls == []


async def test_c_move_failure_is_not_retried_by_c_get(archive: Archive, metrics: Metrics) -> None:
    sent = [s.received() for s in archive.instances[:2]]
    client = FakeClient(peer(retrieve_method="move"), on_find=archive.find,
                        on_move=in_turn(retrieved(*sent, status=0xB000, failed=1)))
    got, run = await retrieve(service(client, metrics), SERIES_REF)
    assert len(got) == 2 and client.sent("C-GET") == []
    assert run.tally is not None and run.tally.failed == 1
    assert metrics.value("dimse_retrieve_partial_total") == 1


async def test_auto_refused_by_status_moves_and_learns_only_when_it_delivers(
        archive: Archive, metrics: Metrics) -> None:
    client = FakeClient(peer(retrieve_method="auto"), on_find=archive.find,
                        on_get=in_turn(retrieved(status=0xC000, completed=0, failed=3)),
                        on_move=archive.deliver)
    svc = service(client, metrics)
    got = await collect(svc, SERIES_REF)
    assert uids(got) == ALL
    assert len(client.sent("C-GET")) == 1 and len(client.sent("C-MOVE")) == 1
    assert metrics.value("dimse_get_refusals_total", peer=PEER) == 1
    # Learned: the next retrieval goes straight to C-MOVE.
    await collect(svc, SERIES_REF)
    assert len(client.sent("C-GET")) == 1 and len(client.sent("C-MOVE")) == 2


async def test_auto_refused_by_status_is_not_learned_when_the_move_fails(
        archive: Archive, metrics: Metrics) -> None:
    client = FakeClient(peer(retrieve_method="auto"), on_find=archive.find,
                        on_get=lambda call: retrieved(status=0xC000, completed=0),
                        on_move=lambda call: retrieved(status=0xA801, completed=0))
    svc = service(client, metrics)
    with pytest.raises(UpstreamError) as caught:
        await collect(svc, SERIES_REF)
    assert caught.value.message.startswith("C-GET failed with status 0xC000")
    assert "a C-MOVE instead failed too: C-MOVE failed with status 0xA801" in caught.value.message
    assert caught.value.dimse_status == 0xC000  # the C-GET's own status
    with pytest.raises(GatewayError):
        await collect(svc, SERIES_REF)
    assert len(client.sent("C-GET")) == 2  # C-GET is still tried first


async def test_auto_refused_by_the_association_is_learned_at_once(
        archive: Archive, metrics: Metrics) -> None:
    rejected = ContextsRejected("PACS pacs accepted none of the proposed presentation contexts")
    client = FakeClient(peer(retrieve_method="auto"), on_find=archive.find,
                        on_get=in_turn(failing(rejected)),
                        on_move=lambda call: retrieved(status=0xA801, completed=0))
    svc = service(client, metrics)
    with pytest.raises(UpstreamError) as caught:
        await collect(svc, SERIES_REF)
    assert caught.value.message.startswith(
        f"PACS {PEER} refuses C-GET (its association refused the C-GET service); the C-MOVE "
        "instead failed: C-MOVE failed with status 0xA801")
    assert caught.value.dimse_status == 0xA801
    with pytest.raises(UpstreamError):
        await collect(svc, SERIES_REF)
    assert len(client.sent("C-GET")) == 1  # learned although the C-MOVE failed


async def test_auto_refused_by_the_association_is_learned_once_when_the_move_delivers(
        archive: Archive, metrics: Metrics) -> None:
    client = FakeClient(peer(retrieve_method="auto"), on_find=archive.find,
                        on_get=in_turn(failing(ContextsRejected("none accepted"))),
                        on_move=archive.deliver)
    got = await collect(service(client, metrics), SERIES_REF)
    assert uids(got) == ALL
    assert metrics.value("dimse_capability_learned_total", peer=PEER, capability="c-get",
                         value="refused") == 1


class RecordingRelay:
    """The part of MoveRelay a C-MOVE uses: a reserved Message ID and a relay around it."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def reserve_message_id(self, originator: str) -> int:
        self.events.append(f"reserve {originator}")
        return 4242

    @asynccontextmanager
    async def running(self, originator: str, message_id: int | None) -> AsyncIterator[None]:
        self.events.append(f"relay {originator} {message_id}")
        yield
        self.events.append("relay done")


async def test_c_move_runs_inside_the_relay_with_a_reserved_message_id(
        archive: Archive, metrics: Metrics) -> None:
    relay = RecordingRelay()
    client = FakeClient(peer(retrieve_method="move"), on_find=archive.find,
                        on_move=archive.deliver)
    got = await collect(service(client, metrics, relay=relay), SERIES_REF)
    assert uids(got) == ALL
    assert client.sent("C-MOVE")[0].message_id == 4242
    assert relay.events == ["reserve GW", "relay GW 4242", "relay done"]


async def test_auto_refusal_without_the_storage_scp_says_how_to_fix_it(
        archive: Archive, metrics: Metrics) -> None:
    rejected = ContextsRejected("none accepted")
    client = FakeClient(peer(retrieve_method="auto"), on_find=archive.find,
                        on_get=in_turn(failing(rejected)))
    with pytest.raises(UpstreamError) as caught:
        await collect(service(client, metrics, storage_scp=False), SERIES_REF)
    assert "storage SCP is off (set storage_scp_enabled = true" in caught.value.message
    assert metrics.value("dimse_get_refusals_total", peer=PEER) == 1
    assert client.sent("C-MOVE") == []


async def test_auto_not_found_after_refusal_stays_not_found(
        archive: Archive, metrics: Metrics) -> None:
    # The summary finds the series; the C-MOVE's IMAGE-level inventory then finds nothing.
    client = FakeClient(peer(retrieve_method="auto"),
                        on_find=lambda call: archive.find(call) if call.level == "SERIES"
                        else found(),
                        on_get=in_turn(retrieved(status=0xC000, completed=0)))
    with pytest.raises(NotFound):
        await collect(service(client, metrics), SERIES_REF)


async def test_a_refused_c_get_with_instances_is_an_ordinary_partial(
        archive: Archive, metrics: Metrics) -> None:
    one = archive.instances[0].received()
    client = FakeClient(peer(retrieve_method="auto"), on_find=archive.find,
                        on_get=lambda call: (retrieved(one, status=0xB000, failed=2)
                                             if call.level == "SERIES"
                                             else retrieved(status=0xC000, completed=0)))
    got = await collect(service(client, metrics), SERIES_REF)
    assert uids(got) == [ALL[0]]
    assert client.sent("C-MOVE") == [] and metrics.value("dimse_get_refusals_total") == 0


# -- summary, series lists and refusals as values ----------------------------------------------


async def test_summary_of_a_study_without_counts_asks_the_series_modalities(
        metrics: Metrics) -> None:
    archive = Archive(series_of(STUDY, SERIES, 2, sop_class=MR_IMAGE, modality="MR"),
                      counts=False, modalities=False)
    series_modality = Archive(archive.instances, counts=False)  # but SERIES answers Modality
    client = FakeClient(peer(), on_find=lambda call: (series_modality.find(call)
                                                      if call.level == "SERIES"
                                                      else archive.find(call)))
    summary = await service(client, metrics).summary(StudyRef(STUDY))
    assert summary is not None and summary.count is None and MR_IMAGE in summary.classes
    assert [c.level for c in client.sent("C-FIND")] == ["STUDY", "SERIES"]


async def test_summary_is_none_when_the_pacs_says_nothing_useful(metrics: Metrics) -> None:
    archive = Archive(series_of(STUDY, SERIES, 2), counts=False, modalities=False)
    client = FakeClient(peer(), on_find=archive.find)
    assert await service(client, metrics).summary(SERIES_REF) is None


async def test_summary_of_an_unknown_series_is_not_found(metrics: Metrics) -> None:
    client = FakeClient(peer(), on_find=lambda call: found())
    with pytest.raises(NotFound):
        await service(client, metrics).summary(SERIES_REF)


def series_match(uid: str | None = SERIES) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = STUDY
    if uid is not None:
        ds.SeriesInstanceUID = uid
    return ds


@pytest.mark.parametrize(("script", "listed", "complete"), [
    (found(series_match(), series_match()), [SERIES], True),  # duplicates folded
    (found(series_match(), status=0xB000), [SERIES], True),
    (found(series_match(), capped=True), [SERIES], False),
    (found(series_match(), status=0xA700), [SERIES], False),
    (found(series_match(), series_match(None)), [SERIES], False),  # a match without its UID
])
async def test_list_series_is_complete_only_when_the_find_ended_well(
        metrics: Metrics, script: Script, listed: list[str], complete: bool) -> None:
    client = FakeClient(peer(), on_find=in_turn(script))
    assert await service(client, metrics).list_series(STUDY) == (listed, complete)


@pytest.mark.parametrize(("outcome", "refused"), [
    (RetrieveOutcome(0xA702, 0, 3, 0, 0), True),
    (RetrieveOutcome(0xC000, 0, 0, 0, 0), True),
    (RetrieveOutcome(0x0122, 0, 0, 0, 0), True),
    (RetrieveOutcome(0xA801, 0, 0, 0, 0), False),  # destination unknown: not about C-GET
    (RetrieveOutcome(0xC000, 1, 2, 0, 0), False),  # one sub-operation completed
    (RetrieveOutcome(0xC000, 0, 0, 0, 1), False),  # something arrived
    (RetrieveOutcome(0x0000, 0, 0, 0, 0), False),
])
def test_refuses_get(outcome: RetrieveOutcome, refused: bool) -> None:
    assert refuses_get(outcome) is refused
