"""Small files' fragments in pack objects (docs/FORMAT.md §8): grouping, one pack per store
and kind, members re-pointed in one transaction, the trash rule, crash leftovers, and the
daemon's pack buffer. Real SQLite, in-memory stores, real files."""
from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from dispersiond import manifest
from dispersiond.daemon.events import PackSent
from dispersiond.daemon.uploader import (LINGER, PRIVATE_PACK_FILES, TRICKLE_MEMBERS,
                                         PackBuffer, Uploader)
from dispersiond.ops import packing
from dispersiond.ops.protect import admit, commit_many, encode, upload
from dispersiond.ops.restore import restore
from dispersiond.pack import PackPolicy, PackReader
from dispersiond.state import ObjectRow, StateDB
from dsp import real_files
from memory_archive import every_object, memory_archive


def _row(i: int, store: str = "a", role: str = "public", length: int = 100,
         alg: str = "blake3", fid: str | None = None) -> ObjectRow:
    return ObjectRow(i, fid or f"{i:032x}", role, None, store, f"{i:032x}", 0, length,
                     length, "00", "pending", None, alg)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from(["public", "private"]),
                          st.integers(0, 5000), st.sampled_from(["blake3", "sha256"])),
                max_size=60),
       st.integers(1, 20000))
def test_plan_packs_groups_by_store_kind_and_digest_and_cuts_at_pack_size(specs, size) -> None:
    objs = [_row(i, s, r, n, a) for i, (s, r, n, a) in enumerate(specs)]
    jobs = packing.plan_packs(objs, size)
    placed = [o.id for j in jobs for o in j.objs]
    assert sorted(placed) == [o.id for o in objs]  # every object in exactly one pack
    for j in jobs:
        assert j.objs and {(o.store, o.role, o.digest_alg) for o in j.objs} \
            == {(j.store, j.kind, j.digest_alg)}
        # a pack closes once it reaches pack_size: only its last member may cross it
        assert sum(o.length for o in j.objs[:-1]) < size
        ids = [o.id for o in j.objs]
        assert ids == sorted(ids)  # arrival order kept


def test_a_file_never_has_two_members_in_one_pack() -> None:
    objs = [_row(1, fid="f" * 32), _row(2, fid="f" * 32), _row(3)]
    (job,) = packing.plan_packs(objs, 1 << 20)
    assert [o.id for o in job.objs] == [1, 3]


def _encoded(v, paths: list[Path]) -> list[str]:
    fids = [admit(v, p) for p in paths]
    for fid in fids:
        encode(v, fid)
    return fids


def _restores(v, fids: list[str], paths: list[Path], out: Path) -> None:
    commit_many(v, [v.db.file(f) for f in fids])
    for i, (fid, path) in enumerate(zip(fids, paths)):
        restore(v, fid, out / f"out-{i}")
        assert (out / f"out-{i}").read_bytes() == path.read_bytes()


def test_one_pack_per_store_and_kind_and_every_file_restores(tmp_path: Path) -> None:
    paths = real_files()[:4]
    with memory_archive(tmp_path, "erasure") as v:
        fids = _encoded(v, paths)
        pending = [o for fid in fids for o in v.db.objects(fid, states=("pending",))]
        assert pending and all(packing.packable(v, o) for o in pending)
        assert packing.send_objects(v, pending) == []
        packs = v.db.packs()
        stores = {o.store for o in pending}
        assert sorted((p.store, p.kind) for p in packs) == sorted(
            (s, "private" if s == "vault" else "public") for s in stores)
        for p in packs:  # each stored pack opens under our key and holds every file once
            data = v.store(p.store).get_bytes(p.name)
            assert len(data) == p.size and p.members == len(fids)
            r = PackReader(v.key, p.name, data, p.size)
            assert {m.ref.hex() for m in r.index.members} == set(fids)
            assert r.verify() == []
        on_stores = every_object(v)
        assert all(len(names) == 1 for names in on_stores.values())  # nothing standalone
        for fid in fids:
            assert all(o.packed and o.state == "uploaded" for o in v.db.objects(fid))
        _restores(v, fids, paths, tmp_path)


def test_large_fragments_keep_objects_of_their_own(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(300_000))
    with memory_archive(tmp_path, "replicate", pack={"threshold": "64KiB"}) as v:
        (fid,) = _encoded(v, [big])
        assert upload(v, fid) == []
        objs = v.db.objects(fid)
        # each fragment on its own size: the public one is large, the container small
        assert {o.role: o.packed for o in objs} == {"public": False, "private": True}
        assert [p.kind for p in v.db.packs()] == ["private"]
        _restores(v, [fid], [big], tmp_path)


def test_a_damaged_staged_copy_is_refused_and_stays_pending(tmp_path: Path) -> None:
    paths = real_files()[:2]
    with memory_archive(tmp_path, "replicate") as v:
        fids = _encoded(v, paths)
        pub = v.db.objects(fids[0], role="public", states=("pending",))[0]
        staged = v.staged_path(pub.file_id, pub.role, pub.shard)
        data = bytearray(staged.read_bytes())
        data[0] ^= 1
        staged.write_bytes(bytes(data))
        pending = [o for fid in fids for o in v.db.objects(fid, states=("pending",))]
        failures = packing.send_objects(v, pending)
        assert failures and all("damaged on local disk" in str(e) for _, e in failures)
        assert v.db.objects(fids[0], role="public")[0].state == "pending"
        # the failed pack's name went to the trash, not to a row
        assert all(p.store != pub.store or p.kind != "public" for p in v.db.packs())


def test_a_pack_is_trashed_only_once_no_member_points_into_it(tmp_path: Path) -> None:
    paths = real_files()[:2]
    with memory_archive(tmp_path, "replicate") as v:
        fids = _encoded(v, paths)
        packing.send_objects(v, [o for f in fids for o in v.db.objects(f, states=("pending",))])
        (a, b) = (v.db.objects(fid, role="public")[0] for fid in fids)
        assert (a.store, a.name) == (b.store, b.name)  # one pack holds both
        with v.db.tx() as conn:
            v.db.delete_file(fids[0], conn)
            v.db.trash_many([(a.store, a.name)], conn)
        assert (a.store, a.name) not in v.db.trashed() and v.db.pack(a.store, a.name)
        with v.db.tx() as conn:
            v.db.delete_file(fids[1], conn)
            v.db.trash_many([(b.store, b.name)], conn)
        assert (a.store, a.name) in v.db.trashed() and v.db.pack(a.store, a.name) is None


def test_a_pack_uploaded_but_never_committed_goes_to_the_trash(tmp_path: Path) -> None:
    """A crash between the upload and the commit: the name was planned, the members are
    still pending; start-up's abandon_planned trashes the orphan and the members are
    packed again under a new name."""
    paths = real_files()[:2]
    with memory_archive(tmp_path, "replicate") as v:
        fids = _encoded(v, paths)
        pending = [o for f in fids for o in v.db.objects(f, states=("pending",))]
        (job, *_) = packing.plan_packs(pending, v.cfg.pack.pack_size)
        name = "ab" * 16
        v.db.plan_pack(job.store, name)
        row, _, staged = packing.build(v, job, name)
        with open(staged, "rb") as f:
            v.store(job.store).put(name, f, row.size)  # ... and then the process died
        assert v.db.abandon_planned() == 1
        assert (job.store, name) in v.db.trashed()
        assert packing.send_objects(v, pending) == []
        v.empty_trash()
        assert name not in every_object(v)[job.store]
        _restores(v, fids, paths, tmp_path)


def test_manifest_entries_carry_pack_digest_and_recover_rebuilds_pack_rows(
        tmp_path: Path) -> None:
    paths = real_files()[:2]
    with memory_archive(tmp_path, "replicate") as v:
        fids = _encoded(v, paths)
        packing.send_objects(v, [o for f in fids for o in v.db.objects(f, states=("pending",))])
        entry = manifest.entry(v.db, v.db.file(fids[0]))
        assert all(o["pack_digest"] == v.db.pack(o["store"], o["name"]).digest
                   for o in entry["objects"])
        rows = manifest.rows_of(manifest.Replayed(files={e["file_id"]: e for e in (
            manifest.entry(v.db, v.db.file(f)) for f in fids)}))
        packs = sorted((p.store, p.name, p.size, p.digest, p.kind) for p in v.db.packs())
    db = StateDB(tmp_path / "fresh.db")
    db.load_backup(rows, [], None, 1)
    assert sorted((p.store, p.name, p.size, p.digest, p.kind) for p in db.packs()) == packs
    assert all(p.body_len is None for p in db.packs())  # read from the index when needed


# --------------------------------------------------------------- the daemon's buffer

def test_pack_buffer_is_due_at_pack_size_max_wait_or_when_quiet() -> None:
    pol = PackPolicy(threshold="16KiB", pack_size="64KiB", max_wait="5s")
    b = PackBuffer()
    assert b.due_in(pol, True, 0.0) is None
    b.add(_row(1, length=1000), 10.0)
    assert b.due_in(pol, False, 10.0) == 5.0  # busy: the oldest waits max_wait
    assert abs(b.due_in(pol, True, 10.0) - LINGER) < 1e-9  # quiet: a short linger for one more
    b.add(_row(2, length=1000), 14.0)
    assert abs(b.due_in(pol, True, 14.0) - LINGER) < 1e-9
    assert abs(b.due_in(pol, False, 14.0) - 1.0) < 1e-9
    assert b.due_in(pol, False, 15.0) == 0.0
    b.add(_row(3, length=70_000), 14.5)
    assert b.due_in(pol, False, 14.5) == 0.0  # pack_size reached


def test_uploader_flushes_a_pack_per_store_and_books_its_members(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    q: queue.SimpleQueue = queue.SimpleQueue()
    sent: list[packing.PackJob] = []
    up = Uploader(db, ["a", "b"], lambda o: None, q.put, workers=2, retry_base=1.0,
                  retry_max=2.0, send_pack=sent.append, packable=lambda o: o.length < 500,
                  pack_policy=PackPolicy(max_wait="5s"))
    up.quiet = lambda: False
    objs = [_row(i, "ab"[i % 2], length=100) for i in range(6)] + [_row(9, "a", length=900)]
    up.enqueue(objs, now=100.0)
    assert up.pending() == 7 and len(up.queues["a"]) == 1  # the large one queues as before
    assert up.flush_due_in(now=100.0) == 5.0
    up.dispatch(now=106.0)
    evs = [q.get(timeout=5) for _ in range(3)]
    packs = [e for e in evs if isinstance(e, PackSent)]
    assert sorted((e.store, len(e.objs)) for e in packs) == [("a", 3), ("b", 3)]
    assert all(e.error is None for e in packs)
    fids = set().union(*(up.on_pack_sent(e, False) for e in packs))
    assert fids == {o.file_id for o in objs[:6]}
    assert set(up.in_flight) == {9}  # the large one's own upload, booked by on_uploaded
    assert len(sent) == 2 and up.pending() == 0
    up.shutdown()


def test_a_trickle_lingers_for_its_next_record_a_lone_record_does_not() -> None:
    pol = PackPolicy(max_wait="5s")
    b = PackBuffer()
    b.add(_row(1), 100.0)
    assert abs(b.due_in(pol, True, 100.0) - LINGER) < 1e-9  # alone: leaves at once
    b.add(_row(2), 100.3)  # a trickle, 300 ms apart: wait for the next one
    assert abs(b.due_in(pol, True, 100.3) - 0.6) < 1e-9
    for i in range(3, 30):
        b.add(_row(i), 100.0 + 0.3 * (i - 1))
    assert b.due_in(pol, True, 100.0 + 0.3 * 28) == 0.0  # ... but never past max_wait
    fresh = PackBuffer()
    fresh.add(_row(40), 0.0)
    fresh.objs.clear()
    fresh.add(_row(41), 3600.0)  # the next record an hour later: no lingering
    assert abs(fresh.due_in(pol, True, 3600.0) - LINGER) < 1e-9


def test_the_spacing_survives_flushes_and_reloads_and_clumps() -> None:
    pol = PackPolicy(max_wait="5s")
    b = PackBuffer()
    t = 100.0
    for i in range(5):  # a trickle, 200 ms apart
        b.add(_row(i), t)
        t += 0.2
    assert b.due_in(pol, True, t - 0.2) > 0.35  # lingers twice the spacing, not LINGER
    b.objs.clear()  # flushed: the next record of the trickle still lingers
    b.add(_row(10), t)
    assert b.due_in(pol, True, t) > 0.35
    rows = list(b.objs.values())
    b.objs.clear()  # a queue reload re-adds what it knows, much later: it teaches nothing
    for r in rows:
        b.add(r, t + 3.0, fresh=False)
    assert b.linger(pol) > 0.35
    c = PackBuffer()
    c.add(_row(20), 10.0)
    for i in range(64):  # one encoded batch, one instant: one arrival, not 64 gaps of 0
        c.add(_row(30 + i), 10.6)
    c.add(_row(99), 11.2)
    assert abs(c.spacing - 0.6) < 1e-9 and abs(c.linger(pol) - 1.2) < 1e-9


def test_a_burst_of_batches_does_not_linger_after_its_last_batch() -> None:
    """Batches of an encoded burst arrive ~150 ms apart, as a trickle's records might:
    but each holds many members, so once nothing more is on the way the buffer waits
    only LINGER, not twice their spacing; a trickle after the burst lingers again."""
    pol = PackPolicy(max_wait="5s")
    b = PackBuffer()
    t, oid = 100.0, 0
    for _ in range(6):
        for _ in range(64):
            b.add(_row(oid), t)
            oid += 1
        t += 0.15
    last = t - 0.15
    assert b.spacing is None
    assert abs(b.due_in(pol, True, last) - LINGER) < 1e-9
    for i in range(4):  # then single records, 300 ms apart: a trickle
        b.add(_row(1000 + i), last + 0.3 * (i + 1))
    assert b.linger(pol) > 0.5
    assert TRICKLE_MEMBERS < 64


def test_a_buffer_of_enough_private_containers_is_due_while_busy() -> None:
    """A burst's containers leave in packs of PRIVATE_PACK_FILES as their public packs
    land, so its files commit as it goes; public members alone never count."""
    pol = PackPolicy(max_wait="5s")
    b = PackBuffer()
    for i in range(PRIVATE_PACK_FILES - 1):
        b.add(_row(i, "vault", "private", fid=f"{i:032x}"), 10.0, fresh=False)
    for i in range(PRIVATE_PACK_FILES):
        b.add(_row(10_000 + i, "vault", "public", fid=f"{10_000 + i:032x}"), 10.0)
    assert b.due_in(pol, False, 10.0) == 5.0  # busy, one container short: max_wait
    b.add(_row(9_999, "vault", "private", fid=f"{9_999:032x}"), 10.1, fresh=False)
    assert b.due_in(pol, False, 10.1) == 0.0


def test_containers_of_held_files_are_parked_until_their_public_pack_has_landed(
        tmp_path: Path) -> None:
    """A private container whose file still has public fragments held in memory only
    (held.py) waits outside the pack buffers; once the public pack's outcome is booked it
    joins its buffer and, nothing more being on the way, is due at once (no linger)."""
    db = StateDB(tmp_path / "state.db")
    q: queue.SimpleQueue = queue.SimpleQueue()
    held = {f"{i:032x}" for i in range(3)}
    up = Uploader(db, ["cloud", "vault"], lambda o: None, q.put, workers=2, retry_base=1.0,
                  retry_max=2.0, send_pack=lambda job: None, packable=lambda o: True,
                  pack_policy=PackPolicy(max_wait="5s"),
                  waits=lambda o: o.role == "private" and o.file_id in held)
    up.quiet = lambda: False
    pubs = [_row(i, "cloud", fid=f"{i:032x}") for i in range(3)]
    prvs = [_row(10 + i, "vault", "private", fid=f"{i:032x}") for i in range(3)]
    up.enqueue([*pubs, *prvs], now=100.0)
    assert set(up.parked) == {10, 11, 12} and up.pending() == 6
    assert not up.buffers["vault"].objs
    up.reload([*pubs, *prvs])  # the rows decide again: still parked
    assert set(up.parked) == {10, 11, 12}
    held.clear()  # the public pack landed (or was written out)
    up.quiet = lambda: True
    up.unpark({f"{i:032x}" for i in range(3)}, now=103.0)
    assert not up.parked and set(up.buffers["vault"].objs) == {10, 11, 12}
    assert up.buffers["vault"].due_in(up.pack_policy, True, 103.0) == 0.0
    assert up.buffers["vault"].spacing is None  # not taken for a trickle
    up.shutdown()


def test_a_pack_about_to_leave_keeps_the_daemon_from_idling_a_waiting_one_does_not(
        tmp_path: Path) -> None:
    """A backup taken while a burst's last pack lingers misses that pack's files; theirs
    then waits out the backups' spacing. A buffer that waits longer (busy, or a
    trickle's) must not hold the backups back: under a steady trickle they starved."""
    db = StateDB(tmp_path / "state.db")
    q: queue.SimpleQueue = queue.SimpleQueue()
    up = Uploader(db, ["a", "b"], lambda o: None, q.put, workers=2, retry_base=1.0,
                  retry_max=2.0, send_pack=lambda job: None, packable=lambda o: o.length < 500,
                  pack_policy=PackPolicy(max_wait="5s"))
    assert not up.about_to_send(now=100.0)
    up.enqueue([_row(1, "a", length=100)], now=100.0)
    assert up.about_to_send(now=100.0)  # quiet: it leaves after a short linger
    up.quiet = lambda: False
    assert not up.about_to_send(now=100.0)  # busy: it waits up to max_wait (5 s)
    assert up.about_to_send(now=104.95)  # ... which is nearly over
    up.quiet = lambda: True
    up.store_failed("a", time.monotonic(), OSError("down"))
    assert not up.about_to_send(now=100.0)  # its store backs off: nothing to wait for
    up.enqueue([_row(2, "b", length=900)], now=100.0)
    assert up.about_to_send(now=100.0)  # queued for an object of its own
    up.shutdown()


def test_a_backup_held_back_by_the_spacing_sets_the_loops_wake_up(tmp_path: Path) -> None:
    from dispersiond.daemon import finisher as fin_mod

    fin = fin_mod.Finisher(SimpleNamespace(cfg=None), None, threading.Event(), lambda: True,
                           retry_base=1, retry_max=1)
    fin.manifest_dirty, fin.backup_due = False, 50.0
    assert fin.backup_due_in(now=10.0) is None  # nothing to back up
    fin.manifest_dirty = True
    assert fin.backup_due_in(now=10.0) == 40.0
    assert fin.backup_due_in(now=50.0) is None  # due: the next event's turn takes it
