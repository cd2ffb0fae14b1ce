"""The sweep (docs/FORMAT.md §8.5, part of prune): every store listed; a name the state
does not know is noted when first seen, and once `sweep_grace` has passed deleted only
if it opens as a pack under our master key and no file the state holds needs it.
Anything else is reported and left alone."""
from __future__ import annotations

import re
import threading
import time

from backends import NotFound, StoreError

from .. import manifest
from ..errors import DispersiondError
from ..pack import open_index
from ..archive import Archive

_OBJECT_NAME = re.compile(r"[0-9a-f]{32}")


def _judge(v: Archive, store: str, name: str) -> tuple[str, str | None]:
    """(delete | keep | foreign | gone, why) for one name the state does not know."""
    if not _OBJECT_NAME.fullmatch(name):
        return "foreign", "not a name dispersiond gives its objects"
    s = v.store(store)
    try:
        size = s.stat(name).size
        idx = open_index(v.key, name, lambda off, n: s.get_bytes(name, off, n), size)
    except NotFound:
        return "gone", None
    except DispersiondError:
        return "foreign", "not a pack under this master key (left alone)"
    for m in idx.members:
        fid = m.ref.hex()
        if v.db.file(fid) is None:
            continue
        good = [o for o in v.db.objects(fid, role=idx.kind) if o.store == store
                and o.state == "uploaded"]
        if not good:
            return "keep", (f"holds a member of file {fid} that has no good copy on this "
                            "store: run 'dispersiond repair', then prune again")
    return "delete", None


def sweep(v: Archive, now: float | None = None, dry_run: bool = False,
          stop: threading.Event | None = None) -> tuple[list[dict], bool]:
    """List every store; delete our packs nobody references once `sweep_grace` has passed
    since they were first seen; report everything else the state does not know. Returns
    (store, name, action, reason) of each, and whether `stop` cut it short."""
    found: list[dict] = []
    now = time.time() if now is None else now
    grace = v.cfg.pack.sweep_grace
    for sc in v.cfg.stores:
        if stop is not None and stop.is_set():
            return found, True
        try:
            listed = {n for n in v.store(sc.name).list("") if not n.startswith(manifest.PREFIX)}
        except (StoreError, KeyError) as exc:
            found.append({"store": sc.name, "name": None, "action": "unlisted",
                                 "reason": str(exc)})
            continue
        unknown = listed - v.db.known_names(sc.name)
        seen = v.db.seen_unknown(sc.name) if dry_run else v.db.note_unknown(sc.name, unknown, now)
        for name in sorted(unknown):
            first = seen.get(name, now)
            if now - first < grace:
                found.append({"store": sc.name, "name": name, "action": "waiting",
                                     "reason": f"first seen unreferenced {_ago(now - first)} "
                                               "ago; deleted after sweep_grace if a pack"})
                continue
            try:
                action, why = _judge(v, sc.name, name)
            except (StoreError, KeyError) as exc:
                action, why = "unread", str(exc)
            if action == "gone":
                continue
            if action == "delete" and not dry_run:
                if name in v.db.known_names(sc.name):
                    continue  # taken up meanwhile (the daemon's uploads)
                v.db.sweep_out(sc.name, name)
            found.append({"store": sc.name, "name": name, "action": action,
                                 **({"reason": why} if why else {})})
    if not dry_run:
        v.empty_trash()
    return found, False


def _ago(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds:.0f} s"
