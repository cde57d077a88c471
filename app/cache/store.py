"""What the gateway caches, and how it is keyed and encoded, on any CacheBackend.

- complete instances as received (Part-10 bytes with their transfer syntax);
- per-instance metadata (DICOM JSON whose BulkDataURIs were minted under a random token that
  stands for the base URL, stored with that token; each reader puts its own, validated, base
  URL in its place, JSON-escaped: the text is never searched for a client's URL);
- a per-series index (which instances exist, whether the series is complete);
- QIDO-RS results without RetrieveURL (built per request from the UIDs), for a short TTL.

Keys of one series share the Redis Cluster hash tag ``{series UID}``. A series is served from the
cache only when its index says complete AND every instance is still present: an evicted instance
means a refetch, never a short answer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.cache.backend import CacheBackend
from app.dicomweb.urls import fill_base_url

_INSTANCE_MAGIC = b"DWGI"
_METADATA_MAGIC = b"DWG2"  # 2: SpecificCharacterSet kept; older entries are misses


@dataclass(frozen=True, slots=True)
class CachedInstance:
    """An instance from the cache: Part-10 bytes and their transfer syntax."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    data: bytes


@dataclass(frozen=True, slots=True)
class SeriesIndex:
    """The instances of a series the cache holds, in retrieval order."""

    study_uid: str
    series_uid: str
    complete: bool
    instances: tuple[tuple[str, str, str], ...]  # (sop instance uid, sop class uid, syntax)

    def encode(self) -> bytes:
        return json.dumps({"study": self.study_uid, "series": self.series_uid,
                           "complete": self.complete,
                           "instances": [list(i) for i in self.instances]}).encode()

    @classmethod
    def decode(cls, raw: bytes) -> SeriesIndex:
        obj = json.loads(raw)
        return cls(obj["study"], obj["series"], bool(obj["complete"]),
                   tuple(tuple(i) for i in obj["instances"]))  # type: ignore[misc]


class Keys:
    """Key names for one PACS; series keys carry the ``{series}`` hash tag."""

    def __init__(self, peer: str) -> None:
        self._p = f"dwg:{peer}:"

    def instance(self, series: str, sop: str) -> str:
        return f"{self._p}i:{{{series}}}:{sop}"

    def metadata(self, series: str, sop: str) -> str:
        return f"{self._p}m:{{{series}}}:{sop}"

    def series_index(self, series: str) -> str:
        return f"{self._p}s:{{{series}}}"

    def study_series(self, study: str, series: str) -> str:
        """A marker that ``series`` of ``study`` is cached (one key each: no read-modify-write
        races when several series of a study are filled at once)."""
        return f"{self._p}st:{{{study}}}:{series}"

    def study_series_pattern(self, study: str) -> str:
        return f"{self._p}st:{{{study}}}:*"

    def lock(self, series: str, sop: str | None = None) -> str:
        return f"{self._p}lock:{{{series}}}" + (f":{sop}" if sop else "")

    def events(self, series: str, token: str, sop: str | None = None) -> str:
        return f"{self._p}ev:{{{series}}}:" + (f"{sop}:" if sop else "") + token

    def series_pattern(self, series: str) -> str:
        return f"{self._p}*{{{series}}}*"

    def query(self, digest: str) -> str:
        return f"{self._p}q2:{digest}"  # q2: results without RetrieveURL

    def all_pattern(self) -> str:
        return f"{self._p}*"


class GatewayCache:
    """Typed access to cached instances, metadata, series indexes and query results."""

    def __init__(self, backend: CacheBackend, peer: str, *, ttl: float | None,
                 query_ttl: float) -> None:
        self.backend = backend
        self.keys = Keys(peer)
        self._ttl = ttl
        self._query_ttl = query_ttl

    # instances -----------------------------------------------------------------------------

    async def put_instance(self, series: str, item: CachedInstance) -> bool:
        ts = item.transfer_syntax.encode()
        cls = item.sop_class_uid.encode()
        blob = b"".join((_INSTANCE_MAGIC, bytes([len(ts)]), ts, bytes([len(cls)]), cls, item.data))
        return await self.backend.set(self.keys.instance(series, item.sop_instance_uid), blob,
                                      self._ttl)

    async def get_instance(self, series: str, sop: str) -> CachedInstance | None:
        blob = await self.backend.get(self.keys.instance(series, sop))
        if blob is None or not blob.startswith(_INSTANCE_MAGIC):
            return None
        at = len(_INSTANCE_MAGIC)
        ts_len = blob[at]
        ts = blob[at + 1:at + 1 + ts_len].decode()
        at += 1 + ts_len
        cls_len = blob[at]
        cls = blob[at + 1:at + 1 + cls_len].decode()
        return CachedInstance(sop, cls, ts, blob[at + 1 + cls_len:])

    async def has_instances(self, series: str, sops: Iterable[str]) -> bool:
        keys = [self.keys.instance(series, s) for s in sops]
        return await self.backend.exists(keys) == len(keys)

    # metadata ------------------------------------------------------------------------------

    async def put_metadata(self, series: str, sop: str, raw: bytes, token: str) -> None:
        """Store an instance's DICOM JSON whose URLs were minted under the base ``token``."""
        head = token.encode()
        await self.backend.set(self.keys.metadata(series, sop),
                               _METADATA_MAGIC + bytes([len(head)]) + head + raw, self._ttl)

    async def get_metadata(self, series: str, sops: list[str],
                           base_url: str) -> list[bytes | None]:
        """Each instance's DICOM JSON with ``base_url`` in its URLs (None where not cached)."""
        out: list[bytes | None] = []
        for blob in await self.backend.get_many([self.keys.metadata(series, s) for s in sops]):
            if blob is None or not blob.startswith(_METADATA_MAGIC):
                out.append(None)  # absent, or written by an older version: a miss
                continue
            at = len(_METADATA_MAGIC)
            token = blob[at + 1:at + 1 + blob[at]].decode()
            out.append(fill_base_url(blob[at + 1 + blob[at]:], token, base_url))
        return out

    # series index --------------------------------------------------------------------------

    async def put_series_index(self, index: SeriesIndex) -> None:
        await self.backend.set(self.keys.series_index(index.series_uid), index.encode(), self._ttl)
        await self.backend.set(self.keys.study_series(index.study_uid, index.series_uid), b"1",
                               self._ttl)

    async def get_series_index(self, series: str) -> SeriesIndex | None:
        raw = await self.backend.get(self.keys.series_index(series))
        return SeriesIndex.decode(raw) if raw is not None else None

    async def complete_series(self, series: str) -> SeriesIndex | None:
        """The index of a complete series whose every instance is still cached, else None."""
        index = await self.get_series_index(series)
        if index is None or not index.complete:
            return None
        if not await self.has_instances(series, [i[0] for i in index.instances]):
            return None
        return index

    # query results -------------------------------------------------------------------------

    @staticmethod
    def query_digest(parts: Iterable[str]) -> str:
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    async def put_query(self, digest: str, payload: dict[str, Any]) -> None:
        """Store a search's results (no RetrieveURL in them: it depends on the client)."""
        if self._query_ttl <= 0:
            return
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        await self.backend.set(self.keys.query(digest), text.encode(), self._query_ttl)

    async def get_query(self, digest: str) -> dict[str, Any] | None:
        if self._query_ttl <= 0:
            return None
        raw = await self.backend.get(self.keys.query(digest))
        if raw is None:
            return None
        result: dict[str, Any] = json.loads(raw)
        return result

    # management ----------------------------------------------------------------------------

    async def evict_series(self, series: str) -> int:
        return await self.backend.delete_matching(self.keys.series_pattern(series))

    async def evict_study(self, study: str) -> int:
        markers = await self.backend.keys(self.keys.study_series_pattern(study))
        removed = 0
        for marker in markers:
            removed += await self.evict_series(marker.rsplit(":", 1)[1])
        removed += await self.backend.delete(*markers)
        return removed
