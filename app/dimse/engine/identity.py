"""How the asyncio engine identifies itself (PS3.7 D.3.3.2, D.3.3.3; PS3.10 7.1)."""

from __future__ import annotations

from pydicom.uid import generate_uid

IMPLEMENTATION_CLASS_UID = generate_uid(entropy_srcs=["dicomweb-gateway asyncio DIMSE engine"])
IMPLEMENTATION_VERSION = "DWG_ASYNC_1"
