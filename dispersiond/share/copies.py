"""The objects a share's links point at: a standalone object as it is, a packed member
through a standalone copy of its own (docs/FORMAT.md §6.6 and §8.5).

A link never points at a pack. A presigned URL or an Azure SAS opens the whole object
(neither binds a byte range in every SDK), so it would serve other patients' fragments,
and a pack's bytes are masked under a key derived from the master key, which the
recipient never gets. So the member is fetched (ops/restore.fetch_object: one ranged
GET, unmasked, checked against its digest), padded as a standalone object is (§3) and
uploaded under a fresh random name on the member's store. The copy is recorded before
its upload with the time its link expires; it goes to the trash once that has passed
(whatever empties the trash: a command, the daemon's housekeeping), or at once when the
file is re-keyed, which revokes the bundle as before.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from .. import digests
from ..ops.restore import fetch_object
from ..ops.upload import Throttle, Upload, send
from ..placement import new_object_name, padded
from ..state import ObjectRow

#: How long a copy outlives its link: clock skew between this device and the store.
EXPIRY_SLACK = 300


@dataclass(frozen=True)
class Linked:
    """An object a link reads: its name, where the fragment lies in it, its stored size and
    digest (all that goes into the bundle), and whether it is a copy made for the link."""

    store: str
    name: str
    offset: int
    length: int
    size: int
    digest: str
    copy: bool


def standalone(obj: ObjectRow) -> Linked:
    """A standalone object, linked as it is stored."""
    return Linked(obj.store, obj.name, obj.offset, obj.length, obj.object_size, obj.digest,
                  False)


def copy_member(v, obj: ObjectRow, life: timedelta, tmp: Path) -> tuple[Linked, str]:
    """A standalone copy of a packed member on its own store, and a read link to it valid
    for `life`. Raises what the fetch or the upload raises (NotFound, IntegrityError,
    StoreError); a copy whose upload failed is in the trash already."""
    alg = obj.digest_alg or ""
    path = tmp / f"copy-{obj.id}"
    try:
        with open(path, "wb") as out:
            fetch_object(v, obj, out)  # exactly the member's bytes, digest-checked
            size = padded(obj.length, v.cfg.public.pad)
            out.write(os.urandom(size - obj.length))  # random pad, as every object has
        digest = digests.of_path(alg, path)
        store, name = v.store(obj.store), new_object_name()
        url = store.presign(name, life)  # the link's clock starts here, before the upload
        v.db.plan_share_copy(obj.store, name, obj.file_id,
                             time.time() + life.total_seconds() + EXPIRY_SLACK)
        try:
            send(v, Upload(obj.file_id, obj.store, name, path, size, digest, alg,
                           resumable=False), Throttle(None))
        except BaseException:
            v.db.drop_share_copies([(obj.store, name)])
            raise
    finally:
        path.unlink(missing_ok=True)
    v.db.store_ok(obj.store)
    return Linked(obj.store, name, 0, obj.length, size, digest, True), url
