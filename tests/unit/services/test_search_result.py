"""SearchResult: the two forms of a page of results, RetrieveURL per base URL, and the memo that
lets identical searches answered from one stored result share one encoded answer."""

from __future__ import annotations

import json

from pydicom.dataset import Dataset

from app.dicomweb.attributes import QueryLevel
from app.dicomweb.tags import SERIES_RELATED_INSTANCES, STUDY_INSTANCE_UID
from app.services.search_result import AnswerMemo, SearchResult


def study(uid: str, name: str = "Doe^Jane") -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = uid
    ds.PatientName = name
    ds.ModalitiesInStudy = ["CT", "SR"]
    ds.NumberOfStudyRelatedInstances = 3
    return ds


def stored_page(*uids: str) -> dict:
    """A page as the cache keeps it, through the JSON text it is stored as."""
    form = SearchResult([study(uid) for uid in uids], more=True, warnings=["w"]).stored_form()
    return json.loads(json.dumps(form))


def test_stored_form_has_no_retrieve_url_and_a_new_id_each_time() -> None:
    result = SearchResult([study("1.2.3")], more=False)
    first, second = result.stored_form(), result.stored_form()
    assert "00081190" not in first["results"][0]
    assert first["results"][0]["0020000D"] == {"vr": "UI", "Value": ["1.2.3"]}
    assert first["id"] != second["id"]


def test_a_stored_result_gets_retrieve_url_under_each_base_url() -> None:
    stored = stored_page("1.2.3", "1.2.4")
    here = SearchResult.from_stored(stored, QueryLevel.STUDY, "http://a.example/dicomweb")
    there = SearchResult.from_stored(stored, QueryLevel.STUDY, "https://b.example")
    assert [o["00081190"]["Value"][0] for o in json.loads(here.json_body())] == [
        "http://a.example/dicomweb/studies/1.2.3", "http://a.example/dicomweb/studies/1.2.4"]
    assert json.loads(there.json_body())[0]["00081190"]["Value"] == [
        "https://b.example/studies/1.2.3"]
    assert here.more and here.warnings == ["w"] and len(here) == 2
    # The stored form is left as it was: the next request builds its own URLs.
    assert "00081190" not in stored["results"][0]


def test_datasets_of_a_stored_result_carry_every_attribute_and_the_url() -> None:
    result = SearchResult.from_stored(stored_page("1.2.3"), QueryLevel.STUDY, "http://gw")
    ds = result.datasets[0]
    assert ds.PatientName == "Doe^Jane"
    assert list(ds.ModalitiesInStudy) == ["CT", "SR"]
    assert ds.RetrieveURL == "http://gw/studies/1.2.3"


def test_first_values_read_either_form() -> None:
    series = Dataset()
    series.StudyInstanceUID, series.SeriesInstanceUID = "1.2", "1.2.9"
    series.NumberOfSeriesRelatedInstances = 12
    bare = Dataset()
    found = SearchResult([series, bare])
    assert found.first_values(SERIES_RELATED_INSTANCES) == [12, None]
    stored = json.loads(json.dumps(found.stored_form()))
    again = SearchResult.from_stored(stored, QueryLevel.SERIES, "http://gw")
    assert again.first_values(SERIES_RELATED_INSTANCES) == [12, None]
    assert again.first_values(STUDY_INSTANCE_UID) == ["1.2", None]
    studies = SearchResult([study("1.2.3")])
    assert studies.first_values(0x00080061) == ["CT"]  # the first of a multi-valued one
    stored = json.loads(json.dumps(studies.stored_form()))
    assert SearchResult.from_stored(stored, QueryLevel.STUDY, "http://gw").first_values(
        0x00080061) == ["CT"]


def test_identical_answers_share_one_encoded_body_through_the_memo() -> None:
    memo = AnswerMemo()
    stored = stored_page("1.2.3")
    first = SearchResult.from_stored(stored, QueryLevel.STUDY, "http://gw", memo)
    second = SearchResult.from_stored(json.loads(json.dumps(stored)), QueryLevel.STUDY,
                                      "http://gw", memo)
    other_url = SearchResult.from_stored(stored, QueryLevel.STUDY, "http://other", memo)
    assert second.json_body() is first.json_body()  # built once, shared
    assert other_url.json_body() != first.json_body()
    # A new search of the PACS (a new id) never gets the old body, even with equal content.
    fresh = SearchResult.from_stored(stored_page("1.2.3"), QueryLevel.STUDY, "http://gw", memo)
    assert fresh.json_body() is not first.json_body()
    assert fresh.json_body() == first.json_body()


def test_a_stored_result_without_an_id_is_answered_but_not_memoised() -> None:
    memo = AnswerMemo()
    stored = stored_page("1.2.3")
    del stored["id"]  # as written before answers had ids
    first = SearchResult.from_stored(stored, QueryLevel.STUDY, "http://gw", memo)
    second = SearchResult.from_stored(stored, QueryLevel.STUDY, "http://gw", memo)
    assert first.json_body() == second.json_body()
    assert first.json_body() is not second.json_body()


def test_the_memo_is_bounded_in_entries_and_bytes() -> None:
    memo = AnswerMemo(max_entries=2, max_bytes=1000)
    memo.put(("a", "u", ""), b"x" * 100)
    memo.put(("b", "u", ""), b"y" * 100)
    assert memo.get(("a", "u", "")) is not None  # now the most recently used
    memo.put(("c", "u", ""), b"z" * 100)
    assert memo.get(("b", "u", "")) is None and memo.get(("a", "u", "")) is not None
    memo.put(("big", "u", ""), b"q" * 400)  # more than a quarter of the bytes: not kept
    assert memo.get(("big", "u", "")) is None
    by_bytes = AnswerMemo(max_entries=10, max_bytes=1000)
    for key in "defg":
        by_bytes.put((key, "u", ""), key.encode() * 240)  # 960 bytes: all kept
    assert all(by_bytes.get((k, "u", "")) is not None for k in "defg")
    by_bytes.put(("h", "u", ""), b"h" * 240)  # 1200: the least recently used goes
    assert by_bytes.get(("d", "u", "")) is None
    assert all(by_bytes.get((k, "u", "")) is not None for k in "efgh")


async def test_an_encoded_body_is_made_once_per_coding_and_base_url() -> None:
    memo = AnswerMemo()
    stored = stored_page("1.2.3", "1.2.4")
    made: list[str] = []

    def encoder(coding: str):
        async def encode(body: bytes) -> bytes:
            made.append(coding)
            return coding.encode() + b":" + body
        return encode

    bodies = [await SearchResult.from_stored(stored, QueryLevel.STUDY, "http://gw", memo)
              .encoded_body("gzip", encoder("gzip")) for _ in range(3)]
    assert made == ["gzip"] and bodies[0] is bodies[1] is bodies[2]
    assert bodies[0].startswith(b"gzip:[") and b"http://gw/studies/1.2.4" in bodies[0]
    other = await SearchResult.from_stored(stored, QueryLevel.STUDY, "http://gw", memo
                                           ).encoded_body("br", encoder("br"))
    assert made == ["gzip", "br"] and other.startswith(b"br:")
    # Without a memo (no cache), each result encodes its own.
    alone = SearchResult([study("1.2.3")])
    assert (await alone.encoded_body("gzip", encoder("gzip"))).startswith(b"gzip:[")
    assert made == ["gzip", "br", "gzip"]
