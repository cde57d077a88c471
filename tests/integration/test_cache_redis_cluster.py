"""The Redis backend on a real three-primary Redis Cluster: the backend contract with keys in
different slots (multi-key reads and deletes, SCAN over every primary, locks, polled event logs,
stats summed over the nodes); every key of one series in ONE slot while series spread over the
nodes; and the gateway in front of real Orthanc serving a second retrieval from the cluster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import redis
from pydicom import Dataset

from app.cache.backend import CacheUnavailable
from app.cache.redisbackend import RedisBackend
from app.cache.store import Keys
from tests.peers import OrthancServer, free_port, require_binary
from tests.peers.fixtures import GATEWAY_AE
from tests.peers.redis_cluster import RedisCluster
from tests.support.gateway_server import GatewayServer, gateway_settings, peer_settings
from tests.support.redis_cache import ADMIN_AUTH, redis_cache_settings, sop_uids

pytestmark = pytest.mark.timeout(40)
MAX_OBJECT_BYTES = 400
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One throwaway Redis Cluster for this module."""
    require_binary("redis-server")
    require_binary("redis-cli")
    with RedisCluster(tmp_path_factory.mktemp("redis-cluster")) as running:
        yield running


def _node_clients(cluster: RedisCluster) -> list[redis.Redis]:
    """A plain (non-cluster) client per node, to see where keys really are."""
    return [redis.Redis(host=cluster.host, port=port, socket_timeout=5) for port in cluster.ports]


def _keys_per_node(cluster: RedisCluster, pattern: str = "*") -> list[set[str]]:
    result = []
    for client in _node_clients(cluster):
        with client:
            result.append({k.decode() for k in client.scan_iter(match=pattern, count=1000)})
    return result


def _keyslot(cluster: RedisCluster, key: str) -> int:
    """The slot of ``key`` as the server computes it (CLUSTER KEYSLOT)."""
    with redis.Redis(host=cluster.host, port=cluster.ports[0], socket_timeout=5) as client:
        return int(client.execute_command("CLUSTER KEYSLOT", key))


@pytest.fixture
def empty_cluster(cluster: RedisCluster) -> RedisCluster:
    """The module's cluster with every key on every node removed."""
    for client in _node_clients(cluster):
        with client:
            client.flushall()
    return cluster


@pytest.fixture
async def backend(empty_cluster: RedisCluster) -> AsyncIterator[RedisBackend]:
    """A cluster-mode RedisBackend with a per-object cap."""
    cache = RedisBackend(empty_cluster.url, cluster=True, max_object_bytes=MAX_OBJECT_BYTES)
    try:
        yield cache
    finally:
        await cache.close()


# backend contract ----------------------------------------------------------------------------


async def test_values_and_multi_key_operations_across_slots(
    backend: RedisBackend, empty_cluster: RedisCluster
) -> None:
    keys = [f"dwg:t:{{series-{n}}}:k" for n in range(12)]  # twelve hash tags, twelve slots
    for n, key in enumerate(keys):
        assert await backend.set(key, f"v{n}".encode())
    per_node = _keys_per_node(empty_cluster)
    assert all(per_node), f"keys did not spread over every node: {per_node}"
    assert len({_keyslot(empty_cluster, k) for k in keys}) == len(keys)

    absent = "dwg:t:{elsewhere}:absent"
    assert await backend.get(keys[0]) == b"v0"
    assert await backend.get_many([*keys, absent]) == [
        f"v{n}".encode() for n in range(len(keys))
    ] + [None]
    assert await backend.exists([*keys, absent]) == len(keys)
    assert await backend.delete(keys[0], keys[1], keys[2], absent) == 3
    assert await backend.exists(keys) == len(keys) - 3
    assert await backend.get_many(keys[:2]) == [None, None]

    assert await backend.set("dwg:t:{cap}:fits", b"x" * MAX_OBJECT_BYTES)
    assert not await backend.set("dwg:t:{cap}:over", b"x" * (MAX_OBJECT_BYTES + 1))
    assert await backend.get("dwg:t:{cap}:over") is None


async def test_ttls_on_the_cluster(empty_cluster: RedisCluster) -> None:
    cache = RedisBackend(empty_cluster.url, cluster=True, default_ttl=0.15)
    try:
        await cache.set("dwg:t:{a}:default", b"d")
        await cache.set("dwg:t:{b}:own", b"o", ttl=30)
        await cache.set("dwg:t:{c}:short", b"s", ttl=0.15)
        assert await cache.get("dwg:t:{c}:short") == b"s"
        await asyncio.sleep(0.35)
        assert await cache.get("dwg:t:{a}:default") is None
        assert await cache.get("dwg:t:{c}:short") is None
        assert await cache.get("dwg:t:{b}:own") == b"o"
        assert await cache.exists(["dwg:t:{a}:default", "dwg:t:{b}:own", "dwg:t:{c}:short"]) == 1
    finally:
        await cache.close()


async def test_keys_delete_matching_clear_and_stats_cover_every_node(
    backend: RedisBackend, empty_cluster: RedisCluster
) -> None:
    keys = Keys("orthanc")
    series = [f"1.2.826.0.1.{n}" for n in range(12)]
    written: set[str] = set()
    for uid in series:
        for key in (
            keys.instance(uid, "9.1"),
            keys.instance(uid, "9.2"),
            keys.metadata(uid, "9.1"),
            keys.series_index(uid),
        ):
            await backend.set(key, b"v")
            written.add(key)
    await backend.set(keys.query("abc"), b"{}")
    written.add(keys.query("abc"))
    with redis.Redis(host=empty_cluster.host, port=empty_cluster.ports[1]) as client:
        client.set("someone-else", b"x")  # a foreign key (on whichever node owns its slot)

    assert all(_keys_per_node(empty_cluster, "dwg:*"))
    assert set(await backend.keys("dwg:*")) == written
    assert set(await backend.keys(keys.series_pattern(series[0]))) == {
        keys.instance(series[0], "9.1"),
        keys.instance(series[0], "9.2"),
        keys.metadata(series[0], "9.1"),
        keys.series_index(series[0]),
    }

    node_memory = []
    for client in _node_clients(empty_cluster):
        with client:
            node_memory.append(int(client.info("memory")["used_memory"]))
    stats = await backend.stats()
    assert stats["backend"] == "redis cluster"
    assert stats["keys"] == len(written)
    assert stats["used_memory"] > 2 * min(node_memory)  # the sum of all primaries, not one

    assert await backend.delete_matching(keys.series_pattern(series[0])) == 4
    assert await backend.delete_matching(keys.series_pattern(series[1])) == 4
    assert set(await backend.keys("dwg:*")) == written - {
        k for k in written if f"{{{series[0]}}}" in k or f"{{{series[1]}}}" in k
    }
    assert await backend.clear() == len(written) - 8
    assert _keys_per_node(empty_cluster, "dwg:*") == [set(), set(), set()]
    assert sum(len(k) for k in _keys_per_node(empty_cluster)) == 1  # the foreign key stays
    assert (await backend.stats())["keys"] == 0


async def test_locks_on_keys_of_several_slots(empty_cluster: RedisCluster) -> None:
    first = RedisBackend(empty_cluster.url, cluster=True)
    second = RedisBackend(empty_cluster.url, cluster=True)  # as another worker or replica
    lock_keys = [Keys("orthanc").lock(f"1.2.3.{n}") for n in range(6)]
    try:
        assert len({_keyslot(empty_cluster, k) for k in lock_keys}) == len(lock_keys)
        for key in lock_keys:
            token = await first.acquire_lock(key, 10)
            assert token
            assert await second.acquire_lock(key, 10) is None
            assert await second.lock_holder(key) == token
            assert not await second.renew_lock(key, "not-the-token", 10)
            assert await first.renew_lock(key, token, 10)
            await second.release_lock(key, "not-the-token")
            assert await first.lock_holder(key) == token
            await first.release_lock(key, token)
            assert await first.lock_holder(key) is None
            taken = await second.acquire_lock(key, 10)
            assert taken and taken != token

        key = Keys("orthanc").lock("1.2.3.99", "4.5")
        old = await first.acquire_lock(key, 1.0)
        assert old
        for _ in range(5):  # 1.5 s: past the first expiry only because renewals work
            await asyncio.sleep(0.3)  # a stall of up to 0.7 s on a loaded machine still renews
            assert await first.renew_lock(key, old, 1.0)
        await asyncio.sleep(1.5)
        assert await first.lock_holder(key) is None  # expired
        new = await second.acquire_lock(key, 10)
        assert new and new != old
        assert not await first.renew_lock(key, old, 10)
        await first.release_lock(key, old)
        assert await second.lock_holder(key) == new
    finally:
        await first.close()
        await second.close()


async def test_event_logs_are_polled_across_clients(empty_cluster: RedisCluster) -> None:
    writer = RedisBackend(empty_cluster.url, cluster=True)
    reader = RedisBackend(empty_cluster.url, cluster=True)
    keys = Keys("orthanc")
    try:
        log_key = keys.events("1.2.3.4", "tok")
        assert await reader.read_events(log_key, 0) == []
        for event in ("i:1", "i:2", "d"):
            await writer.append_event(log_key, event, 30)
        assert await reader.read_events(log_key, 0) == ["i:1", "i:2", "d"]
        assert await reader.read_events(log_key, 2) == ["d"]
        assert await reader.wait_events(log_key, 1, 5) == ["i:2", "d"]

        started = time.monotonic()
        assert await reader.wait_events(keys.events("1.2.3.5", "none"), 0, 0.3) == []
        assert 0.25 <= time.monotonic() - started < 2.0

        later_key = keys.events("1.2.3.6", "tok", "7.8")

        async def append_later() -> None:
            await asyncio.sleep(0.3)
            await writer.append_event(later_key, "i:9", 30)

        task = asyncio.create_task(append_later())
        started = time.monotonic()
        waited = await asyncio.gather(*(reader.wait_events(later_key, 0, 10) for _ in range(3)))
        await task
        assert waited == [["i:9"]] * 3
        assert time.monotonic() - started < 2.0  # woken by polling, not timed out
        assert reader._listener is None  # no pub/sub on a cluster
        assert reader._waiters == {}

        short_key = keys.events("1.2.3.7", "tok")
        await writer.append_event(short_key, "i:1", 0.15)
        await asyncio.sleep(0.3)
        assert await reader.read_events(short_key, 0) == []
    finally:
        await writer.close()
        await reader.close()


async def test_unreachable_cluster_is_cache_unavailable() -> None:
    cache = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", cluster=True, socket_timeout=0.5)
    try:
        assert not await cache.ping()
        with pytest.raises(CacheUnavailable):
            await cache.get("dwg:x")
        with pytest.raises(CacheUnavailable):
            await cache.acquire_lock("dwg:lock:{x}", 1)
        with pytest.raises(CacheUnavailable):
            await cache.stats()
    finally:
        await cache.close()


# hash tags -----------------------------------------------------------------------------------


def test_every_key_of_a_series_shares_one_slot_and_series_spread(cluster: RedisCluster) -> None:
    keys = Keys("orthanc")
    study = "1.2.826.0.1.3680043.8.498.1"
    slots: set[int] = set()
    for n in range(24):
        series = f"1.2.826.0.1.3680043.8.498.1.{n}"
        names = [
            keys.instance(series, "1.2.3.1"),
            keys.instance(series, "1.2.3.2"),
            keys.metadata(series, "1.2.3.1"),
            keys.series_index(series),
            keys.lock(series),
            keys.lock(series, "1.2.3.1"),
            keys.events(series, "abc"),
            keys.events(series, "abc", "1.2.3.1"),
        ]
        series_slots = {_keyslot(cluster, name) for name in names}
        assert len(series_slots) == 1, f"series {series} spans slots {series_slots}"
        slots |= series_slots
    assert len({_keyslot(cluster, keys.study_series(study, f"1.2.{n}")) for n in range(5)}) == 1
    owners = set()
    with redis.Redis(host=cluster.host, port=cluster.ports[0], socket_timeout=5) as client:
        ranges = client.execute_command("CLUSTER SLOTS")
    for start, end, primary, *_ in ranges:
        if any(start <= slot <= end for slot in slots):
            owners.add(int(primary[1]))
    assert len(slots) > 12 and owners == set(cluster.ports)  # spread over every primary


# end to end ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def series(sample_datasets: list[Dataset]) -> list[Dataset]:
    """The largest sample series."""
    by_series: dict[str, list[Dataset]] = {}
    for ds in sample_datasets:
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    return max(by_series.values(), key=len)


def _metric(gateway: GatewayServer, line_start: str) -> float:
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)
    )


def test_gateway_on_the_cluster_serves_a_second_retrieval_from_cache(
    orthanc: OrthancServer, empty_cluster: RedisCluster, series: list[Dataset]
) -> None:
    peer = peer_settings("orthanc", orthanc.ae_title, orthanc.host, orthanc.dicom_port)
    values: dict[str, Any] = {"ae_title": GATEWAY_AE, **redis_cache_settings(
        empty_cluster.url, cluster=True, admin=True, cache_retry_interval=0.3)}
    expected = sorted(str(d.SOPInstanceUID) for d in series)
    series_uid = str(series[0].SeriesInstanceUID)
    path = f"/studies/{series[0].StudyInstanceUID}/series/{series_uid}"
    with GatewayServer(gateway_settings(peer, **values)) as gateway, gateway.client() as http:
        assert sop_uids(http.get(path, headers={"Accept": MULTIPART_DICOM})) == expected
        assert _metric(gateway, "dimse_retrievals_total") == 1
        assert sop_uids(http.get(path, headers={"Accept": MULTIPART_DICOM})) == expected
        metadata = http.get(f"{path}/metadata")
        assert metadata.status_code == 200
        assert sorted(item["00080018"]["Value"][0] for item in metadata.json()) == expected
        frame = http.get(f"{path}/instances/{expected[0]}/frames/1", headers={"Accept": FRAMES})
        assert frame.status_code == 200 and len(frame.content) > 0
        assert _metric(gateway, "dimse_retrievals_total") == 1  # all from the cluster
        assert _metric(gateway, 'cache_hits_total{kind="series"}') >= 1
        assert _metric(gateway, "cache_backend_up") == 1

        series_keys = Keys("orthanc")
        tagged = [
            k
            for node in _keys_per_node(empty_cluster, "dwg:*")
            for k in node
            if f"{{{series_uid}}}" in k
        ]
        assert len(tagged) >= 2 * len(expected) + 1  # instances, metadata, index
        assert series_keys.series_index(series_uid) in tagged
        assert len({_keyslot(empty_cluster, k) for k in tagged}) == 1
        assert (
            sum(1 for node in _keys_per_node(empty_cluster, f"*{{{series_uid}}}*") if node) == 1
        )  # all on one node

        stats = httpx.get(f"{gateway.url}/admin/cache/stats", timeout=10, headers=ADMIN_AUTH)
        assert stats.status_code == 200
        body = stats.json()
        assert body["backend"] == "redis cluster" and body["healthy"] is True
        assert body["keys"] >= len(tagged)
        assert body["fills_in_progress"] == 0

        cleared = httpx.post(f"{gateway.url}/admin/cache/clear", timeout=10, headers=ADMIN_AUTH)
        assert cleared.status_code == 200 and cleared.json()["removed"] >= len(tagged)
        assert _keys_per_node(empty_cluster, "dwg:*") == [set(), set(), set()]
        assert sop_uids(http.get(path, headers={"Accept": MULTIPART_DICOM})) == expected
        assert _metric(gateway, "dimse_retrievals_total") == 2  # cleared: fetched again
