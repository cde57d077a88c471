"""Transfer syntax tables: what each syntax is, how frames of it are typed on the web, and what
the gateway proposes to a PACS for C-GET storage sub-operations (PS3.5 10, PS3.18 8.7.3).

Everything here is a table or a small function over one; codec availability is asked of pydicom
at call time, never cached at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from app.dicomweb.mediatypes import OCTET_STREAM

__all__ = [
    "ALL_KNOWN",
    "DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN",
    "ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN",
    "EXPLICIT_VR_BIG_ENDIAN",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "FRAME_MEDIA_TYPE",
    "HTJ2K",
    "HTJ2K_LOSSLESS",
    "HTJ2K_LOSSLESS_RPCL",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "JPEG2000",
    "JPEG2000_LOSSLESS",
    "JPEG2000_MC",
    "JPEG2000_MC_LOSSLESS",
    "JPEG_BASELINE_8BIT",
    "JPEG_EXTENDED_12BIT",
    "JPEG_LOSSLESS",
    "JPEG_LOSSLESS_SV1",
    "JPEG_LS_LOSSLESS",
    "JPEG_LS_NEAR_LOSSLESS",
    "JPEG_XL",
    "JPEG_XL_JPEG_RECOMPRESSION",
    "JPEG_XL_LOSSLESS",
    "LOSSY",
    "NOT_ON_THE_WIRE",
    "RETRIEVE_PROPOSAL_TIERS",
    "RLE_LOSSLESS",
    "UNCOMPRESSED",
    "VIDEO",
    "StoragePlan",
    "decodable",
    "encodable",
    "frame_media_type",
    "is_compressed",
    "is_lossy",
    "is_video",
    "plan_storage_contexts",
    "retrieve_proposal_tiers",
]

# -- Transfer Syntax UIDs (PS3.6 Table A-1) -------------------------------------------------------

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.98"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"  # retired, but PACS still send it
JPEG_BASELINE_8BIT = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED_12BIT = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"  # Process 14
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"  # Process 14, Selection Value 1
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG2000 = "1.2.840.10008.1.2.4.91"
JPEG2000_MC_LOSSLESS = "1.2.840.10008.1.2.4.92"
JPEG2000_MC = "1.2.840.10008.1.2.4.93"
JPEG_XL_LOSSLESS = "1.2.840.10008.1.2.4.110"
JPEG_XL_JPEG_RECOMPRESSION = "1.2.840.10008.1.2.4.111"
JPEG_XL = "1.2.840.10008.1.2.4.112"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"

MPEG2_MPML = "1.2.840.10008.1.2.4.100"
MPEG2_MPML_F = "1.2.840.10008.1.2.4.100.1"
MPEG2_MPHL = "1.2.840.10008.1.2.4.101"
MPEG2_MPHL_F = "1.2.840.10008.1.2.4.101.1"
MPEG4_HP41 = "1.2.840.10008.1.2.4.102"
MPEG4_HP41_F = "1.2.840.10008.1.2.4.102.1"
MPEG4_HP41_BD = "1.2.840.10008.1.2.4.103"
MPEG4_HP41_BD_F = "1.2.840.10008.1.2.4.103.1"
MPEG4_HP42_2D = "1.2.840.10008.1.2.4.104"
MPEG4_HP42_2D_F = "1.2.840.10008.1.2.4.104.1"
MPEG4_HP42_3D = "1.2.840.10008.1.2.4.105"
MPEG4_HP42_3D_F = "1.2.840.10008.1.2.4.105.1"
MPEG4_HP42_STEREO = "1.2.840.10008.1.2.4.106"
MPEG4_HP42_STEREO_F = "1.2.840.10008.1.2.4.106.1"
HEVC_MP51 = "1.2.840.10008.1.2.4.107"
HEVC_M10P51 = "1.2.840.10008.1.2.4.108"

#: Native (not encapsulated) encodings: pixel data is raw samples.
UNCOMPRESSED: frozenset[str] = frozenset(
    {
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
    }
)

#: Never returned by a DICOMweb origin server (PS3.18 8.7.3.4); re-encode to Explicit VR LE.
NOT_ON_THE_WIRE: frozenset[str] = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN})

_MPEG2 = (MPEG2_MPML, MPEG2_MPML_F, MPEG2_MPHL, MPEG2_MPHL_F)
_MPEG4 = (
    MPEG4_HP41, MPEG4_HP41_F, MPEG4_HP41_BD, MPEG4_HP41_BD_F, MPEG4_HP42_2D, MPEG4_HP42_2D_F,
    MPEG4_HP42_3D, MPEG4_HP42_3D_F, MPEG4_HP42_STEREO, MPEG4_HP42_STEREO_F,
)  # fmt: skip
_HEVC = (HEVC_MP51, HEVC_M10P51)

#: Video syntaxes: the whole multi-frame stream is one part (PS3.18 8.7.3.3.2).
VIDEO: frozenset[str] = frozenset((*_MPEG2, *_MPEG4, *_HEVC))

#: Syntaxes whose pixel data may have lost information (PS3.5 8.2; near-lossless and the
#: "lossless or lossy" JPEG 2000 / HTJ2K / JPEG XL syntaxes count as lossy: nothing in the
#: syntax promises otherwise). JPEG XL JPEG recompression carries an already lossy JPEG.
LOSSY: frozenset[str] = frozenset(
    {
        JPEG_BASELINE_8BIT,
        JPEG_EXTENDED_12BIT,
        JPEG_LS_NEAR_LOSSLESS,
        JPEG2000,
        JPEG2000_MC,
        JPEG_XL_JPEG_RECOMPRESSION,
        JPEG_XL,
        HTJ2K,
        *VIDEO,
    }
)

#: Media type of one compressed frame (or one video stream) per PS3.18 Table 8.7.3-5.
FRAME_MEDIA_TYPE: dict[str, str] = {
    JPEG_BASELINE_8BIT: "image/jpeg",
    JPEG_EXTENDED_12BIT: "image/jpeg",
    JPEG_LOSSLESS: "image/jpeg",
    JPEG_LOSSLESS_SV1: "image/jpeg",
    JPEG_LS_LOSSLESS: "image/jls",
    JPEG_LS_NEAR_LOSSLESS: "image/jls",
    JPEG2000_LOSSLESS: "image/jp2",
    JPEG2000: "image/jp2",
    JPEG2000_MC_LOSSLESS: "image/jpx",
    JPEG2000_MC: "image/jpx",
    JPEG_XL_LOSSLESS: "image/jxl",
    JPEG_XL_JPEG_RECOMPRESSION: "image/jxl",
    JPEG_XL: "image/jxl",
    HTJ2K_LOSSLESS: "image/jphc",
    HTJ2K_LOSSLESS_RPCL: "image/jphc",
    HTJ2K: "image/jphc",
    RLE_LOSSLESS: "image/dicom-rle",
    **{uid: "video/mpeg2" for uid in _MPEG2},
    **{uid: "video/mp4" for uid in _MPEG4},
    **{uid: "video/H265" for uid in _HEVC},
}

#: Every syntax this module has a name for.
ALL_KNOWN: frozenset[str] = frozenset(
    {*UNCOMPRESSED, ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN, *FRAME_MEDIA_TYPE}
)


def is_compressed(ts: str) -> bool:
    """True when pixel data in ``ts`` is encapsulated (PS3.5 A.4), i.e. not native."""
    return ts not in UNCOMPRESSED


def is_lossy(ts: str) -> bool:
    """True when ``ts`` may carry lossy compressed pixel data (see ``LOSSY``)."""
    return ts in LOSSY


def is_video(ts: str) -> bool:
    """True for MPEG-2, MPEG-4 AVC/H.264 and HEVC/H.265 syntaxes."""
    return ts in VIDEO


def frame_media_type(ts: str) -> str:
    """Media type of a frame in ``ts``: the Table 8.7.3-5 type, else application/octet-stream."""
    return FRAME_MEDIA_TYPE.get(ts, OCTET_STREAM)


def decodable(ts: str) -> bool:
    """True when pixel data in ``ts`` can be decoded here (native ones always; compressed ones
    when pydicom reports an available decoder plugin right now)."""
    if ts in UNCOMPRESSED:
        return True
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(ts).is_available)
    except (NotImplementedError, ValueError):
        return False


def encodable(ts: str) -> bool:
    """True when pixel data can be encoded into ``ts`` here (native ones always; compressed
    ones when pydicom reports an available encoder plugin right now)."""
    if ts in UNCOMPRESSED:
        return True
    from pydicom.pixels import get_encoder

    try:
        return bool(get_encoder(ts).is_available)
    except (NotImplementedError, ValueError):
        return False


# -- Presentation contexts for C-GET storage sub-operations ----------------------------------------

#: Candidate syntaxes for each proposal tier, richest first. Each (SOP class, syntax) pair is
#: proposed as its own presentation context, so the PACS can send every instance as stored
#: instead of transcoding (an acceptor picks one syntax per context, PS3.8 7.1.1.13).
#: ``retrieve_proposal_tiers()`` drops the compressed syntaxes we cannot decode at run time,
#: so we never accept data we could not turn into Explicit VR Little Endian.
RETRIEVE_PROPOSAL_TIERS: dict[str, tuple[str, ...]] = {
    "full": (
        EXPLICIT_VR_LITTLE_ENDIAN,
        IMPLICIT_VR_LITTLE_ENDIAN,
        JPEG_BASELINE_8BIT,
        JPEG_EXTENDED_12BIT,
        JPEG_LOSSLESS,
        JPEG_LOSSLESS_SV1,
        JPEG_LS_LOSSLESS,
        JPEG_LS_NEAR_LOSSLESS,
        JPEG2000_LOSSLESS,
        JPEG2000,
        HTJ2K_LOSSLESS,
        HTJ2K_LOSSLESS_RPCL,
        HTJ2K,
        RLE_LOSSLESS,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
    ),
    # What PACS archives most often store: avoids lossless recompression on the PACS side.
    "medium": (
        EXPLICIT_VR_LITTLE_ENDIAN,
        IMPLICIT_VR_LITTLE_ENDIAN,
        JPEG_BASELINE_8BIT,
        JPEG_LOSSLESS_SV1,
        JPEG_LS_LOSSLESS,
        JPEG2000_LOSSLESS,
        JPEG2000,
        RLE_LOSSLESS,
    ),
    # Every Storage SCU must support Implicit VR LE (PS3.5 10.1); Explicit LE is preferred.
    "minimal": (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN),
}

_COMBINED_TIER = "combined"


def retrieve_proposal_tiers() -> list[tuple[str, tuple[str, ...]]]:
    """``RETRIEVE_PROPOSAL_TIERS`` in order, each keeping only syntaxes decodable right now."""
    return [
        (name, tuple(ts for ts in syntaxes if decodable(ts)))
        for name, syntaxes in RETRIEVE_PROPOSAL_TIERS.items()
    ]


@dataclass(frozen=True)
class StoragePlan:
    """Presentation contexts to propose for the storage sub-operations of one C-GET.

    ``contexts`` holds one ``(SOP class UID, transfer syntaxes)`` entry per presentation
    context. In the tiered plans each context has exactly one syntax; in the ``combined``
    fallback each SOP class gets one context listing Explicit then Implicit VR LE.
    ``left_out`` lists the SOP classes that did not fit at all (split the C-GET for them).
    """

    tier: str
    contexts: list[tuple[str, tuple[str, ...]]]
    left_out: list[str] = field(default_factory=list)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """One ``(SOP class, syntax)`` pair per context (first syntax of each context)."""
        return [(sop_class, syntaxes[0]) for sop_class, syntaxes in self.contexts]

    @property
    def sop_classes(self) -> list[str]:
        """SOP classes that have at least one context, in proposal order."""
        return list(dict.fromkeys(sop_class for sop_class, _ in self.contexts))


def plan_storage_contexts(
    sop_classes: Sequence[str],
    max_contexts: int = 127,
    *,
    tiers: Sequence[tuple[str, Sequence[str]]] | None = None,
) -> StoragePlan:
    """Choose the richest tier whose ``len(classes) * len(tier)`` contexts fit ``max_contexts``.

    ``max_contexts`` defaults to 127: pynetdicom allows 128 contexts and the C-GET query model
    needs one. If even the two-syntax minimal tier does not fit, fall back to one context per
    class proposing both uncompressed syntaxes together (the PACS then picks), and list the
    classes beyond ``max_contexts`` in ``left_out``. Duplicate classes are proposed once.
    """
    if max_contexts < 1:
        raise ValueError("max_contexts must be at least 1")
    classes = list(dict.fromkeys(str(uid) for uid in sop_classes))
    chosen_tiers = list(tiers) if tiers is not None else retrieve_proposal_tiers()
    for name, syntaxes in chosen_tiers:
        if syntaxes and len(classes) * len(syntaxes) <= max_contexts:
            contexts: list[tuple[str, tuple[str, ...]]] = [
                (uid, (ts,)) for uid in classes for ts in syntaxes
            ]
            return StoragePlan(tier=name, contexts=contexts)
    both = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
    fitting, left_out = classes[:max_contexts], classes[max_contexts:]
    return StoragePlan(
        tier=_COMBINED_TIER,
        contexts=[(uid, both) for uid in fitting],
        left_out=left_out,
    )


def storage_scp_preference(offered: Sequence[str]) -> list[str]:
    """The order in which the gateway's Storage SCP accepts syntaxes a sender proposes in one
    context (an acceptor picks the first of its own list that was proposed): lossless
    compressed first, so instances arrive as stored without quality loss; then Explicit VR LE;
    then lossy ones; Implicit VR LE and Big Endian last (they are re-encoded for the web)."""

    def rank(ts: str) -> tuple[int, str]:
        if ts in (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN):
            return (4, ts)
        if ts in UNCOMPRESSED or ts == ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN:
            return (1, ts)
        if is_lossy(ts):
            return (2, ts)
        return (0, ts)

    return sorted(dict.fromkeys(offered), key=rank)


def compressed_first(contexts: Sequence[tuple[str, tuple[str, ...]]]
                     ) -> list[tuple[str, tuple[str, ...]]]:
    """The same storage contexts with compressed syntaxes proposed before uncompressed ones:
    for a second C-GET of instances a PACS failed to send, since some PACS (DCMTK dcmqrscp)
    send each file over the first accepted context of its SOP class, whatever its syntax."""
    return sorted(contexts, key=lambda cx: all(ts in UNCOMPRESSED for ts in cx[1]))
