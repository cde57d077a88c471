"""Warning header values (RFC 9111 5.5, PS3.18 8.4.3): ``299 {agent} "text"``, ASCII-safe and
bounded whatever the client sent, since parts of the text (unknown parameter names) come from
the request."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import quote

#: Most characters of one warning text; the header stays far below any server's header limit.
MAX_WARNING_TEXT = 512
#: Most unknown parameter names listed in one warning; the rest are counted.
MAX_LISTED_NAMES = 10
#: Longest parameter name listed (after escaping); longer ones are cut with "...".
MAX_NAME_LENGTH = 64
# Printable ASCII except the quoted-string's specials '"' and '\' (RFC 9110 5.6.4); in a name
# taken from the request '%' too, so that its escaped form reads back unambiguously.
_SAFE_TEXT = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\')
_SAFE_NAME = _SAFE_TEXT.replace("%", "")


def escape_text(text: str, safe: str = _SAFE_TEXT) -> str:
    """``text`` with control, non-ASCII, quote and backslash characters percent-encoded."""
    return quote(text, safe=safe)


def warning_value(agent: str, text: str) -> str:
    """A 299 (miscellaneous persistent warning) value with ``text`` escaped and bounded."""
    safe = escape_text(text)
    if len(safe) > MAX_WARNING_TEXT:
        safe = safe[: MAX_WARNING_TEXT - 3] + "..."
    return f'299 {agent} "{safe}"'


def ignored_parameters_text(names: Sequence[str]) -> str:
    """The warning text for unknown query parameters: at most MAX_LISTED_NAMES names, each
    escaped and cut to MAX_NAME_LENGTH characters, and how many more there were."""
    unique = list(dict.fromkeys(names))
    shown = []
    for name in unique[:MAX_LISTED_NAMES]:
        escaped = escape_text(name, _SAFE_NAME)
        if len(escaped) > MAX_NAME_LENGTH:
            escaped = escaped[: MAX_NAME_LENGTH - 3] + "..."
        shown.append(escaped)
    text = "Unknown query attributes were ignored: " + ", ".join(shown)
    if len(unique) > MAX_LISTED_NAMES:
        text += f" and {len(unique) - MAX_LISTED_NAMES} more"
    return text
