"""The daemon's pieces, constructed directly: no subprocess, real SQLite, memory stores."""
from __future__ import annotations

import collections
import logging
import os
import queue
import random
import threading
import time
from pathlib import Path

import pytest

from backends.memory import MemoryStore
from daemonctl import daemon_config
from dispersiond.codec import se2
from dispersiond.config import load_config
from dispersiond.daemon import Daemon, StoreHealth
from dispersiond.daemon.events import (BackupNow, PathSeen, Rescan, Uploaded, Verified,
                                       VerifyNow, Wake, drain)
from dispersiond.daemon.intake import CHECK_EVERY, SpaceGate
from dispersiond.daemon.status import StatusWriter
from dispersiond.daemon.uploader import Uploader
from dispersiond.inbox import Stability
from dispersiond.ops.encode import plan_rows, staged_sizes
from dispersiond.state import FileState, ObjectRow, StateDB
from dsp import local_config


def until(pred, timeout: float = 10.0, every: float = 0.01):
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)
    return value


# --------------------------------------------------------------- store health

def test_store_health_backs_off_probes_once_and_recovers() -> None:
    h = StoreHealth(1.0, 8.0, rng=random.Random(7))
    assert not h.failing and h.can_send(0.0, 5) and h.retry_at is None
    wait = h.fail(100.0, "connection refused", started=99.5)
    assert wait is not None and 0.5 <= wait <= 1.0  # equal jitter: never under half
    assert h.failing and h.failures == 1 and h.error == "connection refused"
    assert h.retry_at is not None and abs(h.retry_at - (time.time() + wait)) < 1.0
    assert not h.can_send(100.0 + wait / 2, 0)  # waiting
    assert h.can_send(100.0 + wait, 0)  # the probe
    assert not h.can_send(100.0 + wait, 1)  # one probe at a time
    # A request already under way when the failure was recorded: one outage, not two.
    assert h.fail(100.2, "refused again", started=99.9) is None
    assert h.failures == 1 and h.error == "refused again"
    wait2 = h.fail(102.0, "still down", started=101.5)  # the probe failed: the wait doubles
    assert wait2 is not None and 1.0 <= wait2 <= 2.0 and h.failures == 2
    assert h.recover() is True  # it had been failing
    assert not h.failing and h.error == "" and h.retry_at is None and h.can_send(0.0, 9)
    assert h.recover() is False


def test_store_health_waits_are_capped() -> None:
    h = StoreHealth(1.0, 4.0, rng=random.Random(1))
    waits = [h.fail(float(t), "down", started=float(t)) for t in range(10, 20)]
    assert all(w is not None and w <= 4.0 for w in waits) and h.failures == 10
    assert max(waits) >= 2.0  # capped at 4, at least half of it


# --------------------------------------------------------------- stability

def test_stability_takes_a_file_once_it_stops_changing(tmp_path: Path) -> None:
    p = tmp_path / "scan.dcm"
    p.write_bytes(b"a" * 10)
    s = Stability(0.2)
    s.note(p)
    s.note(tmp_path / ".hidden")
    s.note(tmp_path / "upload.part")
    assert len(s) == 1  # hidden and partial names are never candidates
    assert s.ready() == []  # first look: the clock starts now
    time.sleep(0.1)
    with open(p, "ab") as f:
        f.write(b"more")  # still being written: the clock restarts
    assert s.ready() == []
    time.sleep(0.25)
    (path, st), = s.ready()
    assert path == p and st.st_size == 14
    s.taken(p)
    assert len(s) == 0 and s.next_due() is None


def test_stability_forgets_vanished_and_skips_refused_files(tmp_path: Path) -> None:
    gone, refused = tmp_path / "gone.dcm", tmp_path / "locked.dcm"
    gone.write_bytes(b"x")
    refused.write_bytes(b"y")
    s = Stability(0)
    s.note(gone)
    s.note(refused)
    gone.unlink()
    ready = s.ready()
    assert [p for p, _ in ready] == [refused] and len(s) == 1  # the vanished one is forgotten
    s.refuse(refused, ready[0][1])
    s.note(refused)
    assert s.ready() == []  # unchanged since it was refused: left alone
    refused.write_bytes(b"changed")
    s.note(refused)
    assert [p for p, _ in s.ready()] == [refused]  # changed: tried again


def test_stability_with_a_limit_hands_out_the_oldest_and_starts_every_clock(
        tmp_path: Path) -> None:
    """A burst is claimed a slice at a time; the files beyond the slice get their first
    look all the same, so their stable time runs while they wait their turn."""
    paths = [tmp_path / f"r{i:02d}.dcm" for i in range(10)]
    for p in paths:
        p.write_bytes(b"x")
    s = Stability(0.2)
    for p in paths:
        s.note(p)
    assert s.ready(3) == []  # first look for all ten
    time.sleep(0.25)
    first = s.ready(3)
    assert [p for p, _ in first] == paths[:3]  # the oldest, in order
    for p, _ in first:
        s.taken(p)
    with open(paths[9], "ab") as f:
        f.write(b"more")  # still changing: seen at its next look, its clock restarts
    assert [p for p, _ in s.ready(4)] == paths[3:7]  # no new wait for those looked at
    for p in paths[3:7]:
        s.taken(p)
    assert [p for p, _ in s.ready()] == paths[7:9]
    time.sleep(0.25)
    assert [p for p, _ in s.ready(5)] == paths[7:]


def test_the_loop_claims_a_burst_a_slice_at_a_time(daemon: Daemon, tmp_path: Path,
                                                   monkeypatch) -> None:
    from dispersiond.daemon import service

    monkeypatch.setattr(service, "CLAIM_AHEAD", 4)
    daemon.encoder.start = lambda stopping: None  # nothing leaves the backlog
    for i in range(10):
        (tmp_path / "inbox" / f"r{i}.dcm").write_bytes(b"r" * (i + 1))
    daemon.intake.rescan()
    daemon.intake.claim(threading.Event(), 0)  # room for none: nothing is even looked at
    assert daemon.intake.waiting() == 10
    daemon.intake.claim(threading.Event())  # first look (stable_seconds of the config)
    time.sleep(0.35)
    daemon._tick()
    assert len(daemon.encoder.waiting) == 4 and daemon.intake.waiting() == 6
    daemon._tick()
    assert len(daemon.encoder.waiting) == 4  # no room: the rest stays in the inbox
    daemon.encoder.waiting.clear()
    daemon._tick()
    daemon.encoder.waiting.clear()
    daemon._tick()
    assert daemon.intake.waiting() == 0 and len(daemon.v.db.files_in(FileState.CLAIMED)) == 10


# --------------------------------------------------------------- the row planner

@pytest.mark.parametrize("mode", ["erasure", "replicate"])
def test_plan_rows_one_object_per_store(tmp_path: Path, mode: str) -> None:
    cfg = load_config(local_config(tmp_path, mode))
    layout = se2.Layout(20, 300_000, 0)
    rows = plan_rows(cfg, "f" * 32, layout)
    sizes = staged_sizes(cfg, layout)
    public = [(r, k) for r, k in rows if r["role"] == "public"]
    private = [(r, k) for r, k in rows if r["role"] == "private"]
    if mode == "erasure":
        assert [r["store"] for r, _ in public] == ["cloud-a", "cloud-b", "cloud-c"]
        assert [(r["shard"], k) for r, k in public] == [(i, f"shard-{i}") for i in range(3)]
        lengths = {r["length"] for r, _ in public}
        assert len(lengths) == 1 and lengths.pop() * 2 >= layout.puf_len  # k = 2
    else:
        assert [r["store"] for r, _ in public] == ["cloud-a", "cloud-b"]
        assert all(r["shard"] is None and k == "puf" and r["length"] == layout.puf_len
                   for r, k in public)
    assert [(r["store"], k, r["length"]) for r, k in private] == [("vault", "prf",
                                                                   layout.prf_len)]
    assert all(r["object_size"] == sizes[k] and r["file_id"] == "f" * 32 for r, k in rows)
    names = [r["name"] for r, _ in rows]
    assert len(set(names)) == len(names)  # random names, never reused
    assert names != [r["name"] for r, _ in plan_rows(cfg, "f" * 32, layout)]


# --------------------------------------------------------------- status writer

class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_status_is_written_only_when_it_changes_and_at_most_every_n_seconds() -> None:
    clock, written = Clock(), []
    w = StatusWriter(written.append, min_interval=2.0, heartbeat_every=60.0, clock=clock)
    doc = {"state": "running", "in_flight": {"uploads": 0}, "heartbeat": 1.0}
    assert w.offer(doc) and len(written) == 1  # the first look writes
    for i in range(1, 30):  # idle: nothing changes but the heartbeat
        clock.t += 2.0
        assert not w.offer({**doc, "heartbeat": 1.0 + i})
    assert len(written) == 1
    busy = {**doc, "in_flight": {"uploads": 3}}
    clock.t += 0.5
    assert w.offer(busy) and len(written) == 2  # the counts changed
    clock.t += 0.5
    busier = {**doc, "in_flight": {"uploads": 4}}
    assert not w.offer(busier)  # changed, but written half a second ago
    clock.t += 1.6
    assert w.offer(busier) and '"uploads": 4' in written[-1]  # ... written at the next look
    clock.t += 59.0
    assert not w.offer({**busier, "heartbeat": 99.0})
    clock.t += 1.5
    assert w.offer({**busier, "heartbeat": 100.0})  # a minute without a write: heartbeat
    assert '"heartbeat": 100.0' in written[-1] and w.writes == 4
    assert w.offer({**busier, "state": "stopped"}, force=True)  # the last word always lands


# --------------------------------------------------------------- the free-space gate

def test_space_gate_pauses_below_the_minimum_and_resumes(tmp_path: Path, caplog) -> None:
    free = [500]
    gate = SpaceGate(tmp_path, 100, free=lambda: free[0])
    gate.check()
    assert gate.paused is None and gate.allows(400) and not gate.allows(401)
    gate.require(450)  # the next encode needs more than there is
    assert gate.paused is not None
    assert "disk full" in gate.paused and "min_free_space" in gate.paused
    assert "to encode the next file" in gate.paused
    gate.check()
    assert gate.paused is not None  # still short
    free[0] = 600
    with caplog.at_level(logging.INFO, logger="dispersiond"):
        gate.check()
    assert gate.paused is None and gate.need == 0
    assert any("intake resumed" in r.getMessage() for r in caplog.records)
    free[0] = 50
    gate.check()
    assert gate.paused is not None and "to encode" not in gate.paused


def test_the_loop_looks_at_free_space_every_so_often_unless_paused(tmp_path: Path) -> None:
    free, looks = [500], []
    gate = SpaceGate(tmp_path, 100, free=lambda: looks.append(1) or free[0])
    gate.tick(10.0)
    free[0] = 50
    gate.tick(10.0 + CHECK_EVERY / 2)  # too soon: not looked at
    assert gate.paused is None and len(looks) == 1
    gate.tick(10.0 + CHECK_EVERY)
    assert gate.paused is not None and len(looks) == 2
    free[0] = 600
    gate.tick(10.0 + CHECK_EVERY + 0.001)  # paused: every turn looks
    assert gate.paused is None and len(looks) == 3


# --------------------------------------------------------------- the uploader

def _encoded_file(db: StateDB, fid: str, stores: list[str], size: int = 64) -> None:
    now = time.time()
    db.add_claims([(fid, f"{fid[:4]}.dcm", size, now, "se2", f"/nowhere/{fid}")], now)
    db.claimed_many([(fid, f"/nowhere/{fid}")], [], now)
    with db.tx() as conn:
        db.set_state(fid, FileState.ENCODED, conn)
        db.add_objects(conn, [{"file_id": fid, "role": "public", "shard": None, "store": s,
                               "name": f"{s}-{fid}", "offset": 0, "length": size,
                               "object_size": size, "digest": "0" * 64, "state": "pending"}
                              for s in stores])


def test_a_store_going_down_backs_off_and_the_others_keep_moving(tmp_path: Path,
                                                                  caplog) -> None:
    db = StateDB(tmp_path / "state.db")
    stores = {name: MemoryStore(name) for name in ("up", "flaky")}
    sent: dict[str, int] = {name: 0 for name in stores}

    def send(obj: ObjectRow) -> None:
        sent[obj.store] += 1
        stores[obj.store].put_bytes(obj.name, b"x" * obj.object_size)

    q: queue.SimpleQueue = queue.SimpleQueue()
    up = Uploader(db, list(stores), send, q.put, workers=2, retry_base=0.2, retry_max=0.4)
    fids = [f"{i:032x}" for i in range(4)]
    for fid in fids:
        _encoded_file(db, fid, list(stores))
    stores["flaky"].down = True

    def pump(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            up.dispatch()
            flying = collections.Counter(o.file_id for o in up.in_flight.values())
            assert all(up.sending(f) == (flying[f] > 0) for f in fids)  # kept, not scanned
            events = drain(q, 0.02)
            up.record([e for e in events if isinstance(e, Uploaded)])
            for e in events:
                up.on_uploaded(e, cancelling=False)
            assert up.flying == collections.Counter(o.file_id for o in up.in_flight.values())

    try:
        with caplog.at_level(logging.INFO, logger="dispersiond"):
            up.reload(db.upload_queue())
            assert up.pending() == 8
            pump(0.6)
            landed = {o.store: o.state for o in db.objects() if o.state == "uploaded"}
            assert set(landed) == {"up"}
            assert sorted(stores["up"].list("")) == sorted(f"up-{f}" for f in fids)
            assert up.health["flaky"].failing and not up.health["up"].failing
            assert up.down() == ["flaky"] and up.healthy() == frozenset({"up"})
            assert len(up.queues["flaky"]) == 4 and not up.in_flight  # still pending
            # The first burst (up to the in-flight cap), then one probe per wait at most.
            assert sent["flaky"] <= 4 + 0.6 / 0.1 and sent["up"] == 4
            assert db.file(fids[0]).error.startswith("upload to flaky failed")
            stores["flaky"].down = False
            pump(1.0)
        assert all(o.state == "uploaded" for o in db.objects())
        assert not up.health["flaky"].failing and up.pending() == 0
        messages = [r.getMessage() for r in caplog.records]
        assert any("store unavailable; backing off" in m for m in messages)
        assert any("store reachable again" in m for m in messages)
    finally:
        up.shutdown()
        db.close()


def test_an_objects_own_failure_does_not_back_its_store_off(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    store = MemoryStore("s")
    q: queue.SimpleQueue = queue.SimpleQueue()

    def send(obj: ObjectRow) -> None:
        raise FileNotFoundError("the staged copy is gone")

    up = Uploader(db, ["s"], send, q.put, workers=1, retry_base=0.2, retry_max=0.4)
    try:
        _encoded_file(db, "a" * 32, ["s"])
        up.reload(db.upload_queue())
        up.dispatch()
        ev = q.get(timeout=5)
        assert isinstance(ev, Uploaded) and isinstance(ev.error, FileNotFoundError)
        assert up.on_uploaded(ev, cancelling=False) == "a" * 32
        assert not up.health["s"].failing and up.pending() == 0  # picked up by a reload
        assert "staged copy is gone" in db.file("a" * 32).error
        assert list(store.list("")) == []
    finally:
        up.shutdown()
        db.close()


# --------------------------------------------------------------- event dispatch

@pytest.fixture
def daemon(tmp_path: Path):
    d = Daemon(load_config(daemon_config(tmp_path)))
    yield d
    d.uploader.shutdown()
    d.encoder.shutdown()
    d.maintenance.shutdown(wait=False, cancel_futures=True)
    d.v.close()


def test_the_loop_dispatches_each_event_by_its_type(daemon: Daemon, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    daemon.handle(PathSeen((inbox / "a.dcm", str(tmp_path / "elsewhere.dcm"))))
    assert daemon.intake.waiting() == 1  # the one elsewhere is not in the inbox: ignored
    (inbox / "b.dcm").write_bytes(b"b")
    daemon.handle(Rescan())
    assert daemon.intake.waiting() == 2
    daemon.finisher.backup_due = 1e12
    daemon.finisher.manifest_dirty = False
    daemon.handle(BackupNow())
    assert daemon.finisher.backup_due == 0.0 and daemon.finisher.manifest_dirty
    daemon.uploader.health["cloud-b"].fail(time.monotonic(), "down", time.monotonic())
    daemon.handle(VerifyNow())  # a store is down: skipped, not started
    assert "cloud-b" in daemon.verifier.last["skipped"] and not daemon.verifier.running
    daemon.handle(Verified({"at": 1.0, "files": 3}))
    assert daemon.verifier.last == {"at": 1.0, "files": 3}
    obj = ObjectRow(id=7, file_id="c" * 32, role="public", shard=0, store="cloud-b",
                    name="n", offset=0, length=1, object_size=1, digest="0", state="pending",
                    checked=None, digest_alg=None)
    daemon.uploader.in_flight[obj.id] = obj
    daemon.handle(Uploaded(obj, time.monotonic()))
    assert not daemon.uploader.in_flight and "c" * 32 in daemon.finisher.settled
    assert not daemon.uploader.health["cloud-b"].failing  # a success ends the backoff
    daemon.handle(Wake())
    with pytest.raises(TypeError, match="unknown event"):
        daemon.handle(("path", inbox / "a.dcm"))  # the old tuples are gone


def test_intake_claims_nothing_while_the_gate_is_shut(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "inbox" / "a.dcm").write_bytes(b"a" * 100)
    daemon.intake.rescan()
    daemon.gate.free = lambda: 0
    daemon.gate.check()
    stop = threading.Event()
    time.sleep(0.35)  # stable_seconds of the test config
    assert daemon.intake.claim(stop) == [] and daemon.intake.waiting() == 1
    daemon.gate.free = lambda: 1 << 40
    daemon.gate.check()
    daemon.intake.claim(stop)  # first look at the file's size and mtime
    time.sleep(0.35)
    claimed = daemon.intake.claim(stop)
    assert [size for _, size in claimed] == [100]
    assert daemon.v.db.file(claimed[0][0]).state == FileState.CLAIMED


def test_a_failing_encode_backs_off_then_goes_to_quarantine(daemon: Daemon,
                                                            tmp_path: Path) -> None:
    from dispersiond.daemon.encoder import ENCODE_ATTEMPTS
    from dispersiond.daemon.events import Encoded

    (tmp_path / "inbox" / "a.dcm").write_bytes(b"a" * 100)
    daemon.intake.rescan()
    stop = threading.Event()
    daemon.intake.claim(stop)
    time.sleep(0.35)
    ((fid, _),) = daemon.intake.claim(stop)
    enc = daemon.encoder
    waits = []
    for attempt in range(1, ENCODE_ATTEMPTS):
        enc.waiting.pop(fid, None)  # as `start` does when it hands the file to the pool
        enc.encoding.add(fid)
        daemon.handle(Encoded.one(fid, time.monotonic(), RuntimeError("codec exploded")))
        assert fid in enc.waiting and fid not in enc.encoding
        assert daemon.v.db.file(fid).attempts == attempt
        waits.append(enc.retry[fid].wait(time.monotonic()))
        enc.start(stopping=False)
        assert fid in enc.waiting and not enc.encoding  # backing off: not started
    assert waits[1] > waits[0] > 0  # exponential, from retry_base
    enc.waiting.pop(fid)
    daemon.handle(Encoded.one(fid, time.monotonic(), RuntimeError("codec exploded")))
    f = daemon.v.db.file(fid)
    assert f.state == FileState.FAILED and "encoding failed 3 times" in f.error
    assert fid not in enc.waiting and fid not in enc.retry
    assert (tmp_path / "state" / "quarantine" / fid / "a.dcm").read_bytes() == b"a" * 100


# --------------------------------------------------------------- batches of small files

def test_batches_are_cut_by_count_and_bytes_in_arrival_order() -> None:
    from dispersiond.ops.encode import batches

    def cut(items, **bounds):
        return [[fid for fid, _ in b] for b in batches(items, **bounds)]

    items = [(f"f{i}", 10) for i in range(7)]
    assert cut(items, files=3, size=1000) == [["f0", "f1", "f2"], ["f3", "f4", "f5"], ["f6"]]
    assert cut(items, files=100, size=25) == [["f0", "f1"], ["f2", "f3"], ["f4", "f5"], ["f6"]]
    # A file at or above `small` goes alone, and closes the run before it (arrival order);
    # a small one above the byte bound is a batch of its own. Nothing is ever dropped.
    assert cut([("a", 5), ("big", 50), ("b", 5), ("c", 30), ("d", 5)], files=10, size=20,
               small=50) == [["a"], ["big"], ["b"], ["c"], ["d"]]
    assert cut([], files=3, size=10) == []
    taken = []
    lazy = batches(((taken.append(i) or (f"f{i}", 1)) for i in range(1000)), files=4)
    assert len(next(lazy)) == 4 and len(taken) == 5  # looked one file past the first batch


def test_a_batch_needs_the_staging_slack_once(tmp_path: Path) -> None:
    from dispersiond.daemon.encoder import batch_need, staging_need

    cfg = load_config(local_config(tmp_path, "erasure"))
    sizes = [16 << 10] * 64
    need = batch_need(cfg.public, sizes)
    assert need == staging_need(cfg.public, 16 << 10, False) + 63 * (
        staging_need(cfg.public, 16 << 10, False) - (1 << 20))
    assert need < 64 * staging_need(cfg.public, 16 << 10, False) / 10
    assert need >= sum(sizes) * 1.5  # 3 shards of k=2: 1.5x the bytes, before padding


def _claim_files(daemon: Daemon, inbox: Path, files: dict[str, bytes]) -> dict[str, str]:
    """Drop `files` and claim them; returns name -> file id."""
    for name, data in files.items():
        (inbox / name).write_bytes(data)
    daemon.intake.rescan()
    stop = threading.Event()
    daemon.intake.claim(stop)  # first look: the stability clock starts
    time.sleep(0.35)
    for fid, size in daemon.intake.claim(stop):
        daemon.encoder.add(fid, size)
    return {f.name: f.file_id for f in daemon.v.db.files_in(FileState.CLAIMED)}


def _next_encoded(daemon: Daemon):
    from dispersiond.daemon.events import Encoded

    while True:
        ev = daemon.q.get(timeout=30)
        if isinstance(ev, Encoded):
            return ev


def test_small_files_are_encoded_as_one_batch_and_booked_at_once(daemon: Daemon,
                                                                  tmp_path: Path) -> None:
    from dispersiond.ops.encode import BATCH_FILE_MAX

    small = {f"lab-{i}.json": os.urandom(100 + i * 997) for i in range(9)}
    _claim_files(daemon, tmp_path / "inbox", small)
    ids = _claim_files(daemon, tmp_path / "inbox", {"scan.dcm": os.urandom(BATCH_FILE_MAX)})
    enc = daemon.encoder
    assert len(enc.waiting) == 10
    enc.start(stopping=False)
    assert (enc.batches, enc.tasks) == (1, 1)  # a batch on its thread, a file on the pool
    assert len(enc.encoding) == 10 and not enc.waiting
    events = [_next_encoded(daemon), _next_encoded(daemon)]
    batch = next(ev for ev in events if len(ev.outcomes) > 1)
    assert sorted(batch.fids) == sorted(ids[n] for n in small)  # the large one alone
    assert all(exc is None for _, exc in batch.outcomes)
    for ev in events:
        assert daemon.encoder.on_encoded(ev, cancelling=False) == []  # no early uploads
    assert enc.tasks == 0 and enc.batches == 0 and not enc.encoding
    assert {f.state for f in daemon.v.db.files()} == {FileState.ENCODED}
    per_file = len(daemon.v.db.objects(ids["lab-0.json"]))
    assert per_file == 4 and daemon.uploader.pending() == 10 * per_file  # queued at once


def test_a_bad_file_in_a_batch_is_booked_alone(daemon: Daemon, tmp_path: Path) -> None:
    files = {f"vitals-{i}.hl7": os.urandom(500) for i in range(5)}
    ids = _claim_files(daemon, tmp_path / "inbox", files)
    gone = ids["vitals-2.hl7"]
    Path(daemon.v.db.file(gone).source).unlink()  # vanished behind the daemon's back
    daemon.encoder.start(stopping=False)
    ev = _next_encoded(daemon)
    assert len(ev.outcomes) == 5
    assert [fid for fid, exc in ev.outcomes if exc is not None] == [gone]
    daemon.handle(ev)
    f = daemon.v.db.file(gone)
    assert f.state == FileState.FAILED and "vanished or cannot be read" in f.error
    others = [fid for name, fid in ids.items() if fid != gone]
    assert {daemon.v.db.file(fid).state for fid in others} == {FileState.ENCODED}
    assert daemon.uploader.pending() == 4 * len(daemon.v.db.objects(others[0]))
    assert not daemon.encoder.encoding and not daemon.encoder.waiting


def test_a_failed_batch_backs_off_each_file(daemon: Daemon, tmp_path: Path) -> None:
    """A batch that fails as a whole (here: an error no file is to blame for) books each
    of its files as a failed attempt, so each backs off and, in the end, is set aside."""
    from dispersiond.daemon.events import Encoded

    ids = _claim_files(daemon, tmp_path / "inbox", {f"r{i}.csv": b"a,b\n" * (i + 1)
                                                     for i in range(3)})
    enc = daemon.encoder
    fids = list(enc.waiting)
    for fid in fids:
        del enc.waiting[fid]
        enc.encoding.add(fid)
    enc.batches = 1
    err = OSError(5, "Input/output error")
    daemon.handle(Encoded(tuple((fid, err) for fid in fids), time.monotonic(), batch=True))
    assert enc.batches == 0 and not enc.encoding and set(enc.waiting) == set(ids.values())
    for fid in fids:
        f = daemon.v.db.file(fid)
        assert f.state == FileState.CLAIMED and f.attempts == 1 and "Input/output" in f.error
        assert enc.retry[fid].wait(time.monotonic()) > 0
    enc.start(stopping=False)
    assert enc.batches == 0 and enc.tasks == 0  # backing off: nothing started


# --------------------------------------------------------------- the after-policy of a batch

def _claimed_rows(daemon: Daemon, tmp_path: Path, files: dict[str, bytes]):
    ids = _claim_files(daemon, tmp_path / "inbox", files)
    rows = daemon.v.db.files_by_id(ids.values())
    return ids, list(rows.values())


def test_the_after_policy_of_a_batch_is_one_record_and_one_fsync_a_folder(
        daemon: Daemon, tmp_path: Path, monkeypatch) -> None:
    from contextlib import contextmanager

    from dispersiond import inbox as ib

    files = {f"obs-{i}.json": os.urandom(300 + i) for i in range(6)}
    ids, rows = _claimed_rows(daemon, tmp_path, files)
    v = daemon.v
    assert v.cfg.after == "keep"
    synced: list[str] = []
    real_fsync, real_tx, txs = os.fsync, v.db.tx, [0]

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    @contextmanager
    def counted():
        txs[0] += 1
        with real_tx() as conn:
            yield conn

    monkeypatch.setattr(os, "fsync", spy)
    v.db.tx = counted
    try:
        done, failed = ib.apply_after_many(v, rows)
    finally:
        v.db.tx = real_tx
        monkeypatch.setattr(os, "fsync", real_fsync)
    assert failed == [] and done == dict.fromkeys(ids.values(), "kept")
    assert txs[0] == 1  # where every original went, recorded at once
    kept, claimed = v.root / "kept", v.root / "claimed"
    assert sorted(synced) == sorted([str(kept), str(claimed)])  # one fsync a folder
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == files
    assert not any(claimed.iterdir())
    for name, fid in ids.items():
        assert v.db.file(fid).source == str(kept / name)


def test_an_after_policy_cut_short_is_finished_by_the_next_look(daemon: Daemon,
                                                                tmp_path: Path) -> None:
    """A crash after the new places were recorded, before the originals left claimed/:
    the next look removes an original whose new place is there, and puts one whose new
    place is gone there again; no original is ever lost."""
    from dispersiond import inbox as ib

    files = {"a.hl7": b"MSH|a" * 50, "b.hl7": b"MSH|b" * 50}
    ids, rows = _claimed_rows(daemon, tmp_path, files)
    v = daemon.v
    kept = v.root / "kept"
    kept.mkdir()
    dests = {f.file_id: ib.link_into(Path(f.source), kept, f) for f in rows}
    v.db.set_sources([(fid, str(dest)) for fid, dest in dests.items()])  # then: the crash
    dests[ids["b.hl7"]].unlink()  # and b's new place went missing meanwhile
    fresh = list(v.db.files_by_id(ids.values()).values())
    done, failed = ib.apply_after_many(v, fresh)
    assert failed == []
    assert done == {ids["a.hl7"]: "untouched", ids["b.hl7"]: "kept"}
    assert not any((v.root / "claimed").iterdir())
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == files
    assert ib.apply_after_many(v, list(v.db.files_by_id(ids.values()).values())) == (
        dict.fromkeys(ids.values(), "untouched"), [])  # done: nothing more to do


def _burst(tmp_path: Path, n: int, **cfg) -> tuple[Daemon, threading.Event]:
    """An in-process daemon with `n` small files waiting in its inbox."""
    stop = threading.Event()
    d = Daemon(load_config(daemon_config(tmp_path, stable_seconds=0, **cfg)), stop=stop)
    for i in range(n):
        (tmp_path / "inbox" / f"r{i:02d}.dcm").write_bytes(os.urandom(200 + i))
    return d, stop


def _run_until(d: Daemon, stop: threading.Event, enough, timeout: float) -> list[str]:
    """Run the daemon in this thread (it installs its signal handlers) until `enough()`
    or `timeout` seconds; returns the names of the files done by then."""
    done: list[str] = []

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done[:] = [f.name for f in d.v.db.files_in(FileState.DONE)]
            if enough(done):
                break
            time.sleep(0.05)
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    d.run()
    return done


def test_a_burst_is_committed_and_finished_a_slice_at_a_time(tmp_path: Path,
                                                              monkeypatch) -> None:
    """The finisher reads a pack's settled files FINISH_BATCH at a time (one transaction
    each): every file of a burst larger than a slice still becomes done, once."""
    from dispersiond.daemon import finisher

    monkeypatch.setattr(finisher, "FINISH_BATCH", 3)
    seen: list[int] = []
    real_finish = finisher.finish

    def counting(v, fids, **kw):
        fids = list(fids)
        seen.append(len(fids))
        return real_finish(v, fids, **kw)

    monkeypatch.setattr(finisher, "finish", counting)
    d, stop = _burst(tmp_path, 11)
    done = _run_until(d, stop, lambda done: len(done) >= 11, 60)
    assert seen and max(seen) <= 3 and sum(seen) >= 11
    assert sorted(done) == [f"r{i:02d}.dcm" for i in range(11)]
    assert not list((tmp_path / "inbox").iterdir())  # every original deleted, once


@pytest.mark.parametrize("burst_files", [4, 10**9])
def test_a_daemon_never_idle_backs_up_once_enough_files_committed(
        tmp_path: Path, monkeypatch, burst_files: int) -> None:
    """A burst that never lets the daemon idle: with BURST_BACKUP_FILES below the files
    committed, a backup runs and they become done; above it, the backup waits for the
    schedule (an hour here) and nothing becomes done."""
    from dispersiond.daemon import finisher

    monkeypatch.setattr(finisher, "BURST_BACKUP_FILES", burst_files)
    d, stop = _burst(tmp_path, 6, schedule={"manifest_backup": "1h"})
    d.finisher.idle = lambda: False
    d.finisher.last_backup_mono = time.monotonic()  # as if the start-up backup just ran

    all_in: list[float] = []  # when all six were committed

    def enough(done: list[str]) -> bool:
        if len(done) == 6:
            return True
        if not all_in and len(d.v.db.files_in(FileState.COMMITTED, FileState.DONE)) == 6:
            all_in.append(time.monotonic())
        return bool(all_in) and time.monotonic() > all_in[0] + 1.5  # a backup had time

    done = _run_until(d, stop, enough, 30)
    assert len(done) == (6 if burst_files <= 6 else 0)
    assert all_in or burst_files <= 6
