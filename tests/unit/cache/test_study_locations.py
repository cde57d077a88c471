"""StudyLocations: which federated PACS hold a study, bounded in process, shared through the
cache backend so that another process (a second StudyLocations over the same backend) knows."""

from __future__ import annotations

from app.cache.memory import MemoryBackend
from app.cache.study_locations import StudyLocations, location_key

ORDER = ("east", "west", "north")


def backend() -> MemoryBackend:
    return MemoryBackend(max_bytes=1 << 20, max_object_bytes=1 << 16)


async def test_names_are_kept_in_federation_order_and_unknown_names_dropped() -> None:
    locations = StudyLocations(ORDER, size=10)
    await locations.remember({"1.2": {"north", "east", "elsewhere"}})
    assert await locations.known("1.2") == ("east", "north")
    assert await locations.known("1.3") == ()


async def test_the_local_map_forgets_the_least_recently_used_past_its_size() -> None:
    locations = StudyLocations(ORDER, size=2)
    await locations.remember({"1.1": {"east"}, "1.2": {"west"}})
    assert await locations.known("1.1") == ("east",)  # 1.1 is now the most recently used
    await locations.remember({"1.3": {"north"}})
    assert len(locations) == 2
    assert await locations.known("1.2") == ()
    assert await locations.known("1.1") == ("east",)


async def test_another_process_learns_locations_through_the_shared_backend() -> None:
    shared = backend()
    writer, reader = StudyLocations(ORDER, 10, shared), StudyLocations(ORDER, 10, shared)
    await writer.remember({"1.2": {"west", "east"}})
    assert await shared.get(location_key("1.2")) == b"east,west"
    assert len(reader) == 0
    assert await reader.known("1.2") == ("east", "west")


async def test_a_pacs_that_did_not_answer_keeps_what_was_known_of_it() -> None:
    locations = StudyLocations(ORDER, 10)
    await locations.remember({"1.2": {"east", "west"}})
    await locations.remember({"1.2": {"east"}}, unsure=["west"])
    assert await locations.known("1.2") == ("east", "west")
    await locations.remember({"1.2": {"east"}})  # west answered without it
    assert await locations.known("1.2") == ("east",)


async def test_forget_drops_one_pacs_and_the_entry_with_the_last() -> None:
    shared = backend()
    locations = StudyLocations(ORDER, 10, shared)
    await locations.remember({"1.2": {"east", "west"}})
    await locations.forget("1.2", "east")
    assert await locations.known("1.2") == ("west",)
    await locations.forget("1.2", "west")
    assert await locations.known("1.2") == ()
    assert await shared.get(location_key("1.2")) is None
