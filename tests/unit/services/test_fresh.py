"""The in-process hand-over of freshly filled instances is bounded by bytes and forgets on
demand."""

from __future__ import annotations

from app.dimse.received import ReceivedInstance
from app.services.fresh import FreshInstances


def item(sop: str, size: int) -> ReceivedInstance:
    return ReceivedInstance(b"x" * size, "1.2.840.10008.5.1.4.1.1.2", sop, "1.2.840.10008.1.2.1")


def test_oldest_go_first_within_the_byte_budget() -> None:
    fresh = FreshInstances(max_bytes=250)
    for n in range(5):
        fresh.put("s", item(f"1.{n}", 100))
    assert fresh.size <= 250
    assert fresh.get("s", "1.0") is None and fresh.get("s", "1.2") is None
    assert fresh.get("s", "1.4") is not None and fresh.get("s", "1.3") is not None
    assert fresh.get("other", "1.4") is None


def test_too_big_is_not_kept_and_forget_removes() -> None:
    fresh = FreshInstances(max_bytes=100)
    fresh.put("s", item("1.1", 101))
    assert fresh.get("s", "1.1") is None and fresh.size == 0
    fresh.put("s", item("1.2", 60))
    fresh.put("s", item("1.2", 40))  # replaced, not counted twice
    assert fresh.size == 40
    fresh.forget("s", ["1.2", "1.9"])
    assert fresh.get("s", "1.2") is None and fresh.size == 0
