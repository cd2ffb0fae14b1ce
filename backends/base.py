"""The one small interface every store type implements, and its error family.

Modelled on restic's backend: a handful of verbs over opaque object names.
Stores never see file names, paths or plaintext: callers hand them random ids
and ciphertext only.
"""
from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import BinaryIO, Iterator

class StoreError(Exception):
    """Base of every store failure. The message always names the store."""

    retryable = False

    def __init__(self, store: str, message: str) -> None:
        super().__init__(f"store {store!r}: {message}")
        self.store = store


class NotFound(StoreError):
    """The object does not exist."""


class AlreadyExists(StoreError):
    """A conditional create found the object already there."""


class Unavailable(StoreError):
    """The store could not be reached or answered 5xx / throttling: try again later."""

    retryable = True


class Denied(StoreError):
    """Credentials missing or refused (401/403): retrying will not help."""


class SourceError(Exception):
    """The stream handed to `put` failed or ended early: the store is not to blame.

    The original exception, if any, is `__cause__`. Nothing is left under the key.
    """


@dataclass(frozen=True)
class ObjectInfo:
    """What `stat` knows without downloading the object."""

    name: str
    size: int
    # The store's own checksums, keyed by algorithm ("md5", "crc32c", "sha256", "etag").
    # Hex strings; empty when the store offers none.
    checksums: dict[str, str] = field(default_factory=dict)


class Store(ABC):
    """An object store holding opaque, immutable objects.

    Objects are written once (`put` with conditional create) and never modified in
    place; replacing one is delete + put.
    """

    #: The store's name from the configuration; used in every error message.
    name: str
    #: "local", "s3", "gcs", "azure" or "memory".
    kind: str

    @abstractmethod
    def put(self, key: str, src: BinaryIO, size: int) -> ObjectInfo:
        """Stream exactly `size` bytes from `src` into a new object.

        Fails with AlreadyExists if `key` exists. A failed or interrupted put never
        leaves an object visible under `key` (callers rely on this to resume).
        """

    @abstractmethod
    def get(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Yield the object's bytes (or the range [start, start+length)) in chunks.

        A missing object raises NotFound from the call itself, before any iteration; a
        range past the end yields what there is (possibly nothing). A transfer cut off
        part way raises Unavailable: an iterator never ends early in silence.
        """

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size and the store's own checksums of one object; NotFound if absent."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Names of the objects whose name starts with `prefix`."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object. Deleting an absent object raises NotFound."""

    @abstractmethod
    def presign(self, key: str, expires: timedelta) -> str:
        """A link that lets anyone read this one object until `expires` has passed."""

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Convenience for small objects."""
        import io

        return self.put(key, io.BytesIO(data), len(data))

    def get_bytes(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        """Convenience: the whole object (or range) as bytes."""
        return b"".join(self.get(key, start, length))

    def close(self) -> None:
        """Release connections; the default has nothing to release."""

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- helpers shared by the store modules -------------------------------------------

#: Longest presigned link the clouds accept (S3 SigV4 and GCS V4 cap it at 7 days).
MAX_LINK_LIFETIME = timedelta(days=7)

_SECRET = re.compile(
    r"((?:sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature"
    r"|x-goog-credential|accountkey|sharedaccesssignature|access_token|token)=)[^&;\s'\"]+"
    r"|(bearer\s+)\S+",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """Blank out signatures, keys and tokens that SDK messages may quote from URLs."""
    return _SECRET.sub(lambda m: (m.group(1) or m.group(2)) + "REDACTED", text)


def check_key(key: str) -> str:
    """Refuse names that could escape a directory or mean different things per store.

    Names are '/'-separated segments; none may be empty, '.' or '..', and no NUL or
    backslash may appear, so every store type accepts exactly the same set of names.
    """
    if not isinstance(key, str) or not key or len(key.encode()) > 1024:
        raise ValueError(f"invalid object name {key!r}")
    if "\0" in key or "\\" in key or any(s in ("", ".", "..") for s in key.split("/")):
        raise ValueError(f"invalid object name {key!r}")
    return key


def check_range(start: int, length: int | None) -> None:
    """Ranges are [start, start+length); both non-negative."""
    if start < 0 or (length is not None and length < 0):
        raise ValueError(f"invalid range start={start} length={length}")


def link_seconds(expires: timedelta) -> int:
    """Whole seconds of a link's lifetime, within what every cloud accepts."""
    seconds = int(expires.total_seconds())
    if not 1 <= seconds <= MAX_LINK_LIFETIME.total_seconds():
        raise ValueError(f"link lifetime must be 1 s .. 7 days, not {expires}")
    return seconds


def secret_from_env(store: str, variable: str) -> str:
    """Read a credential from the environment variable the settings name.

    Settings hold only the variable's name, so no secret lands in a config file or log.
    """
    value = os.environ.get(variable, "")
    if not value:
        raise Denied(store, f"environment variable {variable} is not set")
    return value


def read_exact(src: BinaryIO, n: int) -> bytes:
    """Exactly `n` bytes from `src`, however short its reads; SourceError if it ends or fails.

    Some SDKs treat a short read as end of file and upload a truncated object; reading
    here, and only here, keeps that from ever happening.
    """
    pieces: list[bytes] = []
    got = 0
    while got < n:
        try:
            piece = src.read(n - got)
        except Exception as exc:
            raise SourceError(f"source failed after {got} of {n} bytes: {exc!r}") from exc
        if not piece:
            raise SourceError(f"source ended after {got} of {n} bytes")
        pieces.append(piece)
        got += len(piece)
    return b"".join(pieces)


def iter_parts(src: BinaryIO, size: int, part_size: int) -> Iterator[bytes]:
    """`size` bytes of `src` as consecutive parts of at most `part_size` bytes (bounded memory)."""
    for offset in range(0, size, part_size):
        yield read_exact(src, min(part_size, size - offset))


def classify_status(status: int | None) -> type[StoreError]:
    """The error family an HTTP status belongs to (precondition failures are decided by the caller)."""
    if status == 404:
        return NotFound
    if status in (401, 403):
        return Denied
    if status is not None and (status in (408, 429) or status >= 500):
        return Unavailable
    return StoreError


@contextmanager
def translating(
    store: str,
    what: str,
    classify: Callable[[BaseException], type[StoreError] | None],
) -> Iterator[None]:
    """Turn SDK exceptions into the store error family, with the store's name and no secrets.

    `classify` returns the family for an SDK exception, or None for exceptions that are not
    the SDK's (our own ValueError, a failing source), which pass through unchanged. The SDK
    exception is not chained: its text may quote URLs with signatures, and logs print chains.
    """
    try:
        yield
    except (StoreError, SourceError):
        raise
    except Exception as exc:
        family = classify(exc)
        if family is None:
            raise
        detail = redact(f"{type(exc).__name__}: {exc}".splitlines()[0])[:300]
        raise family(store, f"{what}: {detail}") from None

