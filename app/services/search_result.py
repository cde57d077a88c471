"""A page of QIDO-RS results, held in whichever form it was made in (pydicom Datasets from the
PACS, or stored DICOM JSON from the cache), with the other form and the encoded JSON answer built
only when asked for. Identical searches answered from one stored result share one encoded answer
(``AnswerMemo``): building 100 studies' DICOM JSON costs tens of milliseconds of event-loop time,
which ten identical concurrent searches would otherwise pay one after another.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from app.dicomweb.attributes import QueryLevel
from app.dicomweb.dicomjson import dataset_to_json, encode_json, json_to_dataset
from app.dicomweb.tags import (
    RETRIEVE_URL,
    SERIES_INSTANCE_UID,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
)
from app.dicomweb.urls import instance_url, series_url, study_url

_STUDY, _SERIES, _SOP = (f"{t:08X}" for t in (STUDY_INSTANCE_UID, SERIES_INSTANCE_UID,
                                              SOP_INSTANCE_UID))
_RETRIEVE_URL = f"{RETRIEVE_URL:08X}"


MemoKey = tuple[str, str, str]
"""(stored result id, base URL, content coding or "" for the plain body)."""


class AnswerMemo:
    """Encoded JSON answers by stored result id, base URL and content coding, least recently
    used first out; bounded in entries and bytes. A stored result's id is new for every search
    the PACS answered, so an entry is only ever served to a request that obtained that same
    result."""

    def __init__(self, max_entries: int = 64, max_bytes: int = 64 << 20) -> None:
        self._entries: OrderedDict[MemoKey, bytes] = OrderedDict()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0

    def get(self, key: MemoKey) -> bytes | None:
        body = self._entries.get(key)
        if body is not None:
            self._entries.move_to_end(key)
        return body

    def put(self, key: MemoKey, body: bytes) -> None:
        if len(body) > self._max_bytes // 4 or key in self._entries:
            return
        self._entries[key] = body
        self._bytes += len(body)
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= len(dropped)


class SearchResult:
    """One page of results, whether more remain, and warnings for the Warning header.

    Made from Datasets (as a search found them) or from a stored result (``from_stored``);
    ``datasets``, ``objects`` (DICOM JSON) and ``json_body`` are each built once, on first use.
    Callers own the Datasets they are given; a result is not shared between requests, but the
    stored form it was made from may be, so it is only read."""

    def __init__(self, datasets: list[Dataset] | None = None, more: bool = False,
                 warnings: list[str] | None = None) -> None:
        self.more = more
        self.warnings: list[str] = list(warnings or [])
        self._datasets = datasets
        self._objects: list[dict[str, Any]] | None = None
        self._stored: list[dict[str, Any]] = []
        self._level: QueryLevel | None = None
        self._base_url = ""
        self._memo: AnswerMemo | None = None
        self._answer: tuple[str, str] | None = None  # (stored result id, base URL)
        self._body: bytes | None = None

    @classmethod
    def from_stored(cls, stored: dict[str, Any], level: QueryLevel, base_url: str,
                    memo: AnswerMemo | None = None) -> SearchResult:
        """A stored result (``stored_form``) answered under this request's ``base_url``."""
        result = cls(None, bool(stored["more"]), list(stored["warnings"]))
        result._stored = stored["results"]
        result._level = level
        result._base_url = base_url
        answer_id = stored.get("id")
        if memo is not None and isinstance(answer_id, str):
            result._memo, result._answer = memo, (answer_id, base_url)
        return result

    def stored_form(self) -> dict[str, Any]:
        """This result as the cache keeps it: DICOM JSON without RetrieveURL (it depends on
        the client's base URL), whether more remain, warnings, a new id for its answers and
        when it was made (wall-clock seconds, comparable across replicas)."""
        return {"results": [dataset_to_json(ds) for ds in self.datasets], "more": self.more,
                "warnings": self.warnings, "id": secrets.token_hex(12), "at": time.time()}

    def __len__(self) -> int:
        if self._datasets is not None:
            return len(self._datasets)
        if self._objects is not None:
            return len(self._objects)
        return len(self._stored)

    @property
    def datasets(self) -> list[Dataset]:
        """The results as Datasets."""
        if self._datasets is None:
            self._datasets = [json_to_dataset(obj) for obj in self.objects]
        return self._datasets

    @property
    def objects(self) -> list[dict[str, Any]]:
        """The results as DICOM JSON objects (with RetrieveURL when made from a stored result)."""
        if self._objects is None:
            if self._datasets is not None:
                self._objects = [dataset_to_json(ds) for ds in self._datasets]
            else:
                assert self._level is not None
                self._objects = [_with_url(obj, self._level, self._base_url)
                                 for obj in self._stored]
        return self._objects

    def json_body(self) -> bytes:
        """The results as an ``application/dicom+json`` body, shared through the memo by
        every request answered from the same stored result under the same base URL."""
        if self._body is None:
            self._body = self._remembered("")
        if self._body is None:
            self._body = encode_json(self.objects)
            self._remember("", self._body)
        return self._body

    async def encoded_body(self, coding: str,
                           encode: Callable[[bytes], Awaitable[bytes]]) -> bytes:
        """The JSON body in content coding ``coding``, made by ``encode`` and shared like
        ``json_body`` (ten identical searches compress their answer once)."""
        body = self._remembered(coding)
        if body is None:
            body = await encode(self.json_body())
            self._remember(coding, body)
        return body

    def _remembered(self, variant: str) -> bytes | None:
        if self._memo is None or self._answer is None:
            return None
        return self._memo.get((*self._answer, variant))

    def _remember(self, variant: str, body: bytes) -> None:
        if self._memo is not None and self._answer is not None:
            self._memo.put((*self._answer, variant), body)

    def first_values(self, tag: int) -> list[Any]:
        """The first value of attribute ``tag`` in each result (None where it has none)."""
        if self._datasets is not None:
            values: list[Any] = []
            for ds in self._datasets:
                element = ds.get(tag)
                value = element.value if element is not None else None
                if isinstance(value, MultiValue | list | tuple):
                    value = value[0] if value else None
                values.append(value if value not in ("", None) else None)
            return values
        source = self._objects if self._objects is not None else self._stored
        key = f"{tag:08X}"
        return [(obj.get(key) or {}).get("Value", [None])[0] for obj in source]


def with_retrieve_url(ds: Dataset, level: QueryLevel, base_url: str) -> Dataset:
    """Set RetrieveURL (0008,1190) of a result Dataset from its UIDs under ``base_url``."""
    url = _retrieve_url(level, base_url, _text(ds.get(STUDY_INSTANCE_UID)),
                        _text(ds.get(SERIES_INSTANCE_UID)), _text(ds.get(SOP_INSTANCE_UID)))
    if url:
        ds.RetrieveURL = url
    return ds


def _with_url(obj: dict[str, Any], level: QueryLevel, base_url: str) -> dict[str, Any]:
    """A stored DICOM JSON result with RetrieveURL under ``base_url`` (a new dict)."""
    url = _retrieve_url(level, base_url, _json_text(obj, _STUDY), _json_text(obj, _SERIES),
                        _json_text(obj, _SOP))
    return {**obj, _RETRIEVE_URL: {"vr": "UR", "Value": [url]}} if url else obj


def _retrieve_url(level: QueryLevel, base_url: str, study: str | None, series: str | None,
                  sop: str | None) -> str | None:
    if level == QueryLevel.STUDY and study:
        return study_url(base_url, study)
    if level == QueryLevel.SERIES and study and series:
        return series_url(base_url, study, series)
    if level == QueryLevel.IMAGE and study and series and sop:
        return instance_url(base_url, study, series, sop)
    return None


def _text(element: Any) -> str | None:
    value = element.value if element is not None else None
    return str(value) if value else None


def _json_text(obj: dict[str, Any], key: str) -> str | None:
    values = (obj.get(key) or {}).get("Value")
    return str(values[0]) if values and values[0] else None
