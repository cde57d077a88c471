"""Building C-FIND request identifiers (PS3.4 C.4.1.1.3) from matching and return keys."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from app.dicomweb.attributes import QueryLevel
from app.dicomweb.search import (
    AttributePath,
    MatchKey,
    dimse_value,
    private_creator_of,
    private_vr,
    vr_of,
)
from app.dicomweb.tags import SPECIFIC_CHARACTER_SET


def _is_ascii(value: str) -> bool:
    return all(ord(ch) < 128 for ch in value)


def _container_for(ds: Dataset, path: AttributePath) -> Dataset:
    """The dataset that holds path.tag, creating one-item sequences along the way (C.2.2.2.6)."""
    current = ds
    for tag in path.tags[:-1]:
        if tag not in current or not current[tag].value:
            current.add_new(tag, "SQ", Sequence([Dataset()]))
        current = current[tag].value[0]
    return current


def _return_key_vr(holder: Dataset, tag: int) -> str:
    """The VR of an empty return key; a private one's from the value of its Private Creator
    (a matching key, already in ``holder``), else UN."""
    creator_tag = private_creator_of(tag)
    if creator_tag is None:
        return vr_of(tag)
    creator = holder.get(creator_tag)
    return private_vr(tag, str(creator.value) if creator is not None and creator.value else None)


def build_identifier(
    level: QueryLevel,
    *,
    unique_keys: Mapping[int, str | tuple[str, ...]] = {},  # noqa: B006 - read-only
    matches: Iterable[MatchKey] = (),
    return_keys: Iterable[AttributePath | int] = (),
    character_set: str = "ISO_IR 192",
) -> Dataset:
    """A Study Root C-FIND identifier at ``level``.

    Return keys go in empty (universal matching); matching keys carry their values, converted
    to their VR (numbers for US, SS, UL, SL, FL, FD..., bytes for UN); unique keys
    from the resource path are single values, or UID lists. SpecificCharacterSet is sent only when
    a value needs it (PS3.4 C.4.1.1.3.1), as ``character_set``.
    """
    ds = Dataset()
    ds.QueryRetrieveLevel = level.value
    non_ascii = False
    for match in matches:
        holder = _container_for(ds, match.path)
        if match.is_universal:
            if match.path.tag not in holder:
                holder.add_new(match.path.tag, match.vr, Sequence([]) if match.vr == "SQ" else None)
            continue
        converted = [dimse_value(match.vr, v) for v in match.values]
        holder.add_new(match.path.tag, match.vr, converted if len(converted) > 1 else converted[0])
        non_ascii = non_ascii or not all(_is_ascii(v) for v in match.values)
    for key in return_keys:
        path = key if isinstance(key, AttributePath) else AttributePath((key,))
        if path.tag == SPECIFIC_CHARACTER_SET:
            continue
        holder = _container_for(ds, path)
        if path.tag not in holder:
            vr = _return_key_vr(holder, path.tag)
            holder.add_new(path.tag, vr, Sequence([]) if vr == "SQ" else None)
    for tag, uid in unique_keys.items():
        ds.add_new(
            tag,
            "UI",
            list(uid)
            if isinstance(uid, tuple) and len(uid) > 1
            else (uid[0] if isinstance(uid, tuple) else uid),
        )
    if non_ascii:
        ds.SpecificCharacterSet = character_set
    return ds
