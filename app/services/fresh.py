"""Instances a cache fill in this process has just verified and written, kept briefly so that
local readers of the fill get them directly instead of reading them back from the cache (a
round trip per instance with Redis). Bounded by bytes; the oldest go first."""

from __future__ import annotations

from collections import OrderedDict

from app.dimse.received import ReceivedInstance

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


class FreshInstances:
    """(series UID, SOP Instance UID) -> instance, for the newest ``max_bytes`` of fills."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], ReceivedInstance] = OrderedDict()
        self._bytes = 0

    def put(self, series_uid: str, item: ReceivedInstance) -> None:
        """Remember ``item``; instances larger than the whole budget are not kept."""
        size = len(item.data)
        if size > self._max_bytes:
            return
        key = (series_uid, item.sop_instance_uid)
        previous = self._items.pop(key, None)
        if previous is not None:
            self._bytes -= len(previous.data)
        self._items[key] = item
        self._bytes += size
        while self._bytes > self._max_bytes:
            _, oldest = self._items.popitem(last=False)
            self._bytes -= len(oldest.data)

    def get(self, series_uid: str, sop_instance_uid: str) -> ReceivedInstance | None:
        """The instance if a recent fill of this process has it."""
        return self._items.get((series_uid, sop_instance_uid))

    def forget(self, series_uid: str, sop_instance_uids: list[str]) -> None:
        """Drop instances a failed fill removed from the cache again."""
        for sop in sop_instance_uids:
            item = self._items.pop((series_uid, sop), None)
            if item is not None:
                self._bytes -= len(item.data)

    @property
    def size(self) -> int:
        """Bytes held."""
        return self._bytes
