"""Requests classified by method and path alone (app.api.access): the rule authorization and the
audit trail share, so that a route added later (STOW-RS) is covered by its method."""

from __future__ import annotations

import pytest

from app.api.access import classify

S, SE, INST = "1.2.3", "1.2.3.4", "1.2.3.4.5"


@pytest.mark.parametrize(("method", "path", "action"), [
    ("GET", "/dicomweb/studies", "search"),
    ("HEAD", "/dicomweb/series", "search"),
    ("GET", "/dicomweb/instances", "search"),
    ("GET", f"/dicomweb/studies/{S}/series", "search"),
    ("GET", f"/dicomweb/studies/{S}/instances", "search"),
    ("GET", f"/dicomweb/studies/{S}/series/{SE}/instances", "search"),
    ("GET", f"/dicomweb/studies/{S}", "retrieve"),
    ("GET", f"/dicomweb/studies/{S}/metadata", "retrieve"),
    ("GET", f"/dicomweb/studies/{S}/rendered", "retrieve"),
    ("GET", f"/dicomweb/studies/{S}/series/{SE}/instances/{INST}/frames/1", "retrieve"),
    ("GET", f"/dicomweb/studies/{S}/series/{SE}/instances/{INST}/bulkdata/7FE00010", "retrieve"),
    ("GET", f"/dicomweb/studies/{S}/thumbnail", "retrieve"),
    ("GET", "/wado", "retrieve"),
    ("GET", "/dicomweb/wado", "retrieve"),
    ("POST", "/dicomweb/studies", "store"),
    ("POST", f"/dicomweb/studies/{S}", "store"),
    ("PUT", f"/pacs/main/dicomweb/studies/{S}", "store"),
    ("DELETE", f"/dicomweb/studies/{S}", "store"),
    ("GET", "/admin/cache/stats", "admin"),
    ("POST", "/admin/prefetch", "admin"),
])
def test_actions(method: str, path: str, action: str) -> None:
    assert classify(method, path, "", "/dicomweb").action == action


@pytest.mark.parametrize(("method", "path", "kind"), [
    ("GET", "/healthz", "open"), ("GET", "/readyz", "open"), ("GET", "/openapi.json", "open"),
    ("GET", "/docs", "open"), ("OPTIONS", "/dicomweb/studies", "open"),
    ("OPTIONS", "/admin/cache/stats", "open"), ("GET", "/metrics", "metrics"),
    ("GET", "/", "other"), ("GET", "/elsewhere/studies", "other"), ("GET", "/healthz/x", "other"),
])
def test_kinds(method: str, path: str, kind: str) -> None:
    access = classify(method, path, "", "/dicomweb")
    assert access.kind == kind
    assert access.action is None


def test_uids_pacs_and_query_keys() -> None:
    access = classify("GET", f"/pacs/research/dicomweb/studies/{S}/series/{SE}/instances/{INST}",
                      "", "/dicomweb")
    assert (access.pacs, access.studies, access.series, access.instances) == (
        "research", (S,), (SE,), (INST,))
    search = classify("GET", f"/dicomweb/studies/{S}/series",
                      "Modality=CT&PatientName=Doe%2A&Modality=MR&limit=5", "/dicomweb")
    assert search.studies == (S,) and search.pacs is None
    assert search.query_keys == ("Modality", "PatientName", "limit")
    uri = classify("GET", "/wado", f"requestType=WADO&studyUID={S}&seriesUID={SE}&objectUID={INST}",
                   "/dicomweb")
    assert (uri.studies, uri.series, uri.instances) == ((S,), (SE,), (INST,))
    assert uri.query_keys == ()  # a retrieval's query is not a search's


def test_an_empty_prefix() -> None:
    assert classify("GET", "/studies", "", "").action == "search"
    assert classify("GET", f"/pacs/a/studies/{S}", "", "").action == "retrieve"
    assert classify("GET", "/healthz", "", "").kind == "open"
    assert classify("GET", "/admin/cache/stats", "", "").action == "admin"
