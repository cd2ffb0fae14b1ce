"""A prefix wrapper: keeps every object of ours under one prefix of a shared bucket."""
from __future__ import annotations

from datetime import timedelta
from typing import BinaryIO, Iterator

from .base import ObjectInfo, Store, check_key


class PrefixedStore(Store):
    """The inner store seen through `prefix` (e.g. "device-7/"): names in and out are ours.

    Names are checked before the prefix is added, so the wrapper refuses exactly what a
    bare store refuses whatever the prefix (glued to "dev7-", ".." would become valid).
    """

    def __init__(self, inner: Store, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix
        self.name, self.kind = inner.name, inner.kind

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def put(self, key: str, src: BinaryIO, size: int) -> ObjectInfo:
        return self._strip(self.inner.put(self._key(key), src, size))

    def get(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        return self.inner.get(self._key(key), start, length)

    def stat(self, key: str) -> ObjectInfo:
        return self._strip(self.inner.stat(self._key(key)))

    def list(self, prefix: str = "") -> Iterator[str]:
        for name in self.inner.list(self.prefix + prefix):
            yield name[len(self.prefix):]

    def delete(self, key: str) -> None:
        self.inner.delete(self._key(key))

    def presign(self, key: str, expires: timedelta) -> str:
        return self.inner.presign(self._key(key), expires)

    def close(self) -> None:
        self.inner.close()

    def _strip(self, info: ObjectInfo) -> ObjectInfo:
        name = info.name[len(self.prefix):] if info.name.startswith(self.prefix) else info.name
        return ObjectInfo(name, info.size, info.checksums)
