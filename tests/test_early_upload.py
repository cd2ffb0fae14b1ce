"""Large files start uploading while they are encoded (dispersiond/tap.py, protect.EarlyUploadRun).

What must hold: the uploads really overlap the encode; what they send is exactly the
staged bytes; an encode that fails or is killed leaves no object in any store that the
manifest does not account for; and the file still restores bit-exact afterwards.
"""
from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from backends import SourceError, open_store
from dispersiond import digests
from dispersiond.config import load_config
from dispersiond.ops.protect import (EARLY_UPLOAD_MIN, EarlyUploads, Throttle, admit,
                                      encode)
from dispersiond.state import peek
from dispersiond.tap import DirectUploadFailed, Pipe, Tap
from dispersiond.archive import open_archive
from dsp import cli, cli_json, real_files, write_config

BIG = EARLY_UPLOAD_MIN + (3 << 20) + 12345  # odd size: a partial last chunk and a tail


def big_file(path: Path) -> Path:
    """A real DICOM's bytes up front (its header goes to the container), random after."""
    head = real_files()[0].read_bytes()
    path.write_bytes(head + os.urandom(BIG - len(head)))
    return path


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def s3_config(tmp_path: Path, make_store_settings) -> Path:
    stores = [{"name": "aws", "type": "s3", "trust": "untrusted", **make_store_settings("s3")},
              {"name": "disk", "type": "local", "trust": "untrusted",
               **make_store_settings("local")},
              {"name": "vault", "type": "s3", "trust": "trusted", **make_store_settings("s3")}]
    return write_config(tmp_path, stores, {"mode": "replicate", "stores": ["aws", "disk"]},
                        {"min_trust": "trusted", "stores": ["vault"]})


def store_names(cfg_path: Path) -> dict[str, set[str]]:
    raw = yaml.safe_load(cfg_path.read_text())
    out = {}
    for s in raw["stores"]:
        settings = {k: v for k, v in s.items() if k not in ("name", "type", "trust")}
        with open_store(s["type"], s["name"], **settings) as st:
            out[s["name"]] = {n for n in st.list("") if not n.startswith("manifest")}
    return out


def recorded_names(cfg_path: Path) -> dict[str, set[str]]:
    cfg = load_config(cfg_path)
    db = sqlite3.connect(Path(cfg.state_dir) / "state.db")
    try:
        out: dict[str, set[str]] = {s.name: set() for s in cfg.stores}
        for store, name in db.execute("SELECT store, name FROM objects"):
            out[store].add(name)
        return out
    finally:
        db.close()


def dead_store_config(tmp_path: Path) -> Path:
    """Replicas on a local folder and on an S3 endpoint nobody listens on."""
    stores = [{"name": "disk", "type": "local", "trust": "untrusted", "path": str(tmp_path / "d")},
              {"name": "dead", "type": "s3", "trust": "untrusted", "bucket": "nowhere",
               "endpoint_url": "http://127.0.0.1:9", "region": "us-east-1",
               "addressing_style": "path", "access_key_id_env": "DSP_TEST_KEY",
               "secret_access_key_env": "DSP_TEST_KEY", "max_attempts": 1},
              {"name": "vault", "type": "local", "trust": "trusted", "path": str(tmp_path / "v")}]
    os.environ["DSP_TEST_KEY"] = "test"
    return write_config(tmp_path, stores, {"mode": "replicate", "stores": ["disk", "dead"]},
                        {"min_trust": "trusted", "stores": ["vault"]})


def planned(db_path: Path) -> int:
    """Names recorded for early uploads (a running daemon's database, read-only)."""
    return peek(db_path, "SELECT COUNT(*) FROM planned", timeout=1)


# ------------------------------------------------------------------ the tap itself

def test_tap_reader_follows_the_writer_and_fails_with_it(tmp_path):
    tap = Tap(10)
    with open(tmp_path / "f", "w+b") as f:  # a tap reads through the writer's descriptor
        tap.attach(f.fileno())
        got: list[bytes] = []
        r = threading.Thread(target=lambda: got.append(tap.reader().read(10)))
        r.start()
        f.write(b"01234")
        f.flush()
        tap.advance(5)
        time.sleep(0.2)
        assert r.is_alive() and not got  # 5 of 10 bytes: the reader waits
        f.write(b"56789")
        f.flush()
        tap.advance(10)
        r.join(5)
        assert got == [b"0123456789"]
        assert tap.reader().read() == b"0123456789" and tap.reader().read(0) == b""

    failing = Tap(10)
    failing.attach(os.open(tmp_path / "f", os.O_RDONLY))
    failing.fail(OSError(28, "No space left on device"))
    with pytest.raises(SourceError, match="stopped"):
        failing.reader().read(4)

    short = Tap(20)  # the writer finished with fewer bytes than planned
    short.attach(os.open(tmp_path / "f", os.O_RDONLY))
    short.advance(10)
    short.finish()
    rd = short.reader()
    assert rd.read(10) == b"0123456789"
    with pytest.raises(SourceError, match="ended at 10 bytes"):
        rd.read(10)
    for t in (tap, failing, short):
        t.close()


def test_pipe_hands_over_in_order_holds_at_most_cap_and_fails_both_ways():
    pipe = Pipe(10, "aws", cap=4)
    got: list[bytes] = []
    rd = pipe.reader()
    pipe.put(b"0123")
    blocked = threading.Thread(target=pipe.put, args=(b"45",))
    blocked.start()
    time.sleep(0.2)
    assert blocked.is_alive() and pipe.buffered == 4  # full: the writer waits
    got.append(rd.read(3))
    blocked.join(5)
    assert not blocked.is_alive()
    pipe.put(memoryview(bytearray(b"6789")))  # a view into a reused buffer is copied
    pipe.finish()
    while len(b"".join(got)) < 10:
        got.append(rd.read(100))
    assert b"".join(got) == b"0123456789" and rd.read(5) == b""
    with pytest.raises(ValueError, match="more than the 10 bytes"):
        pipe.put(b"x")

    short = Pipe(10, "aws")
    short.put(b"01234")
    short.finish()
    srd = short.reader()
    assert srd.read(10) == b"01234"
    with pytest.raises(SourceError, match="wrote 5 bytes; 10 were planned"):
        srd.read(5)

    failing = Pipe(10, "aws")
    failing.fail(OSError(28, "No space left on device"))
    with pytest.raises(SourceError, match="stopped"):
        failing.reader().read(4)

    broken = Pipe(10, "aws", cap=2)
    broken.put(b"01")
    waiting = []
    t = threading.Thread(target=lambda: waiting.append(pytest.raises(
        DirectUploadFailed, broken.put, b"23")))
    t.start()
    time.sleep(0.2)
    broken.broken(DirectUploadFailed("aws", OSError("connection reset")))
    t.join(5)
    assert waiting and waiting[0].value.store == "aws"  # the waiting writer is told at once
    assert broken.buffered == 0


# ------------------------------------------------------------------ through real stores

def test_large_file_uploads_while_it_is_encoded(tmp_path, make_store_settings):
    cfg_path = s3_config(tmp_path, make_store_settings)
    src = big_file(tmp_path / "study.dcm")
    me = threading.current_thread()
    read = sent = 0
    sending = threading.Event()
    overlapped = []

    def progress(n: int) -> None:
        nonlocal read, sent
        if threading.current_thread() is not me:  # an upload thread
            sent += n
            sending.set()
            return
        read += n
        if read == BIG:  # the encoder's last read: its last chunk is not written yet.
            # Uploads that only began after the encode would never come: wait for them.
            overlapped.append(sending.wait(30))

    with open_archive(load_config(cfg_path), exclusive=True) as v:
        fid = admit(v, src, "study.dcm")
        encode(v, fid, progress, EarlyUploads(frozenset({"aws", "disk", "vault"}),
                                       Throttle(None), progress))
        objs = v.db.objects(fid)
        assert len(objs) == 3 and {o.state for o in objs} == {"uploaded"}
        assert v.db.query("SELECT COUNT(*) FROM planned")[0][0] == 0
        # The public fragment went straight from memory to both stores: never staged.
        assert not (Path(v.root) / "work" / fid / "puf").exists()
        for o in objs:  # each store holds exactly the bytes whose digest the manifest keeps
            assert digests.of(o.digest_alg, v.store(o.store).get_bytes(o.name)) == o.digest
    assert overlapped == [True]  # uploads moved while the encoder was still at work
    assert read == BIG and sent == sum(o.object_size for o in objs)

    res = cli_json(cfg_path, "put", "--resume")  # nothing left to send: it commits and ends
    assert [f["state"] for f in res["files"]] == ["done"]
    cli(cfg_path, "restore", fid, "--to", str(tmp_path / "back"))
    assert sha(tmp_path / "back") == sha(src)
    assert cli_json(cfg_path, "verify", "--deep")["problems"] == []
    assert store_names(cfg_path) == recorded_names(cfg_path)


def test_a_failed_encode_takes_its_early_uploads_back(tmp_path, make_store_settings):
    cfg_path = s3_config(tmp_path, make_store_settings)
    src = big_file(tmp_path / "study.dcm")

    class DiskFull(OSError):
        pass

    read = 0

    def fail_late(n: int) -> None:
        nonlocal read
        if threading.current_thread() is threading.main_thread():
            read += n
            if read > BIG - (1 << 20):  # near the end: some objects may be complete
                raise DiskFull(28, "No space left on device")

    with open_archive(load_config(cfg_path), exclusive=True) as v:
        fid = admit(v, src, "study.dcm")
        with pytest.raises(DiskFull):
            encode(v, fid, fail_late, EarlyUploads(frozenset({"aws", "disk", "vault"}), Throttle(None)))
        assert v.db.file(fid).state == "claimed" and v.db.objects(fid) == []
        assert v.db.query("SELECT COUNT(*) FROM planned")[0][0] == 0
        assert v.db.query("SELECT COUNT(*) FROM trash")[0][0] == 3  # one name per store
        assert not any((Path(v.root) / "work").iterdir())
        assert v.empty_trash() == (3, 0)
    assert store_names(cfg_path) == {"aws": set(), "disk": set(), "vault": set()}

    res = cli_json(cfg_path, "put", "--resume")  # the next attempt finishes the file
    assert [f["state"] for f in res["files"]] == ["done"]
    cli(cfg_path, "restore", fid, "--to", str(tmp_path / "back"))
    assert sha(tmp_path / "back") == sha(src)
    assert store_names(cfg_path) == recorded_names(cfg_path)


def test_a_put_killed_mid_encode_leaves_no_orphan(tmp_path):
    """SIGKILL while early uploads run (local stores: what they hold is plain to see);
    the next run sends every name the dead one planned to the trash and deletes it."""
    stores = [{"name": n, "type": "local", "trust": t, "path": str(tmp_path / n)}
              for n, t in (("cloud-a", "untrusted"), ("cloud-b", "untrusted"),
                           ("vault", "trusted"))]
    cfg = write_config(tmp_path, stores, {"mode": "replicate", "stores": ["cloud-a", "cloud-b"]},
                       {"min_trust": "trusted", "stores": ["vault"]},
                       schedule={"bandwidth_limit": "8MiB"})  # slow enough to be caught mid-way
    src = big_file(tmp_path / "study.dcm")
    proc = subprocess.Popen([sys.executable, "-m", "dispersiond", "-c", str(cfg), "put", str(src)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db_path = tmp_path / "state" / "state.db"
    deadline = time.monotonic() + 60
    landed: dict[str, set[str]] = {}
    while time.monotonic() < deadline and proc.poll() is None and not any(landed.values()):
        time.sleep(0.02)
        landed = store_names(cfg)  # the container lands first: the public uploads go on
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert any(landed.values()), "the put ended before it could be killed mid-way"
    db = sqlite3.connect(db_path)
    assert db.execute("SELECT state FROM files").fetchall() == [("claimed",)]
    assert db.execute("SELECT COUNT(*) FROM planned").fetchone() == (3,)
    assert db.execute("SELECT COUNT(*) FROM objects").fetchone() == (0,)
    db.close()

    res = cli_json(cfg, "put", "--resume")
    assert [f["state"] for f in res["files"]] == ["done"]
    assert store_names(cfg) == recorded_names(cfg)  # nothing the manifest does not know
    fid = res["files"][0]["file_id"]
    cli(cfg, "restore", fid, "--to", str(tmp_path / "back"))
    assert sha(tmp_path / "back") == sha(src)


def test_an_unreachable_store_leaves_its_early_upload_pending(tmp_path):
    """Early uploads are an optimisation: the one to a store that is down just stays
    pending for the normal retries, and the others land."""
    cfg_path = dead_store_config(tmp_path)
    src = big_file(tmp_path / "study.dcm")
    with open_archive(load_config(cfg_path), exclusive=True) as v:
        fid = admit(v, src, "study.dcm")
        encode(v, fid, None, EarlyUploads(frozenset({"disk", "dead", "vault"}), Throttle(None),
                                   direct=False))
        assert {o.store: o.state for o in v.db.objects(fid)} == {
            "disk": "uploaded", "dead": "pending", "vault": "uploaded"}
        assert v.db.query("SELECT COUNT(*) FROM planned")[0][0] == 0
        assert (Path(v.root) / "work" / fid / "puf").exists()  # kept for the retries


def test_a_failed_direct_upload_fails_the_encode_and_put_falls_back(tmp_path):
    """Sent straight from memory, the public object has no staged copy to retry from:
    its failure fails the encode (nothing is left behind but trash), and `put` then
    encodes again with a staged copy for the store that failed, kept for resume."""
    cfg_path = dead_store_config(tmp_path)
    src = big_file(tmp_path / "study.dcm")
    with open_archive(load_config(cfg_path), exclusive=True) as v:
        fid = admit(v, src, "study.dcm")
        with pytest.raises(DirectUploadFailed) as err:
            encode(v, fid, None, EarlyUploads(frozenset({"disk", "dead", "vault"}), Throttle(None)))
        assert err.value.store == "dead" and "Unavailable" in str(err.value)
        assert v.db.file(fid).state == "claimed" and v.db.objects(fid) == []
        assert v.db.query("SELECT COUNT(*) FROM planned")[0][0] == 0
        assert v.db.query("SELECT COUNT(*) FROM trash")[0][0] == 3  # whatever landed goes
        assert not (Path(v.root) / "work" / fid).exists()
        v.empty_trash()  # the dead store's entry waits there for it to come back
        assert not any(list(v.store(s).list("")) for s in ("disk", "vault"))

    res = cli_json(cfg_path, "put", "--resume", expect=None)
    assert res["files"][0]["state"] == "committed"  # restorable from disk; dead still owed
    with open_archive(load_config(cfg_path), exclusive=True) as v:
        assert {o.store: o.state for o in v.db.objects(fid)} == {
            "disk": "uploaded", "dead": "pending", "vault": "uploaded"}
        assert (Path(v.root) / "work" / fid / "puf").exists()  # the copy the retries send
    cli(cfg_path, "restore", fid, "--to", str(tmp_path / "back"))
    assert sha(tmp_path / "back") == sha(src)


def test_sigterm_during_early_uploads_then_the_daemon_finishes(tmp_path):
    from daemonctl import DaemonProc, daemon_config, edit_config, status, wait_until

    cfg = daemon_config(tmp_path, "replicate", after="delete",
                        schedule={"bandwidth_limit": "4MiB"})
    src = big_file(tmp_path / "study.dcm")
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    db_path = tmp_path / "state" / "state.db"

    try:
        wait_until(lambda: db_path.exists(), 30, "the daemon to start", d)
        want = sha(src)
        os.rename(src, tmp_path / "inbox" / "study.dcm")
        wait_until(lambda: planned(db_path), 30, "early uploads to begin", d)
        code, took = d.terminate(timeout=30)
    finally:
        d.kill()
    assert code == 0 and took < 20, (code, took, d.tail())
    assert status(cfg)["files"].get("done", 0) == 0  # it really was stopped mid-way

    edit_config(cfg, schedule={"bandwidth_limit": None})
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    try:
        wait_until(lambda: status(cfg)["files"].get("done") == 1, 60, "done after restart", d)
    finally:
        d.terminate()
    assert store_names(cfg) == recorded_names(cfg)  # the interrupted uploads left nothing
    fid = cli_json(cfg, "ls")[0]["file_id"]
    cli(cfg, "restore", fid, "--to", str(tmp_path / "back"))
    assert sha(tmp_path / "back") == want


def test_small_files_keep_flowing_while_large_ones_upload(tmp_path):
    """One large file at a time uploads while it is encoded, on its own thread (which
    takes as long as its upload: here ~10 s); the next large one and the small files are
    encoded meanwhile and queue for upload as usual."""
    from daemonctl import DaemonProc, daemon_config, drop, status, wait_until

    cfg = daemon_config(tmp_path, "replicate", after="delete",
                        schedule={"bandwidth_limit": "2MiB"})  # ~20 s for the two large ones
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    try:
        wait_until(lambda: status(cfg)["running"], 30, "start-up", d)
        for i in range(2):
            drop(tmp_path / "inbox", f"scan-{i}.dcm", os.urandom(EARLY_UPLOAD_MIN + (2 << 20)))
        time.sleep(1.0)
        for i in range(5):
            drop(tmp_path / "inbox", f"note-{i}.hl7", os.urandom(2000 + i))


        def others_encoded() -> bool:  # all but the one uploading while it is encoded
            files = status(cfg)["files"]
            past = sum(files.get(s, 0) for s in ("encoded", "committed", "done"))
            return files.get("claimed") == 1 and past == 6

        wait_until(others_encoded, 10, "every other file encoded while one large one "
                   "uploads", d)
        # Under the cap the small files share the link with the large ones in small
        # slices: done in ~5 s here, where 1 MiB slices took ~20 s.
        wait_until(lambda: status(cfg)["files"].get("done", 0) >= 5, 12,
                   "the small files done while the large ones still upload", d)
        assert status(cfg)["files"].get("done", 0) == 5
    finally:
        d.terminate(timeout=30)


def test_daemon_store_dying_under_a_direct_upload_reencodes_staged(tmp_path, make_store_settings,
                                                                   spawn_server):
    """The S3 server dies while a large file streams to it from memory: the encode fails,
    the store backs off, the file is encoded again at once with a staged copy for S3 and
    becomes restorable from the other replica; when S3 is back, it completes."""
    from buckets import create_bucket
    from daemonctl import DaemonProc, status, wait_until

    s3 = spawn_server("s3")
    aws = make_store_settings("s3", s3)
    stores = [{"name": "aws", "type": "s3", "trust": "untrusted", **aws},
              {"name": "disk", "type": "local", "trust": "untrusted",
               "path": str(tmp_path / "disk")},
              {"name": "vault", "type": "local", "trust": "trusted", "path": str(tmp_path / "v")}]
    (tmp_path / "inbox").mkdir()
    cfg = write_config(tmp_path, stores, {"mode": "replicate", "stores": ["aws", "disk"]},
                       {"min_trust": "trusted", "stores": ["vault"]},
                       inbox=str(tmp_path / "inbox"), after="delete", stable_seconds=0.2,
                       schedule={"rescan": "1s", "retry_base": "1s", "retry_max": "2s",
                                 "bandwidth_limit": "4MiB"})  # ~5 s: caught mid-way
    src = big_file(tmp_path / "study.dcm")
    want = sha(src)
    db_path = tmp_path / "state" / "state.db"

    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    try:
        wait_until(lambda: status(cfg)["running"], 30, "start-up", d)
        os.rename(src, tmp_path / "inbox" / "study.dcm")
        wait_until(lambda: planned(db_path), 30, "direct uploads to begin", d, every=0.02)
        time.sleep(0.5)
        s3.stop()
        wait_until(lambda: status(cfg)["files"].get("committed", 0) == 1, 60,
                   "restorable from the other replica", d)
        st = status(cfg)
        assert st["stores"]["aws"]["failing"] and st["stores"]["aws"]["pending_objects"] == 1
        work = tmp_path / "state" / "work"
        assert [p.name for p in work.iterdir() for p in p.iterdir()] == ["puf"]  # staged now
        s3.start()
        create_bucket(s3, aws["bucket"])
        wait_until(lambda: status(cfg)["files"].get("done", 0) == 1, 60, "done after", d)
    finally:
        code, _ = d.terminate()
    assert code == 0
    log = (tmp_path / "daemon.log").read_text()
    assert "direct upload failed" in log and "study.dcm" not in log
    fid = cli_json(cfg, "ls")[0]["file_id"]
    cli(cfg, "restore", fid, "--to", str(tmp_path / "back"))
    assert sha(tmp_path / "back") == want
    names = store_names(cfg)
    assert names["disk"] == recorded_names(cfg)["disk"]  # the first attempt's object: gone
    assert cli_json(cfg, "verify")["problems"] == []
