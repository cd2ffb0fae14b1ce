"""What the state database holds, as Python values: file states and their legal moves,
and one row of `files` and of `objects`."""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..display import as_text, from_stored, is_text, raw_bytes
from ..errors import DispersiondError


class FileState(str, Enum):
    """A file's step in the pipeline; the values are what the database stores.

    claiming: the daemon recorded an inbox file and is moving it into claimed/ (start-up
    finishes or undoes it); claimed: original taken, nothing written; encoded: fragments
    on local disk, objects planned; committed: restorable (manifest written), some uploads
    may still be pending; done: every object confirmed, after-policy applied; failed:
    quarantined."""

    CLAIMING = "claiming"
    CLAIMED = "claimed"
    ENCODED = "encoded"
    COMMITTED = "committed"
    DONE = "done"
    FAILED = "failed"

    def __str__(self) -> str:  # in messages and f-strings: the stored word, not the name
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class ObjectState(str, Enum):
    """An object's upload: planned, confirmed, or found broken by verify/restore."""

    PENDING = "pending"
    UPLOADED = "uploaded"
    MISSING = "missing"
    CORRUPT = "corrupt"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


S = FileState
#: The only legal moves. None: a new row (an inbox claim, a `put`, a `recover`).
#: committed/done -> committed is a rekey (new objects, not yet in a backup).
#: encoded -> claimed: a small file whose held public fragments died with the process
#: (docs/FORMAT.md §8), encoded again; nothing of it was ever restorable.
TRANSITIONS: dict[FileState | None, frozenset[FileState]] = {
    None: frozenset({S.CLAIMING, S.CLAIMED, S.DONE}),
    S.CLAIMING: frozenset({S.CLAIMED}),
    S.CLAIMED: frozenset({S.ENCODED, S.FAILED}),
    S.ENCODED: frozenset({S.COMMITTED, S.CLAIMED}),
    S.COMMITTED: frozenset({S.DONE, S.COMMITTED}),
    S.DONE: frozenset({S.COMMITTED}),
    S.FAILED: frozenset(),
}
STATES = tuple(FileState)
#: Files a manifest backup holds: restorable from the stores.
PROTECTED = (S.COMMITTED, S.DONE)


class IllegalTransition(DispersiondError):
    """A state change the pipeline never makes: a bug, refused before it is written."""


def check_transition(file_id: str, old: str | None, new: str) -> FileState:
    """`new` as a FileState if a file in state `old` may move there; raises otherwise."""
    target = FileState(new)
    source = None if old is None else FileState(old)
    if target not in TRANSITIONS[source]:
        raise IllegalTransition(
            f"file {file_id}: refused to change its state from {source or '(new)'} to "
            f"{target} (not a step of the pipeline); nothing was written. Please report it")
    return target


def sources_of(new: FileState) -> tuple[str, ...]:
    """The states a file may be in to move to `new` (None excluded)."""
    return tuple(s.value for s, targets in TRANSITIONS.items() if s is not None
                 and new in targets)


@dataclass
class FileRow:
    file_id: str
    name: str
    size: int
    digest: str | None
    mtime: float | None
    scheme: str
    head_len: int
    chunk_log2: int | None
    puf_len: int | None
    container_len: int | None  # of the private container
    container_digest: str | None
    digest_alg: str | None
    key_id: str | None
    public_mode: str | None
    k: int | None
    n: int | None
    block: int | None
    state: FileState
    source: str | None
    created: float
    updated: float
    attempts: int
    next_try: float | None
    error: str | None
    backed_up: int

    def __post_init__(self) -> None:
        self.state = FileState(self.state)

    @classmethod
    def from_db(cls, row: Any) -> "FileRow":
        """A row as read (name and source back to their exact bytes, see `file_columns`).

        Built without `__init__` once its columns are known to be exactly the fields: a
        burst reads each file's row several times on the loop the encoder shares the GIL
        with, and the keyword call and the Enum lookup were two thirds of a row's cost
        (11.7 us against 3.8 us a row)."""
        d = row_dict(row)
        for col in RAW_COLUMNS:
            d[col] = from_stored(d[col], d.pop(f"{col}_raw", None))
        keys = tuple(d)
        if keys not in _COLUMNS_CHECKED:
            if set(keys) != _FILE_FIELDS:
                return cls(**d)  # raises, naming what is missing or extra
            _COLUMNS_CHECKED.add(keys)
        d["state"] = _STATE_OF.get(d["state"]) or FileState(d["state"])
        f = cls.__new__(cls)
        f.__dict__ = d
        return f


_FILE_FIELDS = frozenset(FileRow.__dataclass_fields__)
_COLUMNS_CHECKED: set[tuple[str, ...]] = set()  # orders of columns seen to be the fields
_STATE_OF = {s.value: s for s in FileState}


def row_dict(row: Any) -> dict[str, Any]:
    """A row as a dict: zipped with its keys, ~3x quicker than dict() of an sqlite3.Row
    (a batch reads thousands of rows on the loop the encoders share the GIL with)."""
    return dict(zip(row.keys(), row)) if isinstance(row, sqlite3.Row) else dict(row)


#: Columns of `files` whose values may be names that are not valid UTF-8 (os.fsdecode's
#: surrogates): SQLite TEXT must be UTF-8, so their exact bytes go into `<col>_raw`.
RAW_COLUMNS = ("name", "source")


def file_columns(fields: dict[str, Any]) -> dict[str, Any]:
    """Values of `files` as they are stored: a name or path that is not valid UTF-8 as
    its escaped text plus its exact bytes in `<col>_raw`; any other text made valid."""
    out = {}
    for key, value in fields.items():
        if key in RAW_COLUMNS:
            out[f"{key}_raw"] = None if value is None or is_text(value) else raw_bytes(value)
        out[key] = as_text(value) if isinstance(value, str) else value
    return out


@dataclass
class ObjectRow:
    id: int
    file_id: str
    role: str
    shard: int | None
    store: str
    name: str
    offset: int
    length: int
    object_size: int
    digest: str
    state: str
    checked: float | None
    digest_alg: str | None  # its file's: what `digest` is made with
    pack_digest: str | None = None  # a packed member: of its whole pack (docs/FORMAT.md §8.4)

    @property
    def packed(self) -> bool:
        """A member of a pack object (its `name` is the pack's) rather than an object of
        its own."""
        return self.pack_digest is not None

    @property
    def fragment_offset(self) -> int:
        """Where the fragment starts in what a fetch of this object yields: a packed
        member is fetched as exactly its own bytes."""
        return 0 if self.packed else self.offset


@dataclass(frozen=True)
class PackRow:
    """A pack object on one store (docs/FORMAT.md §8)."""

    store: str
    name: str
    kind: str
    size: int
    digest: str
    digest_alg: str
    body_len: int | None
    members: int | None
    created: float
    state: str
    checked: float | None
