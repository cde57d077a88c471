"""A ZIP archive written as a stream, one member at a time (WADO-RS ``application/zip``,
Supplement 211).

The standard library's ``zipfile`` writes to a sink that cannot seek: each member then gets a
data descriptor after its bytes (APPNOTE 4.3.9) and ZIP64 records where a size or offset needs
them, and the central directory is written at the end. Here the sink only collects what was
written since the last call, so a caller hands on each member's bytes as soon as the member is
added: the archive is never held in memory, only the member being added. Members are stored,
not deflated: Part-10 files of compressed images do not shrink, and storing costs no CPU.
"""

from __future__ import annotations

import time
import zipfile

__all__ = ["ZipStream"]

_EARLIEST = (1980, 1, 1, 0, 0, 0)  # the earliest date a ZIP header can hold


class _Sink:
    """A write-only file object that keeps what was written until it is taken."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        """Nothing is buffered beyond the chunks themselves."""

    def take(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


class ZipStream:
    """Builds a ZIP archive member by member; ``add`` and ``finish`` return the archive's next
    bytes. Names are stored as given (the caller makes them safe and unique)."""

    def __init__(self) -> None:
        self._sink = _Sink()
        self._archive = zipfile.ZipFile(self._sink, mode="w",  # type: ignore[call-overload]
                                        compression=zipfile.ZIP_STORED, allowZip64=True)
        self.members = 0

    def add(self, name: str, data: bytes, when: float | None = None) -> bytes:
        """Add one member holding ``data``: its local header, bytes and data descriptor."""
        stamp = time.localtime(time.time() if when is None else when)[:6]
        info = zipfile.ZipInfo(name, date_time=max(stamp, _EARLIEST))
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16  # a plain readable file when unpacked on Unix
        self._archive.writestr(info, data)
        self.members += 1
        return self._sink.take()

    def finish(self) -> bytes:
        """The central directory (and ZIP64 end records when needed): the archive's last
        bytes. Without them the archive is visibly incomplete."""
        self._archive.close()
        return self._sink.take()
