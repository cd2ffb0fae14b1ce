"""Stores built from the configuration (a configured `prefix` wraps the store in `PrefixedStore`)."""
from __future__ import annotations

from backends import Store, open_store
from backends.budget import SHARED as PART_BUDGET
from backends.prefixed import PrefixedStore

from .config import Config, StoreConfig
from .traffic import CountingStore
from .units import parse_size

__all__ = ["PrefixedStore", "Stores", "open_configured"]


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
        PART_BUDGET.set_limit(parse_size(cfg.upload_memory))  # one budget per process

    def __getitem__(self, name: str) -> Store:
        if name not in self._open:
            self._open[name] = open_configured(self.cfg, self.cfg.store(name))
        return self._open[name]

    def attach(self, name: str, store: Store) -> None:
        """Use `store` for `name` from now on (the one opened before, if any, is closed)."""
        old = self._open.pop(name, None)
        if old is not None:
            old.close()
        self._open[name] = store

    def close(self) -> None:
        for s in self._open.values():
            s.close()
        self._open.clear()
