"""Path UIDs (PS3.5 9.1) parsed once into StudyRef/SeriesRef/InstanceRef at the edge."""

from __future__ import annotations

import pytest

from app.dicomweb.refs import (
    InstanceRef,
    SeriesRef,
    StudyRef,
    check_uid,
    instance_ref,
    is_valid_uid,
    parse_frame_list,
    series_ref,
    study_ref,
)
from app.errors import BadRequest


@pytest.mark.parametrize(
    "uid",
    [
        "1",
        "1.2.3",
        "1.2.840.10008.5.1.4.1.2.2.1",
        "2.25.329800735698586629295641978511506172918",
        "1." + "2" * 62,  # 64 characters
        "1.0.3",  # a component "0" is allowed
    ],
)
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)
    assert check_uid(uid, "StudyInstanceUID") == uid


@pytest.mark.parametrize(
    "uid",
    [
        "",
        ".",
        "1.",
        ".1",
        "1..2",
        "1.2.a",
        "1.2.3 ",
        " 1.2.3",
        "1,2",
        "1.2.3\\1.2.4",
        "1." + "2" * 63,
        "１.２",
        "1.2.3/4",
        "*",
        "1.02.3",  # leading zero: not allowed by PS3.5 9.1
        "01.2",
        "1.2.00",
    ],
)
def test_invalid_uids(uid: str) -> None:
    assert not is_valid_uid(uid)
    with pytest.raises(BadRequest) as info:
        check_uid(uid, "SeriesInstanceUID")
    assert info.value.http_status == 400
    assert "SeriesInstanceUID" in info.value.message


def test_refs() -> None:
    assert study_ref("1.2") == StudyRef("1.2")
    assert series_ref("1.2", "1.2.3") == SeriesRef("1.2", "1.2.3")
    assert instance_ref("1.2", "1.2.3", "1.2.3.4") == InstanceRef("1.2", "1.2.3", "1.2.3.4")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("x", "1.2", "1.2.3"), "StudyInstanceUID"),
        (("1", "x", "1.2.3"), "SeriesInstanceUID"),
        (("1", "1.2", "x"), "SOPInstanceUID"),
    ],
)
def test_instance_ref_names_the_bad_segment(args: tuple[str, str, str], named: str) -> None:
    with pytest.raises(BadRequest, match=named):
        instance_ref(*args)


def test_refs_are_hashable_values() -> None:
    assert len({StudyRef("1.2"), StudyRef("1.2")}) == 1


# -- frame lists (PS3.18 10.4.1.1.3) --------------------------------------------------------------


@pytest.mark.parametrize(("text", "numbers"), [
    ("1", [1]),
    ("3,1,2", [3, 1, 2]),  # the order asked for is the order of the parts
    (" 1 , 2 ", [1, 2]),
    ("007", [7]),
    ("1" + "0" * 8, [100_000_000]),
])
def test_frame_lists(text: str, numbers: list[int]) -> None:
    assert parse_frame_list(text, max_frames=4) == numbers


@pytest.mark.parametrize(("text", "message"), [
    ("", "not a comma-separated list"),
    ("1,,2", "not a comma-separated list"),
    ("-1", "not a comma-separated list"),
    ("1.5", "not a comma-separated list"),
    ("0", "start at 1"),
    ("1,2,1", "frame 1 is listed more than once"),
    ("1,2,3,4,5", "at most 4"),
    ("1" + "0" * 9, "out of range"),
])
def test_bad_frame_lists_are_400(text: str, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_frame_list(text, max_frames=4)
