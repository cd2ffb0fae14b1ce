"""Start-up: small files whose public fragments were held in memory (held.py) when the
process died are encoded again (docs/FORMAT.md §8, "Crash safety").

Such a file is `encoded` with a pending public object that is not in a pack and has no
staged copy on disk. Its private container was never packed (it waits for its public
fragments), so nothing of this encode is restorable anywhere: its rows go, whatever
public members did land are dead bytes (the trash deletes a pack left with no member),
its container is removed, and it is claimed again. The source is still where the claim
or `put` left it (the after-policy runs only once a file is done), and the new encode
draws new keys.
"""
from __future__ import annotations

import logging

from ..archive import Archive
from ..logs import event
from ..state import FileState


def lost_held(v: Archive) -> list[str]:
    """Encoded files with a pending, unpacked public object and no staged copy of it
    (at start-up, before anything is sent: no fragment is held by this process)."""
    encoded = set(v.db.file_ids_in(FileState.ENCODED))
    lost: set[str] = set()
    for o in v.db.upload_queue():
        if (o.file_id in encoded and o.file_id not in lost and o.role == "public"
                and not o.packed
                and not v.staged_path(o.file_id, o.role, o.shard).exists()):
            lost.add(o.file_id)
    return sorted(lost)


def encode_lost_again(v: Archive) -> int:
    """Claim again every file `lost_held` finds; returns how many."""
    fids = [fid for fid in lost_held(v) if not v.held.waiting(fid)]
    if not fids:
        return 0
    v.db.encode_again(fids)
    for fid in fids:
        v.drop_container(fid)  # the next encode makes a new one
        event(logging.INFO, "file encoded again: its held fragments were lost", file_id=fid)
    return len(fids)
