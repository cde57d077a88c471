"""Transfer syntax tables (PS3.18 Table 8.7.3-5, 8.7.3.4) and C-GET context planning."""

from __future__ import annotations

import pytest

from app.dicomweb import transfer_syntax as ts
from app.dicomweb.transfer_syntax import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    RETRIEVE_PROPOSAL_TIERS,
    decodable,
    encodable,
    frame_media_type,
    is_compressed,
    is_lossy,
    plan_storage_contexts,
    retrieve_proposal_tiers,
)

FRAME_TYPES = [
    ("1.2.840.10008.1.2.4.50", "image/jpeg"),
    ("1.2.840.10008.1.2.4.51", "image/jpeg"),
    ("1.2.840.10008.1.2.4.57", "image/jpeg"),
    ("1.2.840.10008.1.2.4.70", "image/jpeg"),
    ("1.2.840.10008.1.2.4.80", "image/jls"),
    ("1.2.840.10008.1.2.4.81", "image/jls"),
    ("1.2.840.10008.1.2.4.90", "image/jp2"),
    ("1.2.840.10008.1.2.4.91", "image/jp2"),
    ("1.2.840.10008.1.2.4.92", "image/jpx"),
    ("1.2.840.10008.1.2.4.93", "image/jpx"),
    ("1.2.840.10008.1.2.4.201", "image/jphc"),
    ("1.2.840.10008.1.2.4.202", "image/jphc"),
    ("1.2.840.10008.1.2.4.203", "image/jphc"),
    ("1.2.840.10008.1.2.5", "image/dicom-rle"),
    ("1.2.840.10008.1.2.4.100", "video/mpeg2"),
    ("1.2.840.10008.1.2.4.102", "video/mp4"),
    ("1.2.840.10008.1.2.4.107", "video/H265"),
    ("1.2.840.10008.1.2.1", "application/octet-stream"),
    ("1.2.840.10008.1.2", "application/octet-stream"),
    ("1.2.840.10008.1.2.2", "application/octet-stream"),
    ("1.2.3.4.5", "application/octet-stream"),
]


@pytest.mark.parametrize(("uid", "media_type"), FRAME_TYPES)
def test_frame_media_type_table(uid: str, media_type: str) -> None:
    assert frame_media_type(uid) == media_type


COMPRESSION = [
    # uid, compressed, lossy
    (IMPLICIT_VR_LITTLE_ENDIAN, False, False),
    (EXPLICIT_VR_LITTLE_ENDIAN, False, False),
    (DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, False, False),
    (EXPLICIT_VR_BIG_ENDIAN, False, False),
    ("1.2.840.10008.1.2.4.50", True, True),
    ("1.2.840.10008.1.2.4.51", True, True),
    ("1.2.840.10008.1.2.4.57", True, False),
    ("1.2.840.10008.1.2.4.70", True, False),
    ("1.2.840.10008.1.2.4.80", True, False),
    ("1.2.840.10008.1.2.4.81", True, True),
    ("1.2.840.10008.1.2.4.90", True, False),
    ("1.2.840.10008.1.2.4.91", True, True),
    ("1.2.840.10008.1.2.4.201", True, False),
    ("1.2.840.10008.1.2.4.203", True, True),
    ("1.2.840.10008.1.2.5", True, False),
    ("1.2.840.10008.1.2.4.102", True, True),
]


@pytest.mark.parametrize(("uid", "compressed", "lossy"), COMPRESSION)
def test_compressed_and_lossy_table(uid: str, compressed: bool, lossy: bool) -> None:
    assert is_compressed(uid) is compressed
    assert is_lossy(uid) is lossy


def test_never_on_the_wire() -> None:
    # PS3.18 8.7.3.4: Implicit VR LE and Explicit VR Big Endian are never returned.
    assert ts.NOT_ON_THE_WIRE == {IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN}
    assert EXPLICIT_VR_LITTLE_ENDIAN not in ts.NOT_ON_THE_WIRE


@pytest.mark.parametrize(
    "uid",
    [
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
        "1.2.840.10008.1.2.5",  # pydicom's own RLE plugin
        "1.2.840.10008.1.2.4.50",  # Pillow / pylibjpeg-libjpeg (project dependencies)
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.90",  # pylibjpeg-openjpeg
        "1.2.840.10008.1.2.4.201",
    ],
)
def test_decodable_with_project_dependencies(uid: str) -> None:
    assert decodable(uid)


@pytest.mark.parametrize(
    "uid",
    [EXPLICIT_VR_LITTLE_ENDIAN, "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"],
)
def test_encodable_with_project_dependencies(uid: str) -> None:
    assert encodable(uid)


@pytest.mark.parametrize("uid", ["1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.92", "1.2.3"])
def test_video_and_unknown_are_not_decodable(uid: str) -> None:
    assert not decodable(uid)
    assert not encodable(uid)


def test_no_encoder_for_jpeg_baseline_in_pydicom() -> None:
    assert not encodable("1.2.840.10008.1.2.4.50")


def test_tiers_start_with_explicit_then_implicit_and_shrink() -> None:
    tiers = list(RETRIEVE_PROPOSAL_TIERS.values())
    for syntaxes in tiers:
        assert syntaxes[:2] == (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
        assert len(set(syntaxes)) == len(syntaxes)
    sizes = [len(s) for s in tiers]
    assert sizes == sorted(sizes, reverse=True)
    assert set(tiers[1]) <= set(tiers[0])


def test_runtime_tiers_only_hold_decodable_syntaxes() -> None:
    for _name, syntaxes in retrieve_proposal_tiers():
        assert all(decodable(uid) for uid in syntaxes)


def _classes(count: int) -> list[str]:
    return [f"1.2.840.10008.5.1.4.1.1.{n}" for n in range(1, count + 1)]


FULL = len(RETRIEVE_PROPOSAL_TIERS["full"])
MEDIUM = len(RETRIEVE_PROPOSAL_TIERS["medium"])

PLANS = [
    # classes, expected tier, contexts, left out
    (1, "full", FULL, 0),
    (10, "medium", 10 * MEDIUM, 0),
    (40, "minimal", 80, 0),
    (70, "combined", 70, 0),
    (200, "combined", 127, 73),
]


@pytest.mark.parametrize(("count", "tier", "contexts", "left_out"), PLANS)
def test_plan_storage_contexts_table(count: int, tier: str, contexts: int, left_out: int) -> None:
    # With every plugin of the project installed, the runtime tiers are the static ones.
    assert retrieve_proposal_tiers() == list(RETRIEVE_PROPOSAL_TIERS.items())
    plan = plan_storage_contexts(_classes(count))
    assert plan.tier == tier
    assert len(plan.contexts) == contexts <= 127
    assert len(plan.left_out) == left_out
    covered = set(plan.sop_classes) | set(plan.left_out)
    assert covered == set(_classes(count))


def test_plan_one_syntax_per_context_in_tiers() -> None:
    plan = plan_storage_contexts(_classes(3))
    assert plan.tier == "full"
    assert all(len(syntaxes) == 1 for _, syntaxes in plan.contexts)
    assert plan.pairs[:2] == [
        (_classes(3)[0], EXPLICIT_VR_LITTLE_ENDIAN),
        (_classes(3)[0], IMPLICIT_VR_LITTLE_ENDIAN),
    ]
    assert len(set(plan.pairs)) == len(plan.pairs) == 3 * FULL


def test_plan_combined_proposes_both_uncompressed_syntaxes() -> None:
    plan = plan_storage_contexts(_classes(70))
    assert all(
        syntaxes == (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
        for _, syntaxes in plan.contexts
    )


def test_plan_deduplicates_and_respects_max_contexts() -> None:
    classes = ["1.2.3", "1.2.3", "1.2.4"]
    plan = plan_storage_contexts(classes, max_contexts=4)
    assert plan.tier == "minimal"
    assert plan.sop_classes == ["1.2.3", "1.2.4"]
    assert len(plan.contexts) == 4


def test_plan_with_custom_tiers_and_bad_limit() -> None:
    plan = plan_storage_contexts(["1.2.3"], tiers=[("only", [EXPLICIT_VR_LITTLE_ENDIAN])])
    assert plan.tier == "only"
    assert plan.pairs == [("1.2.3", EXPLICIT_VR_LITTLE_ENDIAN)]
    with pytest.raises(ValueError):
        plan_storage_contexts(["1.2.3"], max_contexts=0)
