"""An archive whose stores are in memory (`backends.memory`): fast unit tests of the operations,
no subprocess and no emulator. The configuration is the usual local one (tests/dsp.py)."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from backends.memory import MemoryStore
from dispersiond.config import load_config
from dispersiond.archive import Archive, open_archive
from dsp import local_config


@contextlib.contextmanager
def memory_archive(tmp: Path, mode: str = "erasure", **extra: Any) -> Iterator[Archive]:
    """An exclusive archive over a local config, every store replaced by a MemoryStore."""
    cfg = load_config(local_config(tmp, mode, **extra))
    with open_archive(cfg, exclusive=True) as v:
        for sc in cfg.stores:
            v.attach_store(sc.name, MemoryStore(sc.name, checksums=("sha256",)))
        yield v


def objects_on(v: Archive, store: str, prefix: str = "") -> set[str]:
    return set(v.store(store).list(prefix))


def every_object(v: Archive) -> dict[str, set[str]]:
    return {sc.name: objects_on(v, sc.name) for sc in v.cfg.stores}


def pack_together(v: Archive, paths: list[Path]) -> list[str]:
    """Protect `paths` (committed) with one pack per store holding all their fragments,
    as the batched pipeline packs them; returns their ids."""
    from dispersiond.ops.packing import send_objects
    from dispersiond.ops.protect import admit, commit_many, encode

    fids = [admit(v, p) for p in paths]
    for fid in fids:
        encode(v, fid)
    pending = [o for fid in fids for o in v.db.objects(fid, states=("pending",))]
    assert send_objects(v, pending) == []
    assert len(commit_many(v, [v.db.file(fid) for fid in fids])) == len(fids)
    rows = [o for fid in fids for o in v.db.objects(fid)]
    assert all(o.packed and o.state == "uploaded" for o in rows)
    assert len({(o.store, o.name) for o in rows}) == len({o.store for o in rows})
    return fids
