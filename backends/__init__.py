"""Object stores behind one small interface (see `base`), one module per store type.

`open_store` is the one way in: the daemon builds stores from the YAML `stores:` section,
where each entry has a `type` and type-specific settings. Modules are imported on demand,
so a device that only uses a directory does not need any cloud SDK installed.
Wrappers (`prefixed.PrefixedStore`, `retrying.RetryingStore`) are Stores around a Store;
`backoff.Backoff` is the one retry-wait policy.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any

from .base import (
    AlreadyExists,
    Denied,
    NotFound,
    ObjectInfo,
    SourceError,
    Store,
    StoreError,
    Unavailable,
)
from .retrying import RetryingStore, retrying

#: Store type -> (module, class).
KINDS: dict[str, tuple[str, str]] = {
    "local": ("local", "LocalStore"),
    "s3": ("s3", "S3Store"),
    "gcs": ("gcs", "GCSStore"),
    "azure": ("azure", "AzureStore"),
    # Tests and dry runs only: the configuration schema does not accept it (data would not
    # outlive the process).
    "memory": ("memory", "MemoryStore"),
}


def open_store(kind: str, name: str, **settings: Any) -> Store:
    """A store of type `kind` named `name` (used in every error message).

    Settings are the keyword arguments of the type's class; they never hold secrets, only
    the names of environment variables that do. Unknown types or settings raise ValueError.
    """
    try:
        module, cls_name = KINDS[kind]
    except KeyError:
        raise ValueError(f"store {name!r}: unknown type {kind!r} (one of {', '.join(KINDS)})") from None
    cls = getattr(importlib.import_module(f".{module}", __name__), cls_name)
    try:
        inspect.signature(cls).bind(name, **settings)
    except TypeError as exc:
        raise ValueError(f"store {name!r}: bad settings for type {kind!r}: {exc}") from None
    return cls(name, **settings)


__all__ = [
    "AlreadyExists", "Denied", "KINDS", "NotFound", "ObjectInfo", "SourceError", "Store",
    "StoreError", "Unavailable", "RetryingStore", "open_store", "retrying",
]
