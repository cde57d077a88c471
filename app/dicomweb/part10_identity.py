"""Which instance and which series a received Part-10 byte string is: walked element by element
where the transfer syntax allows (microseconds, see ``integrity``), else read with pydicom
(header only). Used to admit an instance into the cache and to place it in its series."""

from __future__ import annotations

import io
import logging

from pydicom import dcmread

from app.dicomweb.integrity import Malformed, top_level_text, walk_part10
from app.dicomweb.tags import SERIES_INSTANCE_UID

log = logging.getLogger(__name__)


def verify_instance(data: bytes, transfer_syntax: str, sop_instance_uid: str) -> bool:
    """The bytes are a complete, well-formed instance, and the one its C-STORE said it was."""
    try:
        walked = walk_part10(data, transfer_syntax)
    except Malformed as exc:
        log.warning("instance %s is malformed: %s", sop_instance_uid, exc)
        return False
    if walked is not None:
        return walked == sop_instance_uid
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:
        return False
    return str(ds.get("SOPInstanceUID", "")) == sop_instance_uid


def series_uid_of(data: bytes, transfer_syntax: str) -> str:
    """The instance's SeriesInstanceUID ("" when it has none or cannot be read)."""
    try:
        walked = top_level_text(data, transfer_syntax, SERIES_INSTANCE_UID)
    except Malformed:
        walked = None
    if walked:
        return walked
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True,
                     specific_tags=["SeriesInstanceUID"])
    except Exception:
        return ""
    return str(ds.get("SeriesInstanceUID", ""))
