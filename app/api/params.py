"""Path parameters and error responses shared by the DICOMweb routes, as published in OpenAPI.

The patterns document what the handlers accept (they validate with the same rules and answer
400 with a DICOM JSON body, naming the parameter); they are not enforced by FastAPI, so that the
error message stays the gateway's own."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path

from app.dicomweb.refs import UID_PATTERN

#: PS3.5 9.1: dot-separated components without leading zeros, at most 64 characters.
UID_SCHEMA: dict[str, Any] = {"pattern": UID_PATTERN, "maxLength": 64, "minLength": 1}
FRAME_LIST_PATTERN = r"^ *[0-9]+ *(, *[0-9]+ *)*$"
BULKDATA_PATTERN = r"^[0-9A-Fa-f]{8}(\.(0|[1-9][0-9]{0,8})\.[0-9A-Fa-f]{8})*$"
PACS_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"

StudyUID = Annotated[str, Path(description="Study Instance UID", json_schema_extra=UID_SCHEMA)]
SeriesUID = Annotated[str, Path(description="Series Instance UID", json_schema_extra=UID_SCHEMA)]
InstanceUID = Annotated[str, Path(description="SOP Instance UID", json_schema_extra=UID_SCHEMA)]
FrameList = Annotated[str, Path(
    description="Comma-separated 1-based frame numbers, each listed once "
                "(at most max_frames_per_request)",
    json_schema_extra={"pattern": FRAME_LIST_PATTERN})]
BulkDataReference = Annotated[str, Path(
    description="A bulk data reference as minted in BulkDataURIs: tag(.item.tag)*",
    json_schema_extra={"pattern": BULKDATA_PATTERN})]

#: The DICOM JSON status report of every error response (app.api.problems), a component of the
#: published document (added by app.main).
ERROR_SCHEMA_NAME = "DicomStatusReport"
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "ErrorComment (0000,0902) and, when a DIMSE status caused the error, "
                   "Status (0000,0900)",
    "properties": {
        "00000902": {"type": "object", "properties": {
            "vr": {"type": "string", "enum": ["LO"]},
            "Value": {"type": "array", "items": {"type": "string"}}}},
        "00000900": {"type": "object", "properties": {
            "vr": {"type": "string", "enum": ["US"]},
            "Value": {"type": "array", "items": {"type": "integer"}}}},
    },
    "required": ["00000902"],
}
ERROR_CONTENT: dict[str, Any] = {"application/dicom+json": {
    "schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA_NAME}"}}}


def errors(statuses: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for error statuses, each with the DICOM JSON error body."""
    return {status: {"description": text, "content": ERROR_CONTENT}
            for status, text in statuses.items()}


#: Statuses any route may answer whatever it does.
COMMON_ERRORS = {
    400: "Malformed request: UID, parameter value, or a Host / forwarded header that is not a "
         "valid or allowed host",
    500: "An unexpected error in the gateway (a bug; logged)",
}
#: What routes under /pacs/{pacs}/... add.
NAMED_PACS_ERRORS = {404: "No PACS of that name is configured"}
