"""The streamed ZIP writer: each member's bytes come out as it is added, the archive reads back
with the standard zipfile module, and an archive cut before its central directory is not a
valid ZIP (a client can tell a truncated download)."""

from __future__ import annotations

import io
import zipfile

import pytest

from app.dicomweb.mediatypes import ZIP, negotiate, parse_accept, zip_offers
from app.dicomweb.ziparchive import ZipStream


def test_members_stream_out_one_by_one_and_read_back() -> None:
    stream = ZipStream()
    first = stream.add("s/1.dcm", b"a" * 5000)
    assert 5000 < len(first) < 5200  # the member itself: header, bytes, data descriptor
    second = stream.add("s/2.dcm", b"b" * 10)
    assert len(second) < 200  # nothing of the first member is repeated
    archive = zipfile.ZipFile(io.BytesIO(first + second + stream.finish()))
    assert archive.testzip() is None
    assert archive.namelist() == ["s/1.dcm", "s/2.dcm"]
    assert archive.read("s/1.dcm") == b"a" * 5000
    info = archive.getinfo("s/2.dcm")
    assert info.compress_type == zipfile.ZIP_STORED
    assert info.flag_bits & 0x08  # sizes in a data descriptor: nothing is seeked back to
    assert stream.members == 2


def test_an_archive_without_its_central_directory_is_not_a_zip() -> None:
    stream = ZipStream()
    body = stream.add("s/1.dcm", b"a" * 100)
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(body))


def test_a_date_before_1980_is_clamped() -> None:
    stream = ZipStream()
    body = stream.add("x.dcm", b"x", when=0.0) + stream.finish()
    assert zipfile.ZipFile(io.BytesIO(body)).getinfo("x.dcm").date_time[0] == 1980


@pytest.mark.parametrize(("accept", "syntax"), [
    ("application/zip", "1.2.840.10008.1.2.1"),
    ('application/zip; type="application/dicom"', "1.2.840.10008.1.2.1"),
    ("application/zip; transfer-syntax=1.2.840.10008.1.2.5", "1.2.840.10008.1.2.5"),
    ("application/zip; transfer-syntax=*", "1.2.840.10008.1.2.1"),
    ("application/*", "1.2.840.10008.1.2.1"),
    ("application/zip; transfer-syntax=1.2.840.10008.1.2", None),
    ('application/zip; type="application/dicom+json"', None),
    ('multipart/related; type="application/dicom"', None),
])
def test_zip_offers_table(accept: str, syntax: str | None) -> None:
    offers = zip_offers(["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5"])
    chosen = negotiate(parse_accept(accept), offers)
    if syntax is None:
        assert chosen is None
    else:
        assert chosen is not None and chosen.offer.media_type == ZIP
        assert chosen.offer.transfer_syntax == syntax
