"""What a loaded manifest backup must look like (docs/FORMAT.md §4), checked before any
of it reaches the state database or the file system: a sealed document is only as good
as the device that sealed it, and a bad one must end in one clear line, not a traceback."""
from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError,
                      ValidationInfo, field_validator, model_validator)

from .display import from_b64
from .errors import IntegrityError

HEX = re.compile(r"[0-9a-f]+")
FILE_ID = re.compile(r"[0-9a-f]{32}")
HEAD = re.compile(r"[0-9]+:[0-9a-f]{64}")


def _file_id(v: str) -> str:
    if not FILE_ID.fullmatch(v):
        raise ValueError("a file id is 32 lowercase hex digits")
    return v


def _bare_name(v: str) -> str:
    if not v or v in (".", "..") or "/" in v or "\\" in v or "\0" in v:
        raise ValueError("a file name is a bare name (no path separator, not '.' or '..', "
                         "no NUL)")
    return v


def _hex(v: str) -> str:
    if not HEX.fullmatch(v):
        raise ValueError("expected lowercase hex digits")
    return v


def _object_name(v: str) -> str:
    if not v or "\0" in v or ".." in v.split("/") or len(v) > 1024:
        raise ValueError("not an object name")
    return v


def _head(v: str) -> str:
    if not HEAD.fullmatch(v):
        raise ValueError("an audit head is 'seq:hash'")
    return v


FileId = Annotated[str, AfterValidator(_file_id)]
Hex = Annotated[str, AfterValidator(_hex)]
INT64 = 2**63 - 1  # what a state database column holds
Count = Annotated[int, Field(ge=0, le=INT64)]
Seq = Annotated[int, Field(ge=1, le=INT64)]


class _Strict(BaseModel):
    # Unknown keys are kept (a newer build may add optional fields); types are not coerced.
    model_config = ConfigDict(strict=True, extra="allow")


class ObjectEntry(_Strict):
    role: Literal["public", "private"]
    shard: Count | None
    store: Annotated[str, Field(min_length=1)]
    name: Annotated[str, AfterValidator(_object_name)]
    offset: Count
    length: Count
    object_size: Count
    digest: Hex
    pack_digest: Hex | None = None  # a packed member (format 5): of its whole pack

    @model_validator(mode="after")
    def _inside(self) -> "ObjectEntry":
        if self.offset + self.length > self.object_size:
            raise ValueError(f"fragment {self.offset}+{self.length} lies outside its "
                             f"{self.object_size}-byte object")
        return self


class FileEntry(_Strict):
    file_id: FileId
    name_b64: str | None = None  # before `name`: its check reads the real name from it
    name: str
    size: Count
    digest: Hex | None
    digest_alg: Literal["blake3", "sha256"] | None
    mtime: float | None
    scheme: Annotated[str, Field(min_length=1)]
    head_len: Count
    chunk_log2: Annotated[int, Field(ge=0, le=62)] | None
    puf_len: Count | None
    prf_len: Count | None
    prf_digest: Hex | None
    key_id: Hex | None
    public_mode: Literal["replicate", "erasure"] | None
    k: Annotated[int, Field(ge=1, le=255)] | None
    n: Annotated[int, Field(ge=1, le=255)] | None
    block: Annotated[int, Field(ge=1, le=INT64)] | None
    created: float
    objects: list[ObjectEntry]

    @field_validator("name")
    @classmethod
    def _real_name(cls, v: str, info: ValidationInfo) -> str:
        """The real name (the bytes of `name_b64` when given) must be a bare name."""
        try:
            real = from_b64(v, info.data.get("name_b64"))
        except ValueError:
            raise ValueError("name_b64 is not base64") from None
        _bare_name(real)
        return v


class AuditRow(_Strict):
    seq: Seq
    ts: float
    event: Annotated[str, Field(min_length=1)]
    file_id: FileId | None
    detail: str
    prev: Hex
    hash: Hex


class Prev(_Strict):
    seq: Seq
    digest: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class SegmentRef(_Strict):
    index: Count
    name: Annotated[str, AfterValidator(_object_name)]
    digest: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    files: Count


class Segment(_Strict):
    """One segment of a segmented checkpoint (format 6)."""
    format: Literal[6]
    kind: Literal["segment"]
    seq: Seq
    index: Count
    files: list[FileEntry]


class Document(_Strict):
    """Format 6 (older formats are upgraded to it first)."""
    format: Literal[6]
    kind: Literal["checkpoint", "delta"]
    seq: Seq
    base: Seq
    prev: Prev | None
    created: float
    audit_head: Annotated[str, AfterValidator(_head)] | None
    audit: list[AuditRow]
    files: list[FileEntry]
    removed: list[FileId]
    sender_key: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    segments: list[SegmentRef] | None = None  # a segmented checkpoint (format 6)


def check(doc: object, where: str) -> dict:
    """`doc` if it is a well-formed format-6 document (a checkpoint, a delta or a
    segment); IntegrityError naming `where` and the first problem otherwise."""
    try:
        if isinstance(doc, dict) and doc.get("kind") == "segment":
            Segment.model_validate(doc)
            return doc
        d = Document.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "document"
        raise IntegrityError(f"manifest backup {where} is malformed at {loc}: {err['msg']} "
                             "(the backup is not used; recover takes another)") from None
    if d.kind == "delta" and (d.prev is None or d.base > d.seq):
        raise IntegrityError(f"manifest backup {where} is malformed: a delta names no "
                             "predecessor (the backup is not used)")
    if d.kind == "checkpoint" and (d.base != d.seq or d.removed):
        raise IntegrityError(f"manifest backup {where} is malformed: a checkpoint is its "
                             "own base and removes nothing (the backup is not used)")
    if d.segments is not None and (d.kind != "checkpoint" or [r.index for r in d.segments]
                                   != sorted({r.index for r in d.segments})):
        raise IntegrityError(f"manifest backup {where} is malformed: only a checkpoint lists "
                             "segments, each once, in order (the backup is not used)")
    if d.prev is not None and d.prev.seq >= d.seq:
        raise IntegrityError(f"manifest backup {where} is malformed: its predecessor "
                             f"#{d.prev.seq} is not older than it (#{d.seq})")
    return doc  # type: ignore[return-value]  # validated: a dict of this shape
