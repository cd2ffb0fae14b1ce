"""Bytes, requests and errors per store, counted where every store call passes.

Every store the configuration opens is wrapped once (`stores.open_configured`), so the
daemon's uploads, early uploads, verifies, backups and trash all count without the
pipeline knowing. Counters live in memory and start at zero with each process, as
Prometheus counters may: `rate()` and `increase()` handle the reset.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import BinaryIO, Iterator

from backends import AlreadyExists, NotFound, ObjectInfo, Store, StoreError


@dataclass
class StoreTraffic:
    sent_bytes: int = 0
    received_bytes: int = 0
    requests: dict[str, int] | None = None
    errors: int = 0

    def __post_init__(self) -> None:
        self.requests = dict(self.requests or {})


class Traffic:
    """Thread-safe counters keyed by store name; `snapshot()` copies them for a scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: dict[str, StoreTraffic] = {}

    def _get(self, store: str) -> StoreTraffic:
        return self._stores.setdefault(store, StoreTraffic())

    def request(self, store: str, op: str) -> None:
        with self._lock:
            t = self._get(store)
            t.requests[op] = t.requests.get(op, 0) + 1

    def sent(self, store: str, n: int) -> None:
        with self._lock:
            self._get(store).sent_bytes += n

    def received(self, store: str, n: int) -> None:
        with self._lock:
            self._get(store).received_bytes += n

    def error(self, store: str) -> None:
        with self._lock:
            self._get(store).errors += 1

    def snapshot(self) -> dict[str, StoreTraffic]:
        with self._lock:
            return {name: StoreTraffic(t.sent_bytes, t.received_bytes, dict(t.requests),
                                       t.errors) for name, t in self._stores.items()}


#: The process's counters (one daemon, one set of stores).
TRAFFIC = Traffic()

# Answers that are part of the protocol, not failures of the store.
_NOT_ERRORS = (NotFound, AlreadyExists)


class _CountingReader:
    """Counts what the store actually pulled from the source (a retried part counts twice:
    it crossed the network twice)."""

    def __init__(self, src: BinaryIO, on_bytes) -> None:
        self._src, self._on_bytes = src, on_bytes

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        self._on_bytes(len(data))
        return data

    def readinto(self, buf) -> int:
        n = self._src.readinto(buf)
        self._on_bytes(n or 0)
        return n

    def __getattr__(self, name: str):
        return getattr(self._src, name)


class CountingStore(Store):
    """A store whose requests, bytes and errors are counted in `traffic`."""

    def __init__(self, inner: Store, traffic: Traffic = TRAFFIC) -> None:
        self.inner, self.traffic = inner, traffic
        self.name, self.kind = inner.name, inner.kind

    def _call(self, op: str, fn, *args):
        self.traffic.request(self.name, op)
        try:
            return fn(*args)
        except _NOT_ERRORS:
            raise
        except StoreError:
            self.traffic.error(self.name)
            raise

    def put(self, key: str, src: BinaryIO, size: int) -> ObjectInfo:
        reader = _CountingReader(src, lambda n: self.traffic.sent(self.name, n))
        return self._call("put", self.inner.put, key, reader, size)

    def get(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        chunks = self._call("get", self.inner.get, key, start, length)
        return self._count_chunks(chunks)

    def _count_chunks(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in self._errors_counted(chunks):
            self.traffic.received(self.name, len(chunk))
            yield chunk

    def _errors_counted(self, items: Iterator):
        """A transfer cut off part way is the store's failure too."""
        try:
            yield from items
        except _NOT_ERRORS:
            raise
        except StoreError:
            self.traffic.error(self.name)
            raise

    def stat(self, key: str) -> ObjectInfo:
        return self._call("stat", self.inner.stat, key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self._errors_counted(self._call("list", self.inner.list, prefix))

    def delete(self, key: str) -> None:
        self._call("delete", self.inner.delete, key)

    def presign(self, key: str, expires: timedelta) -> str:
        return self.inner.presign(key, expires)  # signed locally: no request

    def close(self) -> None:
        self.inner.close()
