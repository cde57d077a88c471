"""Relative dates of worklist queries: today, yesterday, today-N and ranges of them."""

from __future__ import annotations

from datetime import date

import pytest

from app.dicomweb.relative_dates import resolve_relative_date, resolve_relative_dates

TODAY = date(2026, 3, 1)  # across a month end and a non-leap February


@pytest.mark.parametrize(("value", "resolved"), [
    ("today", "20260301"),
    ("TODAY", "20260301"),
    ("yesterday", "20260228"),
    ("today-1", "20260228-20260301"),
    ("today-7", "20260222-20260301"),
    ("today+1", "20260302"),
    ("today-7-yesterday", "20260222-20260228"),
    ("today-7-today", "20260222-20260301"),
    ("yesterday-today", "20260228-20260301"),
    ("today-", "20260301-"),
    ("-yesterday", "-20260228"),
    ("20260101-today", "20260101-20260301"),
    ("20260101", "20260101"),
    ("20260101-20260201", "20260101-20260201"),
    ("", ""),
    ("tomorrow", "tomorrow"),  # not a token: left for the query parser to refuse
    ("today-x", "today-x"),
])
def test_tokens(value: str, resolved: str) -> None:
    assert resolve_relative_date(value, TODAY) == resolved


def test_only_date_attributes_are_resolved() -> None:
    params = [("StudyDate", "today"), ("00080020", "yesterday"), ("SeriesDate", "today-2"),
              ("PatientName", "today"), ("StudyDescription", "yesterday"),
              ("ModalitiesInStudy", "CT"), ("limit", "5"), ("NotAKeyword", "today")]
    assert resolve_relative_dates(params, TODAY) == [
        ("StudyDate", "20260301"), ("00080020", "20260228"),
        ("SeriesDate", "20260227-20260301"), ("PatientName", "today"),
        ("StudyDescription", "yesterday"), ("ModalitiesInStudy", "CT"), ("limit", "5"),
        ("NotAKeyword", "today")]
