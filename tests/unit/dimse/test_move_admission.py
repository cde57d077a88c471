"""The Storage SCP's admission policy without any DIMSE engine: which associations are a PACS
(AE title and address, loopback equivalence, name resolution) and which C-STOREs belong to a
running C-MOVE of that PACS (routing, expected instances, duplicates)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from app.dimse.bridge import run_on_loop
from app.dimse.move_admission import (
    DUPLICATE,
    NOT_EXPECTED,
    AddressResolver,
    MoveAdmission,
    MoveRouter,
    MoveSource,
    Relayed,
    StoreDecision,
    is_loopback,
    move_sources,
    normalise_address,
    unrouted_status,
)
from app.settings import PacsPeer

NAMES = {
    "localhost": frozenset({"127.0.0.1", "::1"}),
    "pacs.example": frozenset({"10.0.0.7", "2001:db8::7"}),
}


def fake_resolve(host: str) -> frozenset[str]:
    if host not in NAMES:
        raise OSError("unknown host")
    return NAMES[host]


def admission(*sources: MoveSource) -> MoveAdmission:
    return MoveAdmission(sources, AddressResolver(resolve=fake_resolve))


@pytest.mark.parametrize(("address", "normal"), [
    ("10.0.0.7", "10.0.0.7"), ("::ffff:10.0.0.7", "10.0.0.7"), ("[2001:DB8::7]", "2001:db8::7"),
    ("fe80::1%eth0", "fe80::1"), ("PACS.example", "pacs.example")])
def test_normalise_address(address: str, normal: str) -> None:
    assert normalise_address(address) == normal


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.0.0.1", False), ("localhost", False), ("", False)])
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_move_sources_are_the_peers_that_use_c_move() -> None:
    peers = [PacsPeer(name="a", ae_title="A", host="pacs.example", retrieve_method="move"),
             PacsPeer(name="b", ae_title="B", retrieve_method="get"),
             PacsPeer(name="c", ae_title="C", retrieve_method="move",
                      move_source_hosts=["10.1.1.1", "*"]),
             PacsPeer(name="d", ae_title="D", host="auto.example")]
    assert move_sources(peers) == [MoveSource("a", "A", ("pacs.example",)),
                                   MoveSource("c", "C", ("10.1.1.1", "*")),
                                   MoveSource("d", "D", ("auto.example",))]


def test_unknown_calling_ae_is_refused() -> None:
    policy = admission(MoveSource("a", "ORTHANC", ("pacs.example",)))
    verdict = policy.admit_association("EVIL", "10.0.0.7")
    assert not verdict.admitted and "not a PACS" in verdict.reason
    assert policy.admit_association("ORTHANC ", "10.0.0.7").peers == {"a"}


@pytest.mark.parametrize(("address", "admitted"), [
    ("10.0.0.7", True), ("::ffff:10.0.0.7", True), ("2001:db8::7", True), ("10.0.0.8", False),
    ("127.0.0.1", False), ("::1", False)])
def test_address_must_be_one_of_the_pacs_host(address: str, admitted: bool) -> None:
    policy = admission(MoveSource("a", "ORTHANC", ("pacs.example",)))
    verdict = policy.admit_association("ORTHANC", address)
    assert verdict.admitted is admitted
    if not admitted:
        assert "move_source_hosts" in verdict.reason


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1"])
@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "127.0.1.1", "::ffff:127.0.0.1"])
def test_loopback_addresses_stand_for_each_other(host: str, address: str) -> None:
    policy = admission(MoveSource("a", "ORTHANC", (host,)))
    assert policy.admit_association("ORTHANC", address).admitted
    assert not policy.admit_association("ORTHANC", "10.0.0.7").admitted


def test_any_address_and_unresolvable_hosts() -> None:
    anywhere = admission(MoveSource("a", "ORTHANC", ("*",)))
    assert anywhere.admit_association("ORTHANC", "203.0.113.9").admitted
    assert not anywhere.admit_association("EVIL", "203.0.113.9").admitted
    nowhere = admission(MoveSource("a", "ORTHANC", ("no-such-host.invalid",)))
    assert not nowhere.admit_association("ORTHANC", "127.0.0.1").admitted


def test_peers_sharing_an_ae_title_are_told_apart_by_address() -> None:
    policy = admission(MoveSource("a", "PACS", ("10.0.0.1",)), MoveSource("b", "PACS", ("*",)),
                       MoveSource("c", "PACS", ("10.0.0.2",)))
    assert policy.admit_association("PACS", "10.0.0.1").peers == {"a", "b"}
    assert policy.admit_association("PACS", "10.0.0.9").peers == {"b"}


def test_names_are_resolved_again_after_the_ttl() -> None:
    calls: list[str] = []
    answers = [frozenset({"10.0.0.1"}), frozenset({"10.0.0.2"})]

    def resolve(host: str) -> frozenset[str]:
        calls.append(host)
        return answers[len(calls) - 1]

    resolver = AddressResolver(ttl=0.0, resolve=resolve)
    assert resolver.addresses("pacs") == {"10.0.0.1"}
    assert resolver.addresses("pacs") == {"10.0.0.2"}
    cached = AddressResolver(ttl=60.0, resolve=lambda host: frozenset({"10.0.0.3"}))
    assert cached.addresses("pacs") == cached.addresses("pacs") == {"10.0.0.3"}
    assert cached.addresses("10.9.9.9") == {"10.9.9.9"}  # an address is not looked up


# -- C-STORE admission ----------------------------------------------------------------------------

EMITTER: Any = None  # admit_store never emits


def router_with(*moves: tuple[str, int, str, set[str]]) -> MoveRouter:
    router = MoveRouter()
    for originator, message_id, peer, uids in moves:
        router.register(originator, message_id, EMITTER, frozenset(uids), peer)
    return router


def test_routed_by_move_originator_to_that_pacs_c_move() -> None:
    router = router_with(("GW", 7, "a", {"1.1", "1.2"}), ("GW", 8, "b", {"2.1"}))
    decision = router.admit_store(frozenset({"a"}), "GW", 7, "1.1")
    assert decision.sink is not None and decision.sink.message_id == 7
    other = router.admit_store(frozenset({"a"}), "GW", 8, "2.1")
    assert other.sink is None and other.status == NOT_EXPECTED
    assert "another PACS" in other.reason


def test_instance_not_in_the_c_move_is_refused() -> None:
    router = router_with(("GW", 7, "a", {"1.1"}))
    decision = router.admit_store(frozenset({"a"}), "GW", 7, "9.9")
    assert decision.status == NOT_EXPECTED and "not one of the instances" in decision.reason


def test_duplicates_are_refused_by_key_and_by_uid() -> None:
    router = router_with(("GW", 7, "a", {"1.1", "1.2"}))
    assert router.admit_store(frozenset({"a"}), "GW", 7, "1.1").sink is not None
    assert router.admit_store(frozenset({"a"}), "GW", 7, "1.1").status == DUPLICATE
    assert router.admit_store(frozenset({"a"}), None, None, "1.1").status == DUPLICATE
    assert router.admit_store(frozenset({"a"}), None, None, "1.2").sink is not None
    assert router.admit_store(frozenset({"a"}), "GW", 7, "1.2").status == DUPLICATE


def test_uid_fallback_only_among_that_pacs_c_moves() -> None:
    router = router_with(("GW", 7, "a", {"1.1"}), ("GW", 8, "b", {"1.1"}))
    decision = router.admit_store(frozenset({"b"}), None, None, "1.1")
    assert decision.sink is not None and decision.sink.peer == "b"
    nobody = router.admit_store(frozenset({"c"}), None, None, "1.1")
    assert nobody.sink is None and nobody.status is None  # unrouted: maybe another worker's
    unknown_key = router.admit_store(frozenset({"c"}), "GW", 99, "1.1")
    assert unknown_key.sink is None and unknown_key.status is None


def test_two_c_moves_of_one_pacs_expecting_the_same_instance_each_get_one() -> None:
    router = router_with(("GW", 7, "a", {"1.1"}), ("GW", 8, "a", {"1.1"}))
    first = router.admit_store(frozenset({"a"}), None, None, "1.1")
    second = router.admit_store(frozenset({"a"}), None, None, "1.1")
    assert first.sink is not None and second.sink is not None and first.sink is not second.sink
    assert router.admit_store(frozenset({"a"}), None, None, "1.1").status == DUPLICATE


def test_concurrent_copies_admit_exactly_one() -> None:
    router = router_with(("GW", 7, "a", {"1.1"}))
    results: list[int | None] = []
    barrier = threading.Barrier(8)

    def store() -> None:
        barrier.wait()
        decision = router.admit_store(frozenset({"a"}), "GW", 7, "1.1")
        results.append(0 if decision.sink is not None else decision.status)

    threads = [threading.Thread(target=store) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results, key=lambda r: r or 0) == [0] + [DUPLICATE] * 7


def test_unregistered_c_move_admits_nothing() -> None:
    router = router_with(("GW", 7, "a", {"1.1"}))
    (sink,) = router.sinks()
    router.unregister(sink)
    assert router.admit_store(frozenset({"a"}), "GW", 7, "1.1").sink is None
    assert len(router) == 0


# -- an instance no local C-MOVE wants ---------------------------------------------------------


@pytest.mark.parametrize(("outcome", "status"), [
    (Relayed.RELAYED, 0x0000),
    (Relayed.UNWANTED, 0xC000),  # Error: Cannot Understand, as for no such C-MOVE here
    (Relayed.UNAVAILABLE, 0xA700),  # Refused: Out of Resources, a transient refusal
    (None, 0xC000),  # no relay at all
])
def test_what_the_relay_did_decides_the_c_store_status(
        outcome: Relayed | None, status: int, caplog: pytest.LogCaptureFixture) -> None:
    decision = StoreDecision(reason="matches no C-MOVE of this PACS in progress here")
    with caplog.at_level("WARNING", "app.dimse.move_admission"):
        assert unrouted_status(outcome, decision, "PACS", "10.0.0.7", "1.2.3") == status
    assert ("1.2.3" in caplog.text) == (outcome is not Relayed.RELAYED)
    if outcome is not None and outcome is not Relayed.RELAYED:
        assert outcome.value in caplog.text


async def test_a_storage_scp_thread_waits_for_the_loop_within_a_limit() -> None:
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()

    async def answer() -> str:
        return "relayed"

    async def never() -> str:
        try:
            await asyncio.sleep(60)
        finally:
            stopped.set()
        return "late"

    assert await asyncio.to_thread(run_on_loop, loop, answer(), 5) == "relayed"
    with pytest.raises(TimeoutError):
        await asyncio.to_thread(run_on_loop, loop, never(), 0.1)
    await asyncio.wait_for(stopped.wait(), 5)  # the abandoned coroutine was cancelled
