"""Manifest backups: a delta of what changed since the last one (or a checkpoint, when
the chain needs one: a root listing sealed segments, only the changed ones re-sealed),
put on every private store, each naming its predecessor; pruning keeps whole
generations (and every segment a kept root lists) so recover always finds a checkpoint
and every delta after it."""
from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from backends import StoreError

from .. import audit, manifest
from . import checkpoint
from ..logs import event, log
from ..placement import new_object_name
from ..state import ChainTip
from ..archive import Busy, Archive

#: One backup at a time in this process (the daemon's loop and a share's anchor).
_LOCK = threading.RLock()


def backup_manifest(v: Archive, force: bool = False) -> int:
    """Seal what changed and put it on every private store; returns how many stores
    took it. `force`: back up even if nothing changed, as a checkpoint (forget and
    rotation drop every older generation after it).

    Files included are marked backed up (the daemon deletes an original only after that).
    """
    with _LOCK:
        if not force and not v.db.manifest_dirty():
            return 0
        problem = _log_problem(v)
        if problem:
            event(logging.ERROR, "manifest backup refused: the audit log was tampered with; "
                  "run 'dispersiond audit verify' and restore the state from a backup",
                  problem=problem)
            return 0
        return _backup(v, force)


@contextmanager
def held() -> Iterator[None]:
    """No backup of this process runs meanwhile: a change committed inside is in every
    backup that lands with a sequence number above today's, and in none before; never
    lost by one that read the change log before it and then marked the manifest clean."""
    with _LOCK:
        yield


def anchor(v: Archive) -> int:
    """A backup right after a share, so its audit entry is anchored on the trusted store
    at once (a delta: a few hundred bytes). A failure is logged, never raised: the share
    stands and the next backup carries the entry. While a daemon holds the state
    directory it makes the backups (two writers would fork the chain): it is left to it."""
    try:
        with _sole_user(v) as sole:
            return backup_manifest(v) if sole else 0
    except Exception as exc:  # noqa: BLE001 - the share itself succeeded
        log.warning("the manifest backup after a share failed (the next one carries the "
                    "entry): %s", exc)
        return 0


@contextmanager
def _sole_user(v: Archive) -> Iterator[bool]:
    """Whether this process has (or could take) the state directory to itself."""
    if v._lock_fd is not None:
        yield True
        return
    try:
        v.lock()
    except Busy:
        yield False
        return
    try:
        yield True
    finally:
        os.close(v._lock_fd)
        v._lock_fd = None


def _log_problem(v: Archive) -> str | None:
    """Why the audit log must not be anchored as it is (its head forged, or its tail cut
    below what a backup already holds); None when it may."""
    tip = v.db.chain_tip()
    problems = audit.head_problems(v.key, v.db.audit_head(), _head_row(v), None)
    cut = audit.cut_below(v.db, tip.audit_seq if tip else None)
    return "; ".join(problems + ([cut] if cut else [])) or None


def _head_row(v: Archive) -> list[dict]:
    """The entry the recorded head names, if it is there (one row, not the log)."""
    head = audit.parse_head(v.db.audit_head() or "")
    rows = v.db.audit_rows_after(head[0] - 1) if head else []
    return rows[:1]


def _backup(v: Archive, force: bool) -> int:
    from ..share import device

    if v.db.stale_manifest_objects():  # a backup that never landed: what it put goes
        v.db.sweep_manifest_plans()
    seq = v.db.manifest_seq() + 1
    seed = device.seed_for_backup(v.root, v.key)
    tip = v.db.chain_tip()
    changed, upto = v.db.manifest_changes()
    prev = {"seq": tip.seq, "digest": tip.digest} if tip else None
    blob, doc, plan = b"", None, None
    if tip is not None and not force and not _stores_behind(v, tip) \
            and tip.deltas < manifest.CHECKPOINT_EVERY:
        budget = manifest.CHECKPOINT_FRACTION * checkpoint.next_cost(v, tip.base_bytes, changed)
        # A burst's delta can be as large as a checkpoint: when its likely size (its
        # entries at what the newest segment's take) overflows, it is not built at all
        # (its rows, entries and text would be the backup's peak memory and a second of
        # CPU, then thrown away). A wrong guess costs an early checkpoint, nothing else.
        if tip.delta_bytes + len(changed) * checkpoint.entry_bytes(v) <= budget:
            doc = manifest.delta(v.db, seq, tip.base, prev, changed, tip.audit_seq, seed)
            blob = manifest.seal(v.key, doc)
            if tip.delta_bytes + len(blob) > budget:
                doc = None  # the deltas outgrow the next checkpoint: time for it
    stores = list(v.cfg.private.stores)
    put: dict[str, list[str]] = {store: [] for store in stores}
    failed: set[str] = set()  # a store that missed a segment gets no root either

    def ship(name: str, data: bytes) -> None:
        going = [store for store in stores if store not in failed]
        v.db.plan_manifest_objects([(store, name) for store in going])  # before its put
        for store in going:
            if _put_all(v, store, {name: data}):
                put[store].append(name)
            else:
                failed.add(store)

    if doc is None:
        plan = checkpoint.plan(v, seq, changed, ship)
        doc = manifest.root(v.db, seq, plan.refs(), seed, prev)
        blob = manifest.seal(v.key, doc)
        plan.landing.put.update(put)
    names = {store: f"{manifest.PREFIX}{new_object_name()}" for store in stores
             if store not in failed}
    v.db.plan_manifest_objects(list(names.items()))
    landed: dict[str, str] = {}
    for store, name in names.items():
        if _put_all(v, store, {name: blob}):
            landed[store] = name
    if landed:
        held_ids = [e["file_id"] for e in doc["files"]] if plan is None else sorted(
            set(changed) | {f for f, s in plan.landing.moved.items() if s is not None})
        v.db.manifest_backed_up(seq, held_ids,
                                _next_tip(tip, doc, blob), upto, landed, doc["base"],
                                plan.landing if plan else None,
                                changed if plan is None else ())
        for store in landed:
            _prune_backups(v, store)
        event(logging.INFO, "manifest backed up", seq=seq, stores=len(landed), kind=doc["kind"],
              files=len(doc["files"]), segments=plan.sealed if plan else 0,
              bytes=len(blob) + (plan.sealed_bytes if plan else 0))
    return len(landed)


def _put_all(v: Archive, store: str, blobs: dict[str, bytes]) -> list[str]:
    """Put `blobs` on `store` until one fails; the names that landed."""
    done = []
    for name, data in blobs.items():
        try:
            v.store(store).put(name, io.BytesIO(data), len(data))
        except StoreError as exc:
            v.db.store_error(store, str(exc))
            log.warning("manifest backup to store %s failed: %s", store, exc)
            return done
        done.append(name)
    if blobs:
        v.db.store_ok(store)
    return done


def _next_tip(tip: ChainTip | None, doc: dict, blob: bytes) -> ChainTip:
    audit_seq = max([a["seq"] for a in doc["audit"]], default=tip.audit_seq if tip else 0)
    if doc["kind"] == "checkpoint":
        return ChainTip(doc["seq"], manifest.blob_digest(blob), doc["seq"], len(blob), 0, 0,
                        audit_seq)
    assert tip is not None  # a delta builds on a tip
    return ChainTip(doc["seq"], manifest.blob_digest(blob), tip.base, tip.base_bytes,
                    tip.delta_bytes + len(blob), tip.deltas + 1, audit_seq)


def _stores_behind(v: Archive, tip: ChainTip) -> bool:
    """A private store missed the last backup: a delta would leave a gap in its chain."""
    return any(max((s for _, s, _ in v.db.backup_generations(store)), default=0) != tip.seq
               for store in v.cfg.private.stores)


def _backups(v: Archive, store: str) -> list[tuple[int, str]]:
    """(seq, name) of every manifest object recorded on `store`: backups and segments."""
    return v.db.backups(store) + [(born, name) for name, born, _ in v.db.segment_objects(store)]


def _prune_backups(v: Archive, store: str, keep: int = manifest.KEEP_BACKUPS) -> None:
    """Keep the newest `keep` generations (a checkpoint and every delta on it)."""
    items = v.db.backup_generations(store)
    bases = sorted({base for base, _, _ in items})
    kept_bases = set(bases[-keep:]) if keep else set()
    for base, _, name in items:
        if base not in kept_bases:
            v.discard(store, name)
    v.db.set_backups(store, [(seq, name, base) for base, seq, name in items
                             if base in kept_bases])
    # a segment object is listed by the roots of checkpoints born..died-1 (shared by
    # generations): it goes once no kept one lists it
    v.db.drop_segment_objects(store, [
        name for name, born, died in v.db.segment_objects(store, retired_only=True)
        if not any(born <= b < died for b in kept_bases)])
    v.empty_trash()


def drop_all_backups_but_newest(v: Archive) -> None:
    """After forget, rekey or rotation: older backups still name the file, its old
    objects, or use the old key. The newest generation is made a lone checkpoint
    first, so nothing older is needed."""
    tip = v.db.chain_tip()
    if tip is None or tip.base != tip.seq:
        backup_manifest(v, force=True)
    for store in v.cfg.private.stores:
        _prune_backups(v, store, keep=1)
