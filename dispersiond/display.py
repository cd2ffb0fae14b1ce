"""File names as text: shown safely on a terminal, stored losslessly as bytes.

Inside the process a name is a `str` as `os.fsdecode` makes it: bytes that are not
valid UTF-8 become lone surrogates (U+DC80..U+DCFF), so `os.fsencode` gives the exact
bytes back and every file-system call finds the same file. Such a string cannot be
written to SQLite, JSON or a strict terminal, hence the helpers here.
"""
from __future__ import annotations

import base64
import os
import unicodedata

#: Categories shown escaped: control, format (bidi overrides, zero-width), separators
#: other than the plain space, unassigned and surrogates (undecodable bytes).
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def _escape_char(ch: str) -> str:
    cp = ord(ch)
    if 0xDC80 <= cp <= 0xDCFF:  # an undecodable byte, as os.fsdecode keeps it
        return f"\\x{cp - 0xDC00:02x}"
    if cp < 0x100:
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch, f"\\x{cp:02x}")
    return f"\\u{cp:04x}" if cp <= 0xFFFF else f"\\U{cp:08x}"


def shown(name: str | bytes | os.PathLike | object) -> str:
    """A name fit for a terminal or a log line: control characters, invisible format
    characters and undecodable bytes as backslash escapes, a backslash doubled, so
    that nothing printed can move the cursor, clear the screen or pass for another name."""
    text = os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else str(name)
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch != " " and unicodedata.category(ch) in _ESCAPED_CATEGORIES:
            out.append(_escape_char(ch))
        else:
            out.append(ch)
    return "".join(out)


def raw_bytes(name: str) -> bytes:
    """The exact bytes of a name (undecodable bytes included)."""
    return os.fsencode(name)


def is_text(name: str) -> bool:
    """Whether a name is valid UTF-8 (so it can be stored as text as it is)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def as_text(name: str) -> str:
    """The name itself when it is valid UTF-8, else its escaped form (for TEXT columns
    and JSON, next to the exact bytes)."""
    return name if is_text(name) else shown(name)


def from_stored(text: str, raw: bytes | None) -> str:
    """A name read back from a text field and the optional exact bytes beside it."""
    return os.fsdecode(raw) if raw is not None else text


def b64(name: str) -> str | None:
    """Base64 of the name's bytes when it is not valid UTF-8; None otherwise."""
    return None if is_text(name) else base64.b64encode(raw_bytes(name)).decode()


def from_b64(text: str, encoded: str | None) -> str:
    """The inverse of (`as_text`, `b64`)."""
    if encoded is None:
        return text
    return os.fsdecode(base64.b64decode(encoded, validate=True))


def json_fields(name: str) -> dict[str, str]:
    """`name` (and `name_b64` when it is not valid UTF-8) for --json output."""
    enc = b64(name)
    return {"name": as_text(name)} if enc is None else {"name": as_text(name), "name_b64": enc}
