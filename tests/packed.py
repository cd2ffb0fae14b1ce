"""Helpers for tests of packs: files protected together (so their fragments share packs),
every stored object with its pack mask taken off, and what the stores hold that the state
does not name."""
from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import Iterator

from dispersiond.archive import Archive, open_archive
from dispersiond.config import load_config
from dispersiond.ops.finalize import finish
from dispersiond.ops.packing import send_objects
from dispersiond.ops.protect import admit, commit_many, encode
from dispersiond.pack import layout


@contextlib.contextmanager
def archive(cfg: Path) -> Iterator[Archive]:
    """The configured archive, locked, over its real (local) stores."""
    with open_archive(load_config(cfg), exclusive=True) as v:
        yield v


def records(tmp: Path, n: int, size: int = 20_000, seed: int = 7) -> list[Path]:
    """`n` files of random bytes, all of one size (their members then weigh the same)."""
    rng = random.Random(seed)
    folder = tmp / "records"
    folder.mkdir(exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"rec-{i:02d}.dcm"
        p.write_bytes(rng.randbytes(size))
        out.append(p)
    return out


def protect_together(v: Archive, paths: list[Path]) -> list[str]:
    """Admit and encode every file, then send all their objects in one go: the small
    fragments share one pack per store and kind. Returns the file ids, done."""
    fids = [admit(v, p) for p in paths]
    for fid in fids:
        encode(v, fid)
    pending = [o for fid in fids for o in v.db.objects(fid, states=("pending",))]
    assert send_objects(v, pending) == []
    commit_many(v, [v.db.file(fid) for fid in fids])
    finish(v, fids)
    assert {v.db.file(fid).state for fid in fids} == {"done"}
    return fids


def stored(v: Archive) -> Iterator[tuple[str, str, bytes]]:
    """(store, name, bytes) of every object on every store, and of each one whose name
    could be a pack's, the same bytes with the pack mask (of that name) taken off."""
    for sc in v.cfg.stores:
        s = v.store(sc.name)
        for name in s.list(""):
            data = s.get_bytes(name)
            yield sc.name, name, data
            if len(name) == 32 and all(c in "0123456789abcdef" for c in name):
                yield sc.name, name, layout.mask(layout.body_key(v.key, name), 0, data)


def own_pieces(secret: bytes, others: list[bytes], window: int = 32) -> list[bytes]:
    """The `window`-byte slices of `secret` found in none of `others` (containers share a
    header: constant bytes, the key's id), so finding one anywhere means `secret` is there."""
    pieces = [secret[i:i + window] for i in range(0, max(1, len(secret) - window + 1), window)]
    out = [p for p in pieces if not any(p in o for o in others)]
    assert len(out) >= len(pieces) - 2, "the secret is mostly shared bytes: a useless probe"
    return out


def holders(v: Archive, pieces: list[bytes]) -> set[tuple[str, str]]:
    """The objects holding any of `pieces`, masked or not."""
    return {(store, name) for store, name, data in stored(v) if any(p in data for p in pieces)}


def container_pieces(v: Archive, fid: str) -> list[bytes]:
    """What identifies file `fid`'s private container among every other file's."""
    others = [v.container(f.file_id) for f in v.db.files()
              if f.file_id != fid and v.has_container(f.file_id)]
    return own_pieces(v.container(fid), others)


def unaccounted(v: Archive) -> dict[str, set[str]]:
    """Per store: what it holds that no object row or recorded manifest backup names,
    and what a row or backup names that it does not hold (prefixed '-')."""
    out = {}
    for sc in v.cfg.stores:
        listed = set(v.store(sc.name).list(""))
        named = {o.name for o in v.db.objects() if o.store == sc.name}
        named |= {n for _, n in v.db.backups(sc.name)}
        named |= {n for n, _, _ in v.db.segment_objects(sc.name)}  # checkpoint segments
        diff = (listed - named) | {f"-{n}" for n in named - listed}
        if diff:
            out[sc.name] = diff
    return out


def random_name() -> str:
    return os.urandom(16).hex()
