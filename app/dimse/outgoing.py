"""What the gateway sends by C-STORE (PS3.4 B.2, PS3.7 9.1.1), whichever DIMSE engine sends
it: the instance as the client sent it, the outcome, and the presentation contexts a store
proposes (one per SOP class and transfer syntax: the data set is never re-encoded)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from app.dicomweb.sop_classes import Verification
from app.dicomweb.transfer_syntax import EXPLICIT_VR_LITTLE_ENDIAN

MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation contexts per association
VERIFICATION = str(Verification)

# C-STORE statuses the gateway answers for itself (PS3.4 B.2.3, PS3.7 C), when the PACS did not
# accept a presentation context for the instance: abstract syntax or transfer syntax refused.
SOP_CLASS_NOT_SUPPORTED = 0x0122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
ABSTRACT_SYNTAX_REJECTED = 3  # A-ASSOCIATE-AC presentation context result (PS3.8 9.3.3.2)


@dataclass(frozen=True, slots=True)
class OutgoingInstance:
    """A Part-10 instance to C-STORE: its bytes as received, the offset where its data set
    starts (after the File Meta), and what the C-STORE-RQ and its context name."""

    data: bytes
    dataset_offset: int
    sop_class: str
    sop_instance: str
    transfer_syntax: str

    @property
    def dataset(self) -> memoryview:
        """The data set, in ``transfer_syntax``, without a copy."""
        return memoryview(self.data)[self.dataset_offset:]


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """A C-STORE outcome: the Status of the C-STORE-RSP (or of the gateway, when no context
    could carry the instance) and the PACS's Error Comment, if any."""

    status: int
    comment: str | None = None


def refused_context_status(accepted_abstract: bool, result: int | None) -> int:
    """The status for an instance no accepted context can carry: 0x0122 when the PACS refused
    the SOP class, 0xC122 when it took the class only in other transfer syntaxes."""
    if accepted_abstract or result not in (None, ABSTRACT_SYNTAX_REJECTED):
        return TRANSFER_SYNTAX_NOT_SUPPORTED
    return SOP_CLASS_NOT_SUPPORTED


class StoreContexts:
    """The (SOP class, transfer syntax) pairs one STOW-RS request has needed so far, proposed
    together (after Verification, which every PACS accepts, so that an association is made
    even when the PACS refuses every storage context and the refusal can be reported per
    instance): the next instances of any class seen reuse the same association.

    Each class is also proposed in Explicit VR Little Endian, though never sent in it unless
    an instance is: some PACS (DCMTK's) refuse a context whose transfer syntax they lack as
    "abstract syntax not supported", and only this second context tells 0xC122 (transfer
    syntax not supported) from 0x0122 (SOP class not supported)."""

    def __init__(self) -> None:
        self._pairs: list[tuple[str, str]] = []

    def need(self, instance: OutgoingInstance) -> bool:
        """Add the instance's pair; True when it was new (a new association is needed)."""
        pair = (instance.sop_class, instance.transfer_syntax)
        if pair in self._pairs:
            return False
        self._pairs.append(pair)
        if len(self.proposed()) + 1 > MAX_CONTEXTS:  # Verification is the +1
            self._pairs = [pair]
        return True

    def pairs(self) -> list[tuple[str, str]]:
        """Every pair needed so far, in the order first needed."""
        return list(self._pairs)

    def proposed(self) -> list[tuple[str, str]]:
        """The pairs to propose: those needed, then Explicit VR Little Endian for each class
        not needed in it."""
        probes = [(sop, EXPLICIT_VR_LITTLE_ENDIAN) for sop in dict.fromkeys(s for s, _ in
                                                                          self._pairs)]
        return self._pairs + [p for p in probes if p not in self._pairs]


class StoreSession(Protocol):
    """C-STOREs of one STOW-RS request, one instance at a time, on as few associations as the
    engine can manage; ``async with`` closes (or returns) what it holds."""

    async def store(self, instance: OutgoingInstance) -> StoreStatus:
        """C-STORE one instance; GatewayError when the PACS could not be asked."""
        ...

    async def __aenter__(self) -> StoreSession: ...

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None: ...


def pairs_text(pairs: Iterable[tuple[str, str]]) -> str:
    """A short description of proposed contexts, for logs."""
    return ", ".join(f"{sop}/{ts}" for sop, ts in pairs)
