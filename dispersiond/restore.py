"""Moved: the restorer is the `restore` operation, dispersiond/ops/restore.py.

Kept only so that callers not yet moved (the share package) import as before.
"""
from __future__ import annotations

from .layout import Layout as _Layout
from .ops.restore import (ObjectSource, Piece, ShardsDoNotFit, StoreSource, Unrestorable,
                          decode_to, fetch_object, first_intact, gather, gather_shards,
                          layout_of, private_container, public_fragment, rebuild_public,
                          restore)


def Layout(mode: str, puf_len: int, k: int = 1, n: int = 1,  # noqa: N802
           block: int = 0) -> _Layout:
    """The placement part of a layout, as the share package built it (use
    `layout.Layout.of_payload`)."""
    erasure = mode == "erasure"
    return _Layout(size=0, digest=None, digest_alg=None, scheme="se2", head_len=0,
                   chunk_log2=None, puf_len=puf_len, prf_len=0, prf_digest=None, key_id=None,
                   mode=mode, k=k if erasure else None, n=n if erasure else None,
                   block=block if erasure else None)


__all__ = ["Layout", "ObjectSource", "Piece", "ShardsDoNotFit", "StoreSource", "Unrestorable",
           "decode_to", "fetch_object", "first_intact", "gather", "gather_shards", "layout_of",
           "private_container", "public_fragment", "rebuild_public", "restore"]
