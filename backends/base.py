"""The one small interface every store type implements, and its error family.

Modelled on restic's backend: a handful of verbs over opaque object names.
Stores never see file names, paths or plaintext: callers hand them random ids
and ciphertext only.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
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
    #: "local", "s3", "gcs" or "azure".
    kind: str

    @abstractmethod
    def put(self, key: str, src: BinaryIO, size: int) -> ObjectInfo:
        """Stream exactly `size` bytes from `src` into a new object.

        Fails with AlreadyExists if `key` exists. A failed or interrupted put never
        leaves an object visible under `key` (callers rely on this to resume).
        """

    @abstractmethod
    def get(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Yield the object's bytes (or the range [start, start+length)) in chunks."""

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
