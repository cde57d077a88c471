"""GatewayCache: how instances, metadata, series indexes and query results are encoded and keyed,
and that a series is only ever served complete (an evicted instance means a refetch)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from redis.crc import key_slot

from app.cache.backend import CacheBackend
from app.cache.memory import MemoryBackend
from app.cache.store import CachedInstance, GatewayCache, Keys, SeriesIndex
from app.dicomweb.urls import new_base_token
from app.dimse.engine.part10 import part10

pytestmark = pytest.mark.timeout(30)

STUDY, SERIES, OTHER_SERIES = "1.2.3", "1.2.3.4", "1.2.3.5"

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def _cache(backend: CacheBackend, query_ttl: float = 10) -> GatewayCache:
    return GatewayCache(backend, "pacs", ttl=60, query_ttl=query_ttl)


def _instance(sop: str, syntax: str = EXPLICIT_LE) -> CachedInstance:
    """A small instance: Part-10 framing (its File Meta names class and syntax) and a body."""
    return CachedInstance(sop, CT_IMAGE, syntax, part10(sop.encode() * 3, CT_IMAGE, sop, syntax))


async def _fill(cache: GatewayCache, series: str, sops: list[str], complete: bool = True) -> None:
    for sop in sops:
        assert await cache.put_instance(series, _instance(sop))
    await cache.put_series_index(SeriesIndex(
        STUDY, series, complete, tuple((s, CT_IMAGE, EXPLICIT_LE) for s in sops)))


def test_series_keys_share_one_cluster_slot() -> None:
    keys = Keys("pacs")
    names = [keys.instance(SERIES, "9.1"), keys.instance(SERIES, "9.2"),
             keys.metadata(SERIES, "9.1"), keys.series_index(SERIES), keys.lock(SERIES),
             keys.lock(SERIES, "9.1"), keys.events(SERIES, "tok"),
             keys.events(SERIES, "tok", "9.1")]
    assert len(set(names)) == len(names)
    assert {key_slot(n.encode()) for n in names} == {key_slot(SERIES.encode())}
    assert Keys("other").instance(SERIES, "9.1") != names[0]  # peers never share keys


async def test_instance_round_trip(backend: CacheBackend) -> None:
    cache = _cache(backend)
    item = _instance("1.2.3.4.1", JPEG_BASELINE)
    assert await cache.put_instance(SERIES, item)
    assert await cache.get_instance(SERIES, "1.2.3.4.1") == item
    assert await cache.get_instance(SERIES, "1.2.3.4.2") is None
    assert await cache.get_instance(OTHER_SERIES, "1.2.3.4.1") is None


async def test_the_cached_value_is_the_part10_bytes_themselves(backend: CacheBackend) -> None:
    """No header is joined in front: class and syntax are read back from the File Meta."""
    cache = _cache(backend)
    item = _instance("1.2.3.4.7", JPEG_BASELINE)
    assert await cache.put_instance(SERIES, item)
    assert await backend.get(cache.keys.instance(SERIES, "1.2.3.4.7")) == item.data


async def test_an_instance_whose_file_meta_disagrees_is_not_cached(
        backend: CacheBackend) -> None:
    cache = _cache(backend)
    item = _instance("1.2.3.4.8", JPEG_BASELINE)
    wrong = CachedInstance(item.sop_instance_uid, CT_IMAGE, EXPLICIT_LE, item.data)
    assert not await cache.put_instance(SERIES, wrong)
    assert await cache.get_instance(SERIES, "1.2.3.4.8") is None


async def test_entries_of_the_earlier_format_are_still_read(backend: CacheBackend) -> None:
    cache = _cache(backend)
    ts, cls = EXPLICIT_LE.encode(), CT_IMAGE.encode()
    body = b"\x00" * 128 + b"DICM" + b"old"
    await backend.set(cache.keys.instance(SERIES, "1.3"),
                      b"DWGI" + bytes([len(ts)]) + ts + bytes([len(cls)]) + cls + body)
    assert await cache.get_instance(SERIES, "1.3") == CachedInstance("1.3", CT_IMAGE,
                                                                      EXPLICIT_LE, body)


async def test_value_without_the_instance_header_is_not_an_instance(
        backend: CacheBackend) -> None:
    cache = _cache(backend)
    await backend.set(cache.keys.instance(SERIES, "1.9"), b"garbage, not an encoded instance")
    assert await cache.get_instance(SERIES, "1.9") is None


async def test_instance_over_the_object_cap_is_not_stored() -> None:
    cache = _cache(MemoryBackend(10_000, max_object_bytes=100))
    big = CachedInstance("1.5", CT_IMAGE, EXPLICIT_LE,
                         part10(b"x" * 200, CT_IMAGE, "1.5", EXPLICIT_LE))
    assert not await cache.put_instance(SERIES, big)
    assert await cache.get_instance(SERIES, "1.5") is None


def test_series_index_encoding() -> None:
    index = SeriesIndex(STUDY, SERIES, True, (("1.1", CT_IMAGE, EXPLICIT_LE),
                                              ("1.2", CT_IMAGE, JPEG_BASELINE)))
    assert SeriesIndex.decode(index.encode()) == index
    incomplete = SeriesIndex(STUDY, SERIES, False, ())
    assert SeriesIndex.decode(incomplete.encode()) == incomplete


async def test_complete_series(backend: CacheBackend) -> None:
    cache = _cache(backend)
    sops = ["1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.3"]
    await _fill(cache, SERIES, sops)
    index = await cache.complete_series(SERIES)
    assert index is not None
    assert [i[0] for i in index.instances] == sops
    assert await cache.complete_series(OTHER_SERIES) is None


async def test_complete_series_is_none_when_one_instance_was_evicted(
        backend: CacheBackend) -> None:
    cache = _cache(backend)
    sops = ["1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.3"]
    await _fill(cache, SERIES, sops)
    assert await backend.delete(cache.keys.instance(SERIES, "1.2.3.4.2")) == 1
    assert await cache.get_series_index(SERIES) is not None  # the index itself survives
    assert await cache.complete_series(SERIES) is None  # but never gives a short answer


async def test_incomplete_series_is_never_complete(backend: CacheBackend) -> None:
    cache = _cache(backend)
    await _fill(cache, SERIES, ["1.2.3.4.1"], complete=False)
    assert await cache.complete_series(SERIES) is None


async def test_lru_eviction_of_an_instance_breaks_completeness() -> None:
    backend = MemoryBackend(max_bytes=2_000)
    cache = _cache(backend)
    await _fill(cache, SERIES, ["1.2.3.4.1", "1.2.3.4.2"])
    assert await cache.complete_series(SERIES) is not None
    await backend.set("dwg:pacs:filler", b"f" * 1_700)  # pushes the oldest instance out
    assert await cache.complete_series(SERIES) is None


async def test_metadata_is_stored_under_a_token_and_served_with_each_base_url(
        backend: CacheBackend) -> None:
    cache = _cache(backend)
    token = new_base_token()
    raw = json.dumps({"00081190": {"vr": "UR", "Value": [f"{token}/studies/{STUDY}"]},
                      "00100010": {"vr": "PN", "Value": [{"Alphabetic": "urn:dwg:base-url"}]},
                      "7FE00010": {"vr": "OB", "BulkDataURI": f"{token}/bulkdata/7FE00010"}},
                     separators=(",", ":")).encode()
    await cache.put_metadata_many([(SERIES, "1.1", raw)], token)
    other = "https://public.example:8443/prefix"
    (got, missing) = await cache.get_metadata(SERIES, ["1.1", "1.2"], other)
    assert missing is None
    assert got is not None
    obj = json.loads(got)
    assert obj["00081190"]["Value"] == [f"{other}/studies/{STUDY}"]
    assert obj["7FE00010"]["BulkDataURI"] == f"{other}/bulkdata/7FE00010"
    assert obj["00100010"]["Value"] == [{"Alphabetic": "urn:dwg:base-url"}]  # data untouched
    # whatever a base URL holds, it goes in JSON-escaped: the answer stays valid JSON
    (odd,) = await cache.get_metadata(SERIES, ["1.1"], 'http://x"y\\z')
    assert odd is not None
    assert json.loads(odd)["00081190"]["Value"] == [f'http://x"y\\z/studies/{STUDY}']
    (again,) = await cache.get_metadata(SERIES, ["1.1"], other)
    assert again == got


async def test_metadata_of_an_older_format_is_a_miss(backend: CacheBackend) -> None:
    cache = _cache(backend)
    await backend.set(cache.keys.metadata(SERIES, "1.1"), b'{"x":"urn:dwg:base-url/y"}')
    assert await cache.get_metadata(SERIES, ["1.1"], "http://a") == [None]


async def test_query_results(backend: CacheBackend) -> None:
    cache = _cache(backend)
    digest = GatewayCache.query_digest(["SearchQuery(level=STUDY)"])
    assert digest == GatewayCache.query_digest(["SearchQuery(level=STUDY)"])
    assert digest != GatewayCache.query_digest(["SearchQuery(level=SERIES)"])
    payload = {"results": [{"0020000D": {"vr": "UI", "Value": ["1.2"]}}],
               "more": False, "warnings": []}
    assert await cache.get_query(digest) is None
    await cache.put_query(digest, payload)
    assert await cache.get_query(digest) == payload


async def test_query_cache_off_with_zero_ttl(backend: CacheBackend) -> None:
    cache = _cache(backend, query_ttl=0)
    digest = GatewayCache.query_digest(["q"])
    await cache.put_query(digest, {"results": [], "more": False, "warnings": []})
    assert await cache.get_query(digest) is None
    assert await backend.exists([cache.keys.query(digest)]) == 0


async def test_evict_study_and_series(backend: CacheBackend) -> None:
    cache = _cache(backend)
    await _fill(cache, SERIES, ["1.2.3.4.1", "1.2.3.4.2"])
    await _fill(cache, OTHER_SERIES, ["1.2.3.5.1"])
    await cache.put_metadata_many([(SERIES, "1.2.3.4.1", b"{}")], new_base_token())
    other_study = SeriesIndex("7.7", "7.7.1", True, (("7.7.1.1", CT_IMAGE, EXPLICIT_LE),))
    await cache.put_instance("7.7.1", _instance("7.7.1.1"))
    await cache.put_series_index(other_study)
    assert await cache.evict_series(OTHER_SERIES) == 2  # one instance and the index
    assert await cache.complete_series(OTHER_SERIES) is None
    removed = await cache.evict_study(STUDY)
    # instances, metadata, index, and one marker per series the study had cached (two: the
    # marker of the series evicted on its own above is left until its study is evicted)
    assert removed == 2 + 1 + 1 + 2
    assert await cache.complete_series(SERIES) is None
    assert await cache.get_instance(SERIES, "1.2.3.4.1") is None
    assert await cache.complete_series("7.7.1") is not None  # another study is untouched


async def test_concurrent_series_of_one_study_are_all_recorded(empty_redis: Any) -> None:
    import asyncio

    from app.cache.redisbackend import RedisBackend

    backend = RedisBackend(empty_redis.url)
    try:
        cache = _cache(backend)
        uids = [f"{STUDY}.{n}" for n in range(8)]
        await asyncio.gather(*(cache.put_series_index(SeriesIndex(STUDY, uid, True, ()))
                               for uid in uids))
        await cache.evict_study(STUDY)
        assert [await cache.get_series_index(uid) for uid in uids] == [None] * len(uids)
    finally:
        await backend.close()


async def test_series_bytes_sums_the_stored_instances(backend: CacheBackend) -> None:
    cache = _cache(backend)
    assert await cache.series_bytes(SERIES) == 0  # not indexed
    await _fill(cache, SERIES, ["1.2.3.4.1", "1.2.3.4.2"])
    expected = sum(len(_instance(s).data) for s in ("1.2.3.4.1", "1.2.3.4.2"))
    assert await cache.series_bytes(SERIES) == expected
