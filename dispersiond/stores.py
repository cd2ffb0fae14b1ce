"""Stores built from the configuration, plus a prefix wrapper shared by every type."""
from __future__ import annotations

from datetime import timedelta
from typing import BinaryIO, Iterator

from backends import ObjectInfo, Store, open_store

from .config import Config, StoreConfig
from .traffic import CountingStore


class PrefixedStore(Store):
    """Keeps every object of ours under one prefix of a shared bucket."""

    def __init__(self, inner: Store, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix
        self.name, self.kind = inner.name, inner.kind

    def put(self, key: str, src: BinaryIO, size: int) -> ObjectInfo:
        return self._strip(self.inner.put(self.prefix + key, src, size))

    def get(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        return self.inner.get(self.prefix + key, start, length)

    def stat(self, key: str) -> ObjectInfo:
        return self._strip(self.inner.stat(self.prefix + key))

    def list(self, prefix: str = "") -> Iterator[str]:
        for name in self.inner.list(self.prefix + prefix):
            yield name[len(self.prefix):]

    def delete(self, key: str) -> None:
        self.inner.delete(self.prefix + key)

    def presign(self, key: str, expires: timedelta) -> str:
        return self.inner.presign(self.prefix + key, expires)

    def close(self) -> None:
        self.inner.close()

    def _strip(self, info: ObjectInfo) -> ObjectInfo:
        return ObjectInfo(info.name[len(self.prefix):] if info.name.startswith(self.prefix)
                          else info.name, info.size, info.checksums)


def open_configured(cfg: Config, sc: StoreConfig) -> Store:
    settings = sc.backend_settings()
    if sc.type == "local":
        settings["path"] = str(cfg.path(settings["path"]))
    store = open_store(sc.type, sc.name, **settings)
    store = CountingStore(store)  # metrics: bytes, requests and errors per store
    return PrefixedStore(store, sc.prefix) if sc.prefix else store


class Stores:
    """Opens each configured store on first use, so a dead cloud only hurts what needs it."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._open: dict[str, Store] = {}

    def __getitem__(self, name: str) -> Store:
        if name not in self._open:
            self._open[name] = open_configured(self.cfg, self.cfg.store(name))
        return self._open[name]

    def close(self) -> None:
        for s in self._open.values():
            s.close()
        self._open.clear()
