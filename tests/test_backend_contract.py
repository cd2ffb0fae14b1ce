"""The store contract (tests/backend_contract.py) over every store type and every wrapper.

Types: local, memory, and s3, gcs, azure over real HTTP against the local servers.
Wrappers, each around a local store and an emulator's: the prefix wrapper, a throttled
store (its put reads through the uploads' `UploadReader` and `Throttle`), a retrying
store, and a retrying store over a flaky one (every third call fails, every download is
cut off once), which passes only if the retries really ride those failures out.
"""
from __future__ import annotations

import io
import itertools
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import BinaryIO, Iterator

import pytest

from backends import ObjectInfo, RetryingStore, Store, Unavailable, open_store
from backends.base import check_key
from backends.memory import MemoryStore
from backends.prefixed import PrefixedStore
from dispersiond.ops.upload import Throttle, UploadReader

from backend_contract import *  # noqa: F403 (the contract's test functions)
from backend_contract import DATA, MiB, PART, SETTING, Source, sizes


class ThrottledStore(Store):
    """Puts read through the uploads' reader under a shared token bucket, as protect's do."""

    def __init__(self, inner: Store, throttle: Throttle) -> None:
        self.inner, self.throttle = inner, throttle
        self.name, self.kind = inner.name, inner.kind

    def put(self, key: str, src: BinaryIO, size: int) -> ObjectInfo:
        return self.inner.put(key, UploadReader(src, self.throttle, None), size)

    def get(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        return self.inner.get(key, start, length)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def presign(self, key: str, expires: timedelta) -> str:
        return self.inner.presign(key, expires)

    def close(self) -> None:
        self.inner.close()


class FlakyStore(Store):
    """Every `every`-th call fails with Unavailable before touching the inner store, and the
    first download of each object (and first listing of each prefix) is cut off after one
    chunk (one name): faults a RetryingStore must hide."""

    def __init__(self, inner: Store, every: int = 3) -> None:
        self.inner, self.every = inner, every
        self.name, self.kind = inner.name, inner.kind
        self.calls = itertools.count(1)
        self.faults = 0
        self.cut: set[tuple[str, str]] = set()
        self.lock = threading.Lock()

    def _maybe_fail(self, verb: str) -> None:
        with self.lock:
            fail = next(self.calls) % self.every == 0
            self.faults += fail
        if fail:
            raise Unavailable(self.name, f"{verb}: injected outage")

    def put(self, key: str, src: BinaryIO, size: int) -> ObjectInfo:
        check_key(key)
        self._maybe_fail("put")
        return self.inner.put(key, src, size)

    def get(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        check_key(key)
        self._maybe_fail("get")
        return self._cut_once(("get", key), self.inner.get(key, start, length))

    def _cut_once(self, what: tuple[str, str], items: Iterator[bytes] | Iterator[str]) -> Iterator:
        first = next(items, None)
        if first is None:
            return
        yield first
        rest = next(items, None)
        with self.lock:
            cut = rest is not None and what not in self.cut  # more to come: cut here, once
            self.cut.add(what)
            self.faults += cut
        if cut:
            raise Unavailable(self.name, f"{what[0]}: connection reset (injected)")
        if rest is not None:
            yield rest
            yield from items

    def stat(self, key: str) -> ObjectInfo:
        check_key(key)
        self._maybe_fail("stat")
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        self._maybe_fail("list")
        yield from self._cut_once(("list", prefix), self.inner.list(prefix))

    def delete(self, key: str) -> None:
        check_key(key)
        self._maybe_fail("delete")
        self.inner.delete(key)

    def presign(self, key: str, expires: timedelta) -> str:
        check_key(key)
        self._maybe_fail("presign")
        return self.inner.presign(key, expires)

    def close(self) -> None:
        self.inner.close()


def no_sleep(_: float) -> None:
    """The retry waits are the backoff's business (tested in test_backend_backoff)."""


#: fixture id -> (store type underneath, wrapper)
WRAPPERS: dict[str, Callable[[Store], Store]] = {
    "bare": lambda s: s,
    "prefixed": lambda s: PrefixedStore(s, "device-7/"),
    "throttled": lambda s: ThrottledStore(s, Throttle(1 << 30)),  # fast, but in 64 KiB slices
    "retrying": lambda s: RetryingStore(s, sleep=no_sleep),
    "retrying-flaky": lambda s: RetryingStore(FlakyStore(s), attempts=4, sleep=no_sleep),
}
CASES = [
    *[(kind, "bare") for kind in ("local", "memory", "s3", "gcs", "azure")],
    ("local", "prefixed"), ("s3", "prefixed"), ("memory", "prefixed"),
    ("local", "throttled"), ("azure", "throttled"),
    ("local", "retrying"), ("gcs", "retrying"),
    ("memory", "retrying-flaky"), ("local", "retrying-flaky"), ("azure", "retrying-flaky"),
]


@pytest.fixture(params=CASES, ids=[f"{w}-{k}" if w != "bare" else k for k, w in CASES])
def store(request: pytest.FixtureRequest, make_store: Callable[..., Store]) -> Iterator[Store]:
    kind, wrapper = request.param
    settings = {SETTING[kind]: PART[kind]}
    if kind == "memory":
        inner = open_store("memory", "test-memory", **settings)
    else:
        inner = make_store(kind, **settings)
    wrapped = WRAPPERS[wrapper](inner)
    yield wrapped
    if kind == "memory":
        inner.close()


# --- what the wrappers add ------------------------------------------------------------------

def test_prefix_wrapper_keeps_everything_under_its_prefix(make_store: Callable[..., Store]) -> None:
    inner = make_store("local")
    inner.put_bytes("other/x", b"not ours")
    store = PrefixedStore(inner, "dev7-")
    store.put_bytes("a/b", b"ours")
    assert sorted(inner.list()) == ["dev7-a/b", "other/x"]
    assert list(store.list()) == ["a/b"] and store.stat("a/b").name == "a/b"
    for name in ("..", "", "./a"):  # glued to the prefix, these would be valid names
        with pytest.raises(ValueError):
            store.put_bytes(name, b"x")
    assert sorted(inner.list()) == ["dev7-a/b", "other/x"]


def test_throttled_put_keeps_to_its_rate() -> None:
    store = ThrottledStore(open_store("memory", "slow"), Throttle(4 * MiB))
    started = time.monotonic()
    store.put("k", Source(DATA[:6 * MiB]), 6 * MiB)  # the first 4 MiB are the bucket's burst
    assert time.monotonic() - started >= 0.4
    assert store.get_bytes("k") == DATA[:6 * MiB]


def test_retrying_flaky_store_really_met_faults(make_store: Callable[..., Store]) -> None:
    """The retrying-flaky cases pass because of the retries: the faults did happen."""
    flaky = FlakyStore(make_store("local", chunk_size=1000))
    store = RetryingStore(flaky, sleep=no_sleep)
    for i in range(6):
        store.put_bytes(f"k{i}", DATA[:5000])
    assert all(store.get_bytes(f"k{i}") == DATA[:5000] for i in range(6))
    assert sorted(store.list()) == [f"k{i}" for i in range(6)]
    assert flaky.faults >= 6


def test_retrying_gives_up_after_its_attempts_with_the_stores_error() -> None:
    inner = open_store("memory", "down")
    waits: list[float] = []
    store = RetryingStore(inner, attempts=3, base_delay=0.5, max_delay=1.0, sleep=waits.append)
    inner.down = True
    with pytest.raises(Unavailable, match="store 'down'"):
        store.stat("k")
    assert len(waits) == 2 and all(0 <= w <= 1.0 for w in waits)
    waits.clear()
    with pytest.raises(Unavailable):
        list(store.list())
    assert len(waits) == 2


def test_retrying_put_replays_only_what_it_can() -> None:
    inner = open_store("memory", "m")
    store = RetryingStore(inner, sleep=no_sleep)
    inner.fail_next(2, verbs={"put"})
    store.put("rewound", io.BytesIO(DATA[:1000]), 1000)  # seekable: rewound for each attempt
    assert inner.get_bytes("rewound") == DATA[:1000]
    inner.fail_next(1, verbs={"put"})  # fails before reading: the stream is untouched
    store.put("fresh", Source(DATA[:1000]), 1000)
    assert inner.get_bytes("fresh") == DATA[:1000]

    class CutsOff(MemoryStore):
        """A put that dies after reading half its source: a plain stream cannot be replayed."""

        def put(self, key: str, src: BinaryIO, size: int) -> ObjectInfo:
            self.reads = getattr(self, "reads", 0) + 1
            src.read(size // 2)
            raise Unavailable(self.name, "put: connection reset")

    cuts = CutsOff("cut")
    with pytest.raises(Unavailable, match="store 'cut': put: connection reset"):
        RetryingStore(cuts, sleep=no_sleep).put("k", Source(DATA[:1000]), 1000)
    assert cuts.reads == 1


def test_retrying_get_resumes_where_the_transfer_stopped() -> None:
    inner = open_store("memory", "m", chunk_size=100)
    inner.put_bytes("k", DATA[:1000])
    flaky = FlakyStore(inner, every=1000)
    store = RetryingStore(flaky, sleep=no_sleep)
    assert store.get_bytes("k", 50, 500) == DATA[50:550]
    assert flaky.faults == 1  # cut once, resumed from byte 150 (not restarted: no duplicates)
