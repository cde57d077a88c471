"""Audit messages (app.services.audit): the PS3.15 A.5 shape, outcome codes, no query values
unless asked, and the RFC 5424 frame."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

from app.services.audit import AccessEvent, audit_message, syslog_frame

WHEN = datetime(2026, 12, 2, 1, 30, 12, 345000, tzinfo=UTC)


def _event(**kw: object) -> AccessEvent:
    base: dict[str, object] = {"action": "retrieve", "method": "GET",
                               "path": "/dicomweb/studies/1.2", "status": 200, "time": WHEN,
                               "client": "10.1.2.3", "studies": ["1.2"], "pacs": "main"}
    base.update(kw)
    return AccessEvent(**base)  # type: ignore[arg-type]


def test_a_retrieval() -> None:
    message = audit_message(_event(series=["1.2.3"], bytes_sent=99), "GW")
    ident = message["EventIdentification"]
    assert ident["EventID"]["csd-code"] == "110104" and ident["EventActionCode"] == "R"
    assert ident["EventDateTime"] == "2026-12-02T01:30:12.345Z"
    assert ident["EventOutcomeIndicator"] == "0"
    requestor, gateway = message["ActiveParticipant"]
    assert requestor["UserID"] == "10.1.2.3" and requestor["RoleIDCode"]["csd-code"] == "110152"
    assert gateway["UserID"] == "GW" and gateway["AlternativeUserID"] == "pacs=main"
    (study,) = message["ParticipantObjectIdentification"]
    assert study["ParticipantObjectID"] == "1.2"
    assert study["ParticipantObjectDescription"] == {"SeriesInstanceUID": ["1.2.3"]}
    assert message["Gateway"]["bytes"] == 99


def test_outcomes() -> None:
    def outcome(**kw: object) -> tuple[str, str]:
        ident = audit_message(_event(**kw), "GW")["EventIdentification"]
        return ident["EventID"]["csd-code"], ident["EventOutcomeIndicator"]

    assert outcome(status=404) == ("110104", "4")
    assert outcome(status=502) == ("110104", "8")
    assert outcome(complete=False) == ("110104", "8")
    assert outcome(status=401, refusal="expired") == ("110114", "4")
    assert outcome(status=403, refusal="no") == ("110113", "4")
    assert outcome(action="store", status=200) == ("110104", "0")
    assert outcome(action="admin", status=200) == ("110100", "0")
    store = audit_message(_event(action="store"), "GW")
    assert store["EventIdentification"]["EventActionCode"] == "C"
    assert store["ActiveParticipant"][0]["RoleIDCode"]["csd-code"] == "110153"


def test_a_search_names_keys_not_values() -> None:
    message = audit_message(_event(action="search", studies=[],
                                   query_keys=["PatientName", "StudyDate"]), "GW")
    text = json.dumps(message)
    (query,) = message["ParticipantObjectIdentification"]
    assert base64.b64decode(query["ParticipantObjectQuery"]) == b"PatientName&StudyDate"
    assert "query" not in message["Gateway"] and "Doe" not in text
    with_phi = audit_message(_event(action="search", studies=[], query_keys=["PatientName"],
                                    query="PatientName=Doe*"), "GW")
    assert with_phi["Gateway"]["query"] == "PatientName=Doe*"


def test_syslog_frame() -> None:
    frame = syslog_frame(audit_message(_event(), "GW"), hostname="gw1", failure=False)
    header, _, body = frame.partition(b" \xef\xbb\xbf")
    assert header.startswith(b"<109>1 2026-12-02T01:30:12.345Z gw1 dicomweb-gateway ")
    assert header.endswith(b" DICOM-AUDIT -")
    assert json.loads(body)["Gateway"]["path"] == "/dicomweb/studies/1.2"
    failed = syslog_frame(audit_message(_event(status=500), "GW"), hostname="", failure=True)
    assert failed.startswith(b"<108>1 ") and b" - dicomweb-gateway " in failed


def test_the_dimse_status_is_the_dicom_outcome() -> None:
    message = audit_message(_event(status=502, dimse_status=0xC001), "GW")
    assert message["EventIdentification"]["EventOutcomeDescription"] == (
        "HTTP 502, DIMSE status C001H")
    assert message["Gateway"]["dimse_status"] == "C001"
    assert "dimse_status" not in audit_message(_event(), "GW")["Gateway"]
