"""What every store promises: test functions over a `store` fixture (one suite, every backend).

It lives with the tests, not in `backends/`: it needs pytest and the suite's servers, and
no code outside the tests runs it. A test module imports these functions (`from
backend_contract import *`) and provides a `store` fixture; pytest then runs each of
them over every store that fixture yields: a store type, or a wrapper around one.

The fixture's store reports the `kind` of the store type underneath (wrappers keep it);
`PART[kind]` is the unit that type reads from a source at a time (and, but for local and
memory, sends per part), set small through `SETTING[kind]` so multipart paths run on a
few MiB. What a type does beyond this contract (its own checksums, outages, credentials)
is tested in tests/test_backends.py.
"""
from __future__ import annotations

import hashlib
import io
import os
import urllib.request
from datetime import timedelta
from typing import Callable

import google_crc32c
import pytest

from backends import AlreadyExists, NotFound, SourceError, Store, StoreError

MiB = 1 << 20
#: The unit each store reads from a source at a time (and, but for local/memory, sends per part).
PART = {"local": MiB // 4, "memory": MiB // 4, "s3": 5 * MiB, "gcs": MiB, "azure": MiB}  # S3's minimum
SETTING = {"local": "chunk_size", "memory": "chunk_size", "s3": "part_size", "gcs": "chunk_size",
           "azure": "block_size"}
DATA = os.urandom(2 * PART["s3"] + 12345)


def sizes(kind: str) -> dict[str, int]:
    return {"0 B": 0, "1 B": 1, "5 MiB": 5 * MiB, "multipart": 2 * PART[kind] + 12345}


class Source(io.RawIOBase):
    """A stream over `data` that returns short reads and records the largest read asked of it.

    `on_half` runs once when half the bytes have been handed out (to kill a server or fail).
    Not seekable: a store (or wrapper) cannot rewind it.
    """

    def __init__(self, data: bytes, on_half: Callable[[], None] | None = None) -> None:
        self.data, self.pos, self.max_ask, self.on_half = data, 0, 0, on_half

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            raise AssertionError("a store read the whole source at once")
        self.max_ask = max(self.max_ask, n)
        if self.on_half and self.pos >= len(self.data) // 2:
            action, self.on_half = self.on_half, None
            action()
        piece = self.data[self.pos:self.pos + min(n, 100_000)]
        self.pos += len(piece)
        return piece


def absent(store: Store, key: str) -> bool:
    with pytest.raises(NotFound):
        store.stat(key)
    return key not in set(store.list())


def fetch(url: str) -> bytes:
    """Plain HTTP (or file://), no SDK: what a recipient of a link has."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def secrets_in_env() -> list[str]:
    """Credential values the suite put in the environment (they must never be quoted)."""
    return [v for k, v in os.environ.items()
            if k.startswith("DISPERSIOND_TEST_") and len(v) >= 6]


def correct_checksum(alg: str, value: str, data: bytes) -> bool:
    if alg == "crc32c":
        return value == google_crc32c.value(data).to_bytes(4, "big").hex()
    if alg == "etag":  # a multipart ETag is over the parts ("<md5 of md5s>-<parts>")
        return value == hashlib.md5(data).hexdigest() or value.rsplit("-", 1)[-1].isdigit()
    return value == hashlib.new(alg, data).hexdigest()


# --- the verbs ---------------------------------------------------------------------

@pytest.mark.parametrize("label", ["0 B", "1 B", "5 MiB", "multipart"])
def test_round_trip(store: Store, label: str) -> None:
    size = sizes(store.kind)[label]
    src = Source(DATA[:size])
    info = store.put(f"rt/{label}", src, size)
    assert (info.name, info.size) == (f"rt/{label}", size)
    assert src.max_ask <= PART[store.kind], "reads from the source must be bounded by the part size"
    assert store.get_bytes(f"rt/{label}") == DATA[:size]
    assert store.stat(f"rt/{label}").size == size


@pytest.mark.parametrize("label", ["1 B", "multipart"])
def test_stat_checksums_are_the_puts_and_correct(store: Store, label: str) -> None:
    data = DATA[:sizes(store.kind)[label]]
    put = store.put("sum", io.BytesIO(data), len(data))
    stat = store.stat("sum")
    assert stat.size == len(data) and stat.name == "sum"
    assert put.checksums == stat.checksums
    for alg, value in stat.checksums.items():
        assert correct_checksum(alg, value, data), (alg, value)


def test_list_by_prefix(store: Store) -> None:
    names = ["p/a", "p/b/c", "p/b/d%", "pa", "q/a", "a", "a/b"]  # "a" and "a/b" side by side
    for name in names:
        store.put_bytes(name, name.encode())
    assert sorted(store.list()) == sorted(names)
    assert sorted(store.list("p/")) == ["p/a", "p/b/c", "p/b/d%"]
    assert sorted(store.list("p")) == ["p/a", "p/b/c", "p/b/d%", "pa"]
    assert sorted(store.list("p/b/")) == ["p/b/c", "p/b/d%"]
    assert sorted(store.list("a")) == ["a", "a/b"]
    assert list(store.list("zz")) == [] and list(store.list("p/x/")) == []
    assert list(store.list("../")) == [] and list(store.list("/")) == []
    assert store.get_bytes("a") == b"a" and store.get_bytes("p/b/d%") == b"p/b/d%"


@pytest.mark.parametrize("label", ["1 B", "multipart"])
def test_conditional_create_refuses_and_keeps_the_first(store: Store, label: str) -> None:
    size = sizes(store.kind)[label]
    first, second = DATA[:size], DATA[:size][::-1]
    assert first != second or size < 2
    store.put("once", io.BytesIO(first), size)
    with pytest.raises(AlreadyExists, match=store.name):
        store.put("once", Source(second), size)
    assert store.get_bytes("once") == first
    assert store.stat("once").size == size


def test_delete_then_not_found(store: Store) -> None:
    store.put_bytes("gone", b"x")
    store.delete("gone")
    for call in (lambda: store.get("gone"), lambda: store.stat("gone"), lambda: store.delete("gone")):
        with pytest.raises(NotFound, match=store.name):
            call()
    assert "gone" not in set(store.list())
    store.put_bytes("gone", b"again")  # the name is free again
    assert store.get_bytes("gone") == b"again"


def test_ranged_get(store: Store) -> None:
    part, size = PART[store.kind], sizes(store.kind)["multipart"]
    data = DATA[:size]
    store.put("r", io.BytesIO(data), size)
    for start, length in [(0, 0), (0, 10), (7, 1), (part - 5, 10), (part - 1, part + 2),
                          (size - 7, None), (size - 3, 10), (size, 5), (size + 100, None), (5, None)]:
        want = data[start:] if length is None else data[start:start + length]
        assert store.get_bytes("r", start, length) == want, (start, length)
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b"" and store.get_bytes("empty", 0, 5) == b""
    with pytest.raises(ValueError):
        store.get_bytes("r", -1)
    with pytest.raises(ValueError):
        store.get_bytes("r", 0, -1)
    with pytest.raises(NotFound):
        store.get_bytes("missing", 3, 4)


def test_get_streams_in_chunks(store: Store) -> None:
    size = sizes(store.kind)["multipart"]
    store.put("big", io.BytesIO(DATA[:size]), size)
    chunks = list(store.get("big"))
    assert len(chunks) > 1 and max(map(len, chunks)) <= max(PART[store.kind], MiB)
    assert b"".join(chunks) == DATA[:size]


def test_missing_object_raises_from_the_call_itself(store: Store) -> None:
    """NotFound comes from `get(...)`, before any iteration, so callers can tell absent from cut off."""
    with pytest.raises(NotFound):
        store.get("nothing/here")


@pytest.mark.parametrize("name", ["", "/abs", "a/", "a//b", "a/../b", "..", "./a", "a\\b", "a\0b"])
def test_invalid_names_are_refused_before_any_io(store: Store, name: str) -> None:
    for call in (lambda: store.put_bytes(name, b"x"), lambda: store.get(name), lambda: store.stat(name),
                 lambda: store.delete(name), lambda: store.presign(name, timedelta(minutes=1))):
        with pytest.raises(ValueError):
            call()


# --- failures leave nothing behind, and say where -----------------------------------

@pytest.mark.parametrize("label", ["1 B", "5 MiB", "multipart"])
def test_failing_source_leaves_no_object(store: Store, label: str) -> None:
    size = sizes(store.kind)[label]

    def fail() -> None:
        raise OSError("disk read error")

    with pytest.raises(SourceError) as caught:
        store.put("half", Source(DATA[:size], on_half=fail), size)
    assert isinstance(caught.value.__cause__, OSError)
    with pytest.raises(SourceError, match="ended after"):
        store.put("short", io.BytesIO(DATA[:size - 1]), size)
    assert absent(store, "half") and absent(store, "short")
    store.put("half", io.BytesIO(DATA[:size]), size)  # nothing in the way of a retry
    assert store.get_bytes("half") == DATA[:size]


def test_errors_are_the_familys_name_the_store_and_quote_no_secret(store: Store) -> None:
    store.put_bytes("there", b"x")
    calls: list[tuple[Callable[[], object], type[StoreError]]] = [
        (lambda: store.stat("not-there"), NotFound),
        (lambda: store.get("not-there"), NotFound),
        (lambda: store.delete("not-there"), NotFound),
        (lambda: store.put_bytes("there", b"y"), AlreadyExists),
    ]
    for call, family in calls:
        with pytest.raises(family) as caught:
            call()
        message = str(caught.value)
        assert isinstance(caught.value, StoreError) and caught.value.store == store.name
        assert message.startswith(f"store {store.name!r}: ") and "\n" not in message
        assert not [s for s in secrets_in_env() if s in message]
        assert caught.value.__cause__ is None  # SDK exceptions (which may quote URLs) are not chained


# --- links ------------------------------------------------------------------------------

def test_presigned_link_reads_the_object(store: Store) -> None:
    data = DATA[:3000]
    store.put_bytes("shared/one", data)
    url = store.presign("shared/one", timedelta(minutes=5))
    assert fetch(url) == data
    for bad in (timedelta(0), timedelta(days=8)):
        with pytest.raises(ValueError):
            store.presign("shared/one", bad)


__all__ = [name for name in dir() if name.startswith("test_")]
