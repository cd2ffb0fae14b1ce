"""Format headers (the paper's D_head) that go whole into the private container.

Only DICOM is split by default: its 128-byte preamble, "DICM" and the group 0002
file meta elements. Parsed by hand (a few bytes of explicit-VR little endian) so
the core needs no DICOM library; anything unexpected means "no header". The same
header tells the compression trial when the pixel data is compressed already.
"""
from __future__ import annotations

import struct

from .se2 import MAX_HEAD

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}
PROBE = 64 * 1024  # bytes to read from the start of a file to find its header
# Transfer syntaxes whose pixel data is stored as it is (implicit VR, explicit VR little
# and big endian); every other one (JPEG, JPEG-LS, JPEG 2000, RLE, MPEG, HEVC, deflate,
# HTJ2K, ...) is encapsulated, compressed data.
NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


_ELEMENT = struct.Struct("<HH2sH")  # group element VR (short length, or 2 reserved bytes)
_LONG = struct.Struct("<I")


def _meta_elements(data: bytes):
    """(group, element, value) of each group 0002 element, in order; stops at the end."""
    pos, end = 132, len(data)
    while pos + 8 <= end:
        group, elem, vr, length = _ELEMENT.unpack_from(data, pos)
        if group != 0x0002:
            return
        if vr in _LONG_VRS:
            if pos + 12 > end:
                return
            (length,) = _LONG.unpack_from(data, pos + 8)
            start = pos + 12
        else:
            start = pos + 8
        if length == 0xFFFFFFFF:
            return
        yield group, elem, data[start: start + length]
        pos = start + length


def dicom_transfer_syntax(head: bytes) -> str | None:
    """The transfer syntax UID of a DICOM Part 10 header, or None."""
    if len(head) < 132 or head[128:132] != b"DICM":
        return None
    for _group, elem, value in _meta_elements(head):
        if elem == 0x0010:
            return value.rstrip(b"\x00 ").decode("ascii", "replace")
    return None


def head_says_compressed(head: bytes) -> bool:
    """Does the format header say the content is compressed already (so that a
    compression trial is not worth its time)?"""
    ts = dicom_transfer_syntax(head)
    return ts is not None and ts not in NATIVE_SYNTAXES


def dicom_head_len(data: bytes) -> int:
    """Length of the DICOM preamble + file meta group, or 0 if `data` is not DICOM Part 10."""
    if len(data) < 132 or data[128:132] != b"DICM":
        return 0
    pos = 132
    while pos + 8 <= len(data):
        group, _elem = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            return pos if pos <= MAX_HEAD else 0
        vr = data[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                return 0
            (length,) = struct.unpack_from("<I", data, pos + 8)
            pos += 12 + length
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            pos += 8 + length
        if length == 0xFFFFFFFF:
            return 0
    return pos if pos == len(data) and pos <= MAX_HEAD else 0


def head_len(first_bytes: bytes, size: int, dicom: bool = True) -> int:
    """How many leading bytes of a file are its format header (0 if none)."""
    if dicom:
        n = dicom_head_len(first_bytes)
        if 0 < n <= size:
            return n
    return 0
