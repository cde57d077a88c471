"""C-ECHO (PS3.4 A.4): the verification service, used by `dicomweb-gateway echo` and readiness."""

from __future__ import annotations

import time

from pynetdicom import AE, build_context

from app.dicomweb.sop_classes import Verification
from app.dimse.association import open_association
from app.errors import UpstreamError
from app.settings import PacsPeer


def c_echo(ae: AE, peer: PacsPeer) -> float:
    """Verify the peer answers; returns the round-trip time in seconds or raises a GatewayError."""
    start = time.monotonic()
    assoc = open_association(ae, peer, [build_context(Verification)])
    try:
        status = assoc.send_c_echo()
        if not status or int(status.get("Status", 0xFFFF)) != 0x0000:
            code = int(status.Status) if status and "Status" in status else None
            raise UpstreamError(
                f"PACS {peer.name} answered C-ECHO with status "
                + (f"0x{code:04X}" if code is not None else "none (timeout or abort)"),
                dimse_status=code,
            )
        return time.monotonic() - start
    finally:
        if assoc.is_established:
            assoc.release()
