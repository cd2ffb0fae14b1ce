"""Objects in a dict: the fast store for unit tests of the operations and the daemon's pieces.

Same promises as the local store (conditional create, ranged and chunked get, NotFound,
the same name rules, nothing left by a failed put), none of its I/O. Not a place for
data: everything is gone when the process ends, which is why the configuration schema
does not accept it (`open_store("memory", name)` does, for tests and dry runs).

Links: `presign` starts, on first use, a small HTTP server on 127.0.0.1 that serves each
link's object until it expires (403 "link expired" after, 404 once the object is gone).
Links carry a random token, never the object's name, and the server logs nothing.

Faults: `fail_next(n, error)` makes the next `n` calls fail, `down = True` makes every
call raise Unavailable, so a test can make a store fail without a subprocess.
"""
from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Collection
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO, Iterator

from .base import (
    AlreadyExists,
    NotFound,
    ObjectInfo,
    Store,
    StoreError,
    Unavailable,
    check_key,
    check_range,
    iter_parts,
    link_seconds,
)

VERBS = frozenset({"put", "get", "stat", "list", "delete", "presign"})


class MemoryStore(Store):
    """Immutable objects as bytes in a dict, behind one lock; thread-safe."""

    kind = "memory"

    def __init__(self, name: str, *, chunk_size: int = 1 << 20,
                 checksums: Collection[str] = ()) -> None:
        """`checksums`: hashlib algorithms `stat` reports ("sha256", "md5"), as a cloud
        would; none by default, like the local store."""
        for alg in checksums:
            hashlib.new(alg)  # an unknown algorithm fails here, not on the first put
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, not {chunk_size}")
        self.name, self.chunk_size, self.checksums = name, chunk_size, tuple(checksums)
        self.down = False
        self._objects: dict[str, tuple[bytes, dict[str, str]]] = {}
        self._faults: list[tuple[frozenset[str], StoreError]] = []
        self._lock = threading.Lock()
        self._links: _LinkServer | None = None

    # --- faults -----------------------------------------------------------------------

    def fail_next(self, n: int = 1, error: StoreError | None = None,
                  verbs: Collection[str] = VERBS) -> None:
        """The next `n` calls of `verbs` raise `error` (default: Unavailable)."""
        unknown = set(verbs) - VERBS
        if unknown:
            raise ValueError(f"unknown verbs {sorted(unknown)} (one of {sorted(VERBS)})")
        error = error or Unavailable(self.name, "injected fault: try again later")
        with self._lock:
            self._faults.extend([(frozenset(verbs), error)] * n)

    def _fault(self, verb: str) -> None:
        if self.down:
            raise Unavailable(self.name, f"{verb}: store is down (injected fault)")
        with self._lock:
            for i, (verbs, error) in enumerate(self._faults):
                if verb in verbs:
                    del self._faults[i]
                    raise error

    # --- the verbs --------------------------------------------------------------------

    def put(self, key: str, src: BinaryIO, size: int) -> ObjectInfo:
        check_key(key)
        self._fault("put")
        # Read it all before taking the name: a failing source leaves nothing behind.
        data = b"".join(iter_parts(src, size, self.chunk_size))
        sums = {alg: hashlib.new(alg, data).hexdigest() for alg in self.checksums}
        with self._lock:
            if key in self._objects:
                raise AlreadyExists(self.name, f"put {key!r}: object exists")
            self._objects[key] = (data, sums)
        return ObjectInfo(key, size, dict(sums))

    def _data(self, key: str, verb: str) -> tuple[bytes, dict[str, str]]:
        with self._lock:
            try:
                return self._objects[key]
            except KeyError:
                raise NotFound(self.name, f"{verb} {key!r}: no such object") from None

    def get(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        check_range(start, length)
        check_key(key)
        self._fault("get")
        data, _ = self._data(key, "get")
        end = len(data) if length is None else min(len(data), start + length)
        return self._chunks(data, start, end)

    def _chunks(self, data: bytes, start: int, end: int) -> Iterator[bytes]:
        view = memoryview(data)
        for offset in range(start, end, self.chunk_size):
            yield bytes(view[offset:min(end, offset + self.chunk_size)])

    def stat(self, key: str) -> ObjectInfo:
        check_key(key)
        self._fault("stat")
        data, sums = self._data(key, "stat")
        return ObjectInfo(key, len(data), dict(sums))

    def list(self, prefix: str = "") -> Iterator[str]:
        self._fault("list")
        with self._lock:
            names = [k for k in self._objects if k.startswith(prefix)]
        return iter(sorted(names))

    def delete(self, key: str) -> None:
        check_key(key)
        self._fault("delete")
        with self._lock:
            if self._objects.pop(key, None) is None:
                raise NotFound(self.name, f"delete {key!r}: no such object")

    def presign(self, key: str, expires: timedelta) -> str:
        check_key(key)
        seconds = link_seconds(expires)
        self._fault("presign")
        with self._lock:
            if self._links is None:
                self._links = _LinkServer(self)
            links = self._links
        return links.issue(key, time.time() + seconds)

    def close(self) -> None:
        with self._lock:
            links, self._links = self._links, None
        if links is not None:
            links.close()

    def _serve(self, key: str) -> bytes | None:
        """The object's bytes for a link, None if gone; Unavailable while the store is down."""
        if self.down:
            raise Unavailable(self.name, "link: store is down (injected fault)")
        with self._lock:
            found = self._objects.get(key)
        return None if found is None else found[0]


class _LinkServer:
    """HTTP on 127.0.0.1 serving presigned links: token -> (object name, expiry time)."""

    def __init__(self, store: MemoryStore) -> None:
        self.links: dict[str, tuple[str, float]] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server naming)
                status, body = server.answer(self.path.lstrip("/"), store)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                """Silent: a request line holds the link's token."""

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.http.server_address[1]}/"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True,
                                       name=f"memory-store-links-{store.name}")
        self.thread.start()

    def issue(self, key: str, expires_at: float) -> str:
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.links[token] = (key, expires_at)
        return self.base + token

    def answer(self, token: str, store: MemoryStore) -> tuple[int, bytes]:
        with self.lock:
            link = self.links.get(token)
        if link is None:
            return 403, b"link refused: unknown signature"
        key, expires_at = link
        if time.time() >= expires_at:
            return 403, b"link expired"
        try:
            data = store._serve(key)
        except Unavailable:
            return 503, b"store unavailable"
        return (404, b"object not found") if data is None else (200, data)

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.thread.join(timeout=5)
