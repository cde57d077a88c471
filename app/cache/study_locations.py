"""Which federated PACS hold a study: a bounded in-process map from StudyInstanceUID to PACS
names, mirrored into the shared cache backend (Redis) so that other workers and replicas know
where a study a client found through one of them can be retrieved from.

Only names are kept, never patient data; an entry expires with ``ttl`` in the shared backend and
is pushed out of the local map, least recently used first, past ``size`` entries.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from app.cache.backend import CacheBackend

log = logging.getLogger(__name__)
KEY_PREFIX = "dwg:fed:loc:"


def location_key(study_uid: str) -> str:
    """The shared-cache key of a study's PACS names (one key per study, any Cluster slot)."""
    return f"{KEY_PREFIX}{study_uid}"


class StudyLocations:
    """StudyInstanceUID -> the names of the PACS known to hold it, in preference order."""

    def __init__(self, order: Sequence[str], size: int, backend: CacheBackend | None = None,
                 ttl: float = 24 * 3600.0) -> None:
        self._rank = {name: i for i, name in enumerate(order)}
        self._size = size
        self._backend = backend
        self._ttl = ttl
        self._local: OrderedDict[str, tuple[str, ...]] = OrderedDict()

    def _ordered(self, names: Iterable[str]) -> tuple[str, ...]:
        """``names`` known here, without repeats, in preference order."""
        return tuple(sorted({n for n in names if n in self._rank}, key=self._rank.__getitem__))

    async def known(self, study_uid: str) -> tuple[str, ...]:
        """The PACS remembered for ``study_uid`` (here, else in the shared backend); may be
        empty."""
        names = self._local.get(study_uid)
        if names is not None:
            self._local.move_to_end(study_uid)
            return names
        if self._backend is None:
            return ()
        try:
            raw = await self._backend.get(location_key(study_uid))
        except Exception as exc:  # a cache outage only costs a C-FIND per PACS
            log.warning("study locations: shared cache unavailable: %s", exc)
            return ()
        if not raw:
            return ()
        names = self._ordered(raw.decode("ascii", "replace").split(","))
        self._keep(study_uid, names)
        return names

    async def remember(self, found: dict[str, set[str]], unsure: Iterable[str] = ()) -> None:
        """Record ``found`` (study UID -> PACS that answered holding it); PACS in ``unsure``
        did not answer, so what was known of them is kept."""
        unsure = set(unsure)
        writes: list[tuple[str, bytes, float | None]] = []
        for study_uid, names in found.items():
            kept = {n for n in await self.known(study_uid) if n in unsure} if unsure else set()
            merged = self._ordered(names | kept)
            if merged == self._local.get(study_uid):
                continue
            self._keep(study_uid, merged)
            writes.append((location_key(study_uid), ",".join(merged).encode(), self._ttl))
        if self._backend is not None and writes:
            try:
                await self._backend.write_batch(writes, [])
            except Exception as exc:
                log.warning("study locations: shared cache unavailable: %s", exc)

    async def forget(self, study_uid: str, name: str) -> None:
        """``name`` turned out not to hold ``study_uid`` (it answered 404): drop it."""
        names = await self.known(study_uid)
        if name not in names:
            return
        await self._replace(study_uid, tuple(n for n in names if n != name))

    async def _replace(self, study_uid: str, names: tuple[str, ...]) -> None:
        self._keep(study_uid, names)
        if self._backend is None:
            return
        try:
            if names:
                await self._backend.set(location_key(study_uid), ",".join(names).encode(),
                                        self._ttl)
            else:
                await self._backend.delete(location_key(study_uid))
        except Exception as exc:
            log.warning("study locations: shared cache unavailable: %s", exc)

    def _keep(self, study_uid: str, names: tuple[str, ...]) -> None:
        """Put an entry in the local map, evicting the least recently used past ``size``."""
        if not names:
            self._local.pop(study_uid, None)
            return
        self._local[study_uid] = names
        self._local.move_to_end(study_uid)
        while len(self._local) > self._size:
            self._local.popitem(last=False)

    def __len__(self) -> int:
        return len(self._local)
