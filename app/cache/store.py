"""What the gateway caches, and how it is keyed and encoded, on any CacheBackend.

- complete instances as received (Part-10 bytes with their transfer syntax);
- per-instance metadata (DICOM JSON whose BulkDataURIs were minted under a random token that
  stands for the base URL, stored with that token; each reader puts its own, validated, base
  URL in its place, JSON-escaped: the text is never searched for a client's URL);
- a per-series index (which instances exist, whether the series is complete);
- a study's series list (from a complete SERIES-level C-FIND) and a series' summary (instance
  count and SOP classes, kept once a retrieval delivered exactly that), so that a warm study
  costs no C-FIND; both go with the series index when it is evicted;
- QIDO-RS results without RetrieveURL (built per request from the UIDs), for a short TTL, and
  those of a coalesced search briefly, for the identical searches that waited for it.

Keys of one series share the Redis Cluster hash tag ``{series UID}``. A series is served from the
cache only when its index says complete AND every instance is still present: an evicted instance
means a refetch, never a short answer.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.cache.backend import CacheBackend
from app.dicomweb.integrity import part10_meta
from app.dicomweb.urls import fill_base_url

_INSTANCE_MAGIC = b"DWGI"  # instances cached by earlier versions (header + data), still read
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


def _encode_query(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def _decode_query(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    result: dict[str, Any] = json.loads(raw)
    return result


class MoveRelayKeys:
    """Key names of the C-MOVE relay (not per PACS): one C-MOVE's event log and the instances
    it names share the hash tag ``{originator:message id}``."""

    @staticmethod
    def log(originator: str, message_id: int) -> str:
        """The event log naming each instance published for that C-MOVE."""
        return f"dwg:mv:{{{originator.strip()}:{message_id}}}"

    @classmethod
    def instance(cls, originator: str, message_id: int, sop: str) -> str:
        """One published instance."""
        return f"{cls.log(originator, message_id)}:{sop}"

    @classmethod
    def message_id(cls, originator: str, message_id: int) -> str:
        """The lock that reserves a Message ID among all workers using one AE title."""
        return f"{cls.log(originator, message_id)}:id"


class Keys:
    """Key names for one PACS; series keys carry the ``{series}`` hash tag."""

    def __init__(self, peer: str) -> None:
        self._p = f"dwg:{peer}:"

    def instance(self, series: str, sop: str) -> str:
        return f"{self._p}i:{{{series}}}:{sop}"

    def metadata(self, series: str, sop: str) -> str:
        return f"{self._p}m:{{{series}}}:{sop}"

    def encoded_metadata(self, series: str, variant: str) -> str:
        """A series' whole metadata response as sent once (encoded for one base URL, content
        coding and content version, named by ``variant``)."""
        return f"{self._p}me:{{{series}}}:{variant}"

    def series_index(self, series: str) -> str:
        return f"{self._p}s:{{{series}}}"

    def study_series(self, study: str, series: str) -> str:
        """A marker that ``series`` of ``study`` is cached (one key each: no read-modify-write
        races when several series of a study are filled at once)."""
        return f"{self._p}st:{{{study}}}:{series}"

    def study_series_list(self, study: str) -> str:
        """The series a complete C-FIND listed for ``study`` (hash tag ``{study}``)."""
        return f"{self._p}sl:{{{study}}}"

    def summary(self, series: str) -> str:
        """A series' instance count and SOP classes (under the series' hash tag, so evicting
        the series removes it)."""
        return f"{self._p}sum:{{{series}}}"

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

    def query_generation(self) -> str:
        """A token that every search digest includes; a store replaces it, so no search
        answered before the store is reused after it."""
        return f"{self._p}qgen"

    def query_flight(self, digest: str) -> str:
        """The result of the latest coalesced run of a search (kept briefly for its followers)."""
        return f"{self._p}qf:{{{digest}}}"

    def query_lock(self, digest: str) -> str:
        return f"{self._p}qlock:{{{digest}}}"

    def query_events(self, digest: str, token: str) -> str:
        return f"{self._p}qev:{{{digest}}}:{token}"

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
        """Store an instance as its Part-10 bytes, as they are: its SOP class and transfer
        syntax are in its File Meta, so nothing is copied to add a header (the in-process
        backend keeps the very bytes object)."""
        return (await self.put_instances(series, [item], []))[0]

    async def put_instances(self, series: str, items: list[CachedInstance],
                            events: list[tuple[str, str, float]]) -> list[bool]:
        """Store several instances as ``put_instance`` does, then append ``events`` (log key,
        text, ttl), in one batch; whether each instance was stored. An instance whose File
        Meta disagrees with its SOP class or syntax would be read back wrong: not cached."""
        fits = [part10_meta(i.data) == (i.sop_class_uid, i.transfer_syntax) for i in items]
        values = [(self.keys.instance(series, i.sop_instance_uid), i.data, self._ttl)
                  for i, ok in zip(items, fits, strict=True) if ok]
        stored = iter(await self.backend.write_batch(values, events))
        return [ok and next(stored) for ok in fits]

    async def get_instance(self, series: str, sop: str) -> CachedInstance | None:
        blob = await self.backend.get(self.keys.instance(series, sop))
        if blob is None:
            return None
        meta = part10_meta(blob)
        if meta is not None:
            return CachedInstance(sop, meta[0], meta[1], blob)
        if not blob.startswith(_INSTANCE_MAGIC):  # entries of earlier versions
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

    async def put_metadata_many(self, items: list[tuple[str, str, bytes]], token: str) -> None:
        """Store (series, SOP instance, DICOM JSON) of several instances whose URLs were
        minted under the base ``token``, in one batch (one round trip to Redis)."""
        encoded = token.encode()
        head = _METADATA_MAGIC + bytes([len(encoded)]) + encoded
        await self.backend.write_batch(
            [(self.keys.metadata(series, sop), head + raw, self._ttl)
             for series, sop, raw in items], [])

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

    async def put_encoded_metadata(self, series: str, variant: str, body: bytes) -> None:
        """Keep a series' metadata response body as sent (e.g. compressed), for ``variant``."""
        await self.backend.set(self.keys.encoded_metadata(series, variant), body, self._ttl)

    async def get_encoded_metadata(self, series: str, variant: str) -> bytes | None:
        """The body kept for ``variant``, or None."""
        return await self.backend.get(self.keys.encoded_metadata(series, variant))

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

    async def series_bytes(self, series: str) -> int:
        """Bytes the cache holds for a series' instances (the lengths of their stored Part 10
        entries, asked of the backend without reading them); 0 when the series is not
        indexed."""
        index = await self.get_series_index(series)
        if index is None:
            return 0
        return sum(await self.backend.sizes(
            [self.keys.instance(series, sop) for sop, _, _ in index.instances]))

    # study series lists and series summaries ------------------------------------------------

    async def put_study_series(self, study: str, series: list[str]) -> None:
        """Remember the series a complete C-FIND listed for ``study``."""
        await self.backend.set(self.keys.study_series_list(study),
                               json.dumps(series).encode(), self._ttl)

    async def get_study_series(self, study: str) -> list[str] | None:
        """The cached series list of ``study``, or None."""
        raw = await self.backend.get(self.keys.study_series_list(study))
        if raw is None:
            return None
        value = json.loads(raw)
        return [str(v) for v in value] if isinstance(value, list) else None

    async def put_summary(self, series: str, count: int, classes: Iterable[str]) -> None:
        """Remember a series' instance count and SOP classes."""
        await self.backend.set(self.keys.summary(series),
                               json.dumps({"count": count, "classes": list(classes)}).encode(),
                               self._ttl)

    async def get_summary(self, series: str) -> tuple[int, tuple[str, ...]] | None:
        """A series' cached (instance count, SOP classes), or None."""
        raw = await self.backend.get(self.keys.summary(series))
        if raw is None:
            return None
        obj = json.loads(raw)
        return int(obj["count"]), tuple(str(c) for c in obj["classes"])

    # query results -------------------------------------------------------------------------

    async def query_generation(self) -> str:
        """The current query generation (empty until the first store)."""
        raw = await self.backend.get(self.keys.query_generation())
        return raw.decode() if raw is not None else ""

    async def new_query_generation(self) -> None:
        """Start a new query generation: searches cached or coalesced until now are not
        reused (they may miss instances just stored)."""
        await self.backend.set(self.keys.query_generation(), secrets.token_hex(8).encode(),
                               None)

    @staticmethod
    def query_digest(parts: Iterable[str]) -> str:
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    @property
    def query_ttl(self) -> float:
        """Seconds a search's results are reused for an identical search (0: not at all)."""
        return self._query_ttl

    async def put_query(self, digest: str, payload: dict[str, Any]) -> None:
        """Store a search's results (no RetrieveURL in them: it depends on the client)."""
        if self._query_ttl <= 0:
            return
        await self.backend.set(self.keys.query(digest), _encode_query(payload), self._query_ttl)

    async def get_query(self, digest: str) -> dict[str, Any] | None:
        if self._query_ttl <= 0:
            return None
        return _decode_query(await self.backend.get(self.keys.query(digest)))

    async def put_query_flight(self, digest: str, payload: dict[str, Any], ttl: float) -> bool:
        """Store the results of a coalesced search for the requests that waited for it (read
        only by them, whatever ``qido_cache_ttl`` is); False when the backend declined."""
        return await self.backend.set(self.keys.query_flight(digest), _encode_query(payload),
                                      ttl)

    async def get_query_flight(self, digest: str) -> dict[str, Any] | None:
        """The results of the latest coalesced run of a search, or None."""
        return _decode_query(await self.backend.get(self.keys.query_flight(digest)))

    # management ----------------------------------------------------------------------------

    async def evict_series(self, series: str) -> int:
        """Remove a series' entries, and the series list of its study (when its index says
        which study): the list is invalidated together with the series index."""
        index = await self.get_series_index(series)
        removed = await self.backend.delete_matching(self.keys.series_pattern(series))
        if index is not None:
            removed += await self.backend.delete(self.keys.study_series_list(index.study_uid))
        return removed

    async def forget_stored(self, study: str, series: str, sops: Iterable[str]) -> int:
        """What instances just stored into ``series`` make stale: the series index (the
        series is no longer known complete, so the next retrieval asks the PACS), its summary
        (count and classes), the study's series list (the series may be new), and any entry
        of the stored instances themselves (an instance stored again). A series' encoded
        metadata needs nothing: it is named by the series' content (the ETag). Fill locks and
        event logs are left alone (a fill in progress must not lose its lock)."""
        keys = [self.keys.series_index(series), self.keys.summary(series),
                self.keys.study_series_list(study)]
        for sop in sops:
            keys += [self.keys.instance(series, sop), self.keys.metadata(series, sop)]
        return await self.backend.delete(*keys)

    async def evict_study(self, study: str) -> int:
        """Remove every cached series of a study (those marked, and those its series list
        names) and the list itself."""
        markers = await self.backend.keys(self.keys.study_series_pattern(study))
        series = {marker.rsplit(":", 1)[1] for marker in markers}
        series.update(await self.get_study_series(study) or ())
        removed = 0
        for uid in sorted(series):
            removed += await self.backend.delete_matching(self.keys.series_pattern(uid))
        removed += await self.backend.delete(*markers, self.keys.study_series_list(study))
        return removed
