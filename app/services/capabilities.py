"""What one PACS was found to support, learned from its own answers and forgotten after the
peer's ``capability_ttl``, so that a PACS reconfigured (or replaced) is asked again.

Today this holds whether the PACS refuses C-GET (``retrieve_method = "auto"``): learned when a
C-GET association has its Query/Retrieve GET context rejected, or when a C-GET is refused with a
Refused/Error status before any sub-operation and a C-MOVE then delivers. While it is known, the
retrievals of that PACS go straight to C-MOVE without trying C-GET again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.metrics import Metrics
from app.settings import PacsPeer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Learned:
    """One learned fact: its value, why it is believed, and when it was learned (monotonic)."""

    value: bool
    reason: str
    at: float


class PeerCapabilities:
    """The learned capabilities of one PACS (one instance per PACS and process)."""

    def __init__(self, peer: PacsPeer, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._peer = peer
        self._metrics = metrics
        self._clock = clock
        self._get: Learned | None = None

    def _fresh(self, fact: Learned | None) -> Learned | None:
        """``fact`` unless it is older than the peer's capability_ttl."""
        if fact is None or self._clock() - fact.at >= self._peer.capability_ttl:
            return None
        return fact

    @property
    def get_refused(self) -> bool:
        """True while the PACS is known (and not longer than capability_ttl) to refuse C-GET."""
        fact = self._fresh(self._get)
        return fact is not None and not fact.value

    @property
    def get_refusal_reason(self) -> str | None:
        """Why the PACS is believed to refuse C-GET (None when it is not)."""
        fact = self._fresh(self._get)
        return fact.reason if fact is not None and not fact.value else None

    def learn_get_refused(self, reason: str) -> None:
        """Remember that the PACS refuses C-GET; logged (WARNING) once per learning, that is at
        most once per capability_ttl while the PACS keeps refusing."""
        self._metrics.inc("dimse_capability_learned_total", peer=self._peer.name,
                          capability="c-get", value="refused")
        if not self.get_refused:
            log.warning("PACS %s refuses C-GET (%s): retrieving from it by C-MOVE to the "
                        "gateway's storage SCP; C-GET is tried again in %g s (capability_ttl)",
                        self._peer.name, reason, self._peer.capability_ttl)
        self._get = Learned(False, reason, self._clock())

    def learn_get_accepted(self) -> None:
        """Remember that a C-GET delivered instances."""
        fact = self._fresh(self._get)
        if fact is not None and fact.value:
            return  # known already: keep the time it was learned, so it is re-checked on time
        if self._get is not None and not self._get.value:
            log.info("PACS %s accepts C-GET again", self._peer.name)
        self._get = Learned(True, "a C-GET delivered instances", self._clock())
