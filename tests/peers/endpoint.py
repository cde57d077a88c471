"""Where a PACS peer listens, as a plain value that tests and benchmarks pass around."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PacsEndpoint:
    """A DIMSE peer: which software (``kind``), its AE title and its TCP address."""

    kind: str
    ae_title: str
    host: str
    port: int
