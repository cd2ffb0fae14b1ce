"""The daemon as a real subprocess: inbox to done on local stores and on the emulators,
the systemd notify protocol, the unit file, faults (quarantine, full disk, store down,
bad config), schedules (upload window, bandwidth) and SIGTERM."""
from __future__ import annotations

import datetime as dt
import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from daemonctl import (
    DaemonProc,
    daemon_config,
    done_count,
    drop,
    edit_config,
    sha,
    status,
    wait_until,
)
from dsp import ROOT, cli, cli_json, real_files, write_config

from dispersiond.daemon import in_window, window_opens


def restore_and_compare(cfg: Path, originals: dict[str, bytes], out: Path,
                        via_cli: bool = False) -> None:
    """Every file restores bit-exact (through the CLI, or the same code with one vault)."""
    from dispersiond.config import load_config
    from dispersiond.ops.restore import restore
    from dispersiond.archive import open_archive

    out.mkdir(exist_ok=True)
    if via_cli:
        for name in originals:
            cli(cfg, "restore", name, "--to", str(out / name))
    else:
        with open_archive(load_config(cfg)) as v:
            for name in originals:
                restore(v, name, out / name)
    for name, data in originals.items():
        assert sha((out / name).read_bytes()) == sha(data), name


# ------------------------------------------------------------------ end to end, local stores

def test_inbox_to_done_on_local_stores(tmp_path):
    moved = tmp_path / "protected"
    cfg = daemon_config(tmp_path, after="move", after_move_to=str(moved))
    inbox = tmp_path / "inbox"
    originals = {p.name: p.read_bytes() for p in real_files()}
    originals["patient-rosalind-franklin.bin"] = os.urandom(300_000)
    originals["empty-record.txt"] = b""
    ignored = {".hidden-record": b"h", "upload.part": b"p", "scan.tmp": b"t", "notes~": b"n"}
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    try:
        for name, data in {**originals, **ignored}.items():
            drop(inbox, name, data) if not name.startswith(".") else (inbox / name).write_bytes(data)
        wait_until(lambda: status(cfg)["files"]["done"] == len(originals), 60, "all done", d)
        # Only the ignored names are left; every original sits, unchanged, in the move folder.
        assert sorted(p.name for p in inbox.iterdir()) == sorted(ignored)
        assert {p.name: p.read_bytes() for p in moved.iterdir()} == originals
        st = cli_json(cfg, "status")
        assert st["running"] and st["files"]["done"] == len(originals)
        assert st["oldest_pending"] is None and st["files"]["failed"] == 0
        assert set(st["next_runs"]) >= {"rescan", "verify", "manifest_backup"}
        text = cli(cfg, "status")[1]
        assert "daemon: running" in text and f"done {len(originals)}" in text
        code, took = d.terminate()
    finally:
        d.kill()
    assert code == 0 and took < 10, d.tail()
    restore_and_compare(cfg, originals, tmp_path / "out", via_cli=True)
    assert not any((tmp_path / "state" / "claimed").iterdir())
    assert not any((tmp_path / "state" / "work").iterdir())
    # Structured logs, one JSON object a line, naming files by id and never by name.
    lines = d.lines()
    assert all(line["level"] != "raw" for line in lines), [x for x in lines if x["level"] == "raw"]
    done = [x for x in lines if x["msg"] == "file done"]
    assert len(done) == len(originals) and all(len(x["file_id"]) == 32 for x in done)
    text = d.log.read_text()
    for name in originals:
        assert name not in text and Path(name).stem not in text


def test_after_keep_keeps_originals_out_of_the_inbox(tmp_path):
    cfg = daemon_config(tmp_path, after="keep")
    data = {f"rec-{i}.csv": os.urandom(5000 + i) for i in range(3)}
    data["same-name.dat"] = b"first"
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    try:
        for name, blob in data.items():
            drop(tmp_path / "inbox", name, blob)
        wait_until(lambda: status(cfg)["files"]["done"] == 4, 30, "first batch", d)
        drop(tmp_path / "inbox", "same-name.dat", b"second version")  # a new file, same name
        wait_until(lambda: status(cfg)["files"]["done"] == 5, 30, "second version", d)
        time.sleep(1.5)  # a rescan or two: nothing is protected twice
        assert status(cfg)["files"]["done"] == 5
    finally:
        d.terminate()
    kept = tmp_path / "state" / "kept"
    names = sorted(p.name for p in kept.iterdir())
    assert len(names) == 5 and "same-name.dat" in names
    twin = next(n for n in names if n.startswith("same-name.") and n != "same-name.dat")
    assert {(kept / "same-name.dat").read_bytes(), (kept / twin).read_bytes()} == {
        b"first", b"second version"}
    assert not any((tmp_path / "inbox").iterdir())


def other_filesystem(tmp_path: Path) -> Path:
    """A writable folder on a filesystem other than tmp_path's (tmpfs, usually)."""
    import tempfile

    dev = tmp_path.stat().st_dev
    for cand in ("/dev/shm", "/run/shm", "/run", "/var/tmp", "/tmp"):
        p = Path(cand)
        if p.is_dir() and os.access(p, os.W_OK) and p.stat().st_dev != dev:
            return Path(tempfile.mkdtemp(prefix="dispersiond-test-", dir=p))
    raise AssertionError("no second writable filesystem for the cross-filesystem test")


def test_inbox_and_move_folder_on_another_filesystem(tmp_path):
    """Claims and moves across filesystems are copy + fsync + unlink, never a lost file."""
    other = other_filesystem(tmp_path)
    try:
        inbox, moved = other / "inbox", other / "protected"
        inbox.mkdir()
        cfg = daemon_config(tmp_path, inbox=str(inbox), after="move", after_move_to=str(moved))
        data = {f"x{i}.dcm": os.urandom(70_000 + i) for i in range(5)}
        d = DaemonProc(cfg, tmp_path / "daemon.log").start()
        try:
            for name, blob in data.items():
                drop(inbox, name, blob)
            wait_until(lambda: status(cfg)["files"]["done"] == 5, 30, "done", d)
        finally:
            d.terminate()
        assert not any(inbox.iterdir())
        assert {p.name: p.read_bytes() for p in moved.iterdir()} == data
        assert not any((tmp_path / "state" / "claimed").iterdir())
        restore_and_compare(cfg, data, tmp_path / "out")
    finally:
        shutil.rmtree(other, ignore_errors=True)


# ------------------------------------------------------------------ the emulators

def test_inbox_to_done_on_the_emulators(tmp_path, make_store_settings):
    stores = [{"name": name, "type": kind, "trust": "untrusted", **make_store_settings(kind)}
              for name, kind in (("aws", "s3"), ("gcp", "gcs"), ("azr", "azure"))]
    stores.append({"name": "vault", "type": "azure", "trust": "trusted",
                   **make_store_settings("azure")})
    (tmp_path / "inbox").mkdir()
    cfg = write_config(tmp_path, stores, {"mode": "erasure", "stores": ["aws", "gcp", "azr"], "k": 2},
                       {"min_trust": "trusted", "stores": ["vault"]}, inbox=str(tmp_path / "inbox"),
                       after="delete", stable_seconds=0.3,
                       schedule={"rescan": "1s", "retry_base": "0.3s", "retry_max": "2s"})
    originals = {p.name: p.read_bytes() for p in real_files()}
    originals["big-scan.raw"] = os.urandom(9 << 20)  # > one S3 part: a multipart upload
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    try:
        for name, data in originals.items():
            drop(tmp_path / "inbox", name, data)
        wait_until(lambda: status(cfg)["files"]["done"] == len(originals), 90, "all done", d)
        assert not any((tmp_path / "inbox").iterdir())  # after: delete
        assert not any((tmp_path / "state" / "claimed").iterdir())
    finally:
        code, _ = d.terminate()
    assert code == 0
    restore_and_compare(cfg, originals, tmp_path / "out")
    assert cli_json(cfg, "verify")["problems"] == []


def test_store_outage_mid_batch_then_everything_completes(tmp_path, make_store_settings,
                                                          spawn_server):
    """A dedicated S3 server dies mid-batch and comes back (empty: it keeps data in memory).
    Erasure 2-of-3 keeps files committing meanwhile; nothing is lost, all complete."""
    s3 = spawn_server("s3")
    aws = make_store_settings("s3", s3)
    stores = [{"name": "aws", "type": "s3", "trust": "untrusted", **aws},
              {"name": "gcp", "type": "gcs", "trust": "untrusted", **make_store_settings("gcs")},
              {"name": "disk", "type": "local", "trust": "untrusted",
               "path": str(tmp_path / "disk")},
              {"name": "vault", "type": "local", "trust": "trusted", "path": str(tmp_path / "vault")}]
    (tmp_path / "inbox").mkdir()
    cfg = write_config(tmp_path, stores, {"mode": "erasure", "stores": ["aws", "gcp", "disk"], "k": 2},
                       {"min_trust": "trusted", "stores": ["vault"]}, inbox=str(tmp_path / "inbox"),
                       after="delete", stable_seconds=0.2,
                       schedule={"rescan": "1s", "retry_base": "0.3s", "retry_max": "1.5s"})
    originals = {f"batch-{i:03d}.dat": os.urandom(20_000 + 997 * i) for i in range(60)}
    names = list(originals)
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    try:
        for name in names[:30]:
            drop(tmp_path / "inbox", name, originals[name])
        wait_until(lambda: status(cfg)["files"]["done"] >= 5, 30, "first files done", d,
                   every=0.02)
        s3.stop()  # mid-batch
        for name in names[30:]:
            drop(tmp_path / "inbox", name, originals[name])
        # Not stalled: every file becomes restorable from the other two clouds.
        wait_until(lambda: status(cfg)["files"]["committed"] + status(cfg)["files"]["done"]
                   == len(names), 60, "all committed during the outage", d)
        # the database records the error before the loop rewrites its status document
        st = wait_until(lambda: (s := status(cfg))["stores"]["aws"]["retry_at"] and s, 10,
                        "the status document names the next try", d)
        assert st["stores"]["aws"]["failing"] and st["stores"]["aws"]["pending_objects"] > 0
        assert st["stores"]["aws"]["last_error"]
        assert st["files"]["committed"] > 0  # kept until its last shard is up
        assert st["files"]["failed"] == 0
        assert len(list((tmp_path / "inbox").iterdir())) == 0
        time.sleep(2)
        s3.start()
        from buckets import create_bucket

        create_bucket(s3, aws["bucket"])
        wait_until(lambda: status(cfg)["files"]["done"] == len(names), 60, "all done after", d)
        st = status(cfg)
        assert not st["stores"]["aws"]["failing"] and st["stores"]["aws"]["pending_objects"] == 0
    finally:
        code, _ = d.terminate()
    assert code == 0
    restore_and_compare(cfg, originals, tmp_path / "out")
    # Shards uploaded before the crash died with the server: verify names them, repair heals.
    rep = cli_json(cfg, "verify", expect=None)
    assert rep["unrestorable"] == [] and {p["store"] for p in rep["problems"]} <= {"aws"}
    cli_json(cfg, "repair")
    assert cli_json(cfg, "verify")["problems"] == []


def test_one_local_store_down_does_not_stall_erasure(tmp_path):
    cfg = daemon_config(tmp_path, after="delete")
    dead = tmp_path / "cloud-c"
    dead.mkdir()
    shutil.rmtree(dead)
    dead.write_bytes(b"not a directory: every put fails")
    data = {f"r{i}.bin": os.urandom(40_000) for i in range(8)}
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    try:
        for name, blob in data.items():
            drop(tmp_path / "inbox", name, blob)
        wait_until(lambda: status(cfg)["files"]["committed"] == 8, 30, "committed with 2 of 3", d)
        st = status(cfg)
        assert st["files"]["done"] == 0 and st["stores"]["cloud-c"]["failing"]
        assert len(list((tmp_path / "state" / "claimed").iterdir())) == 8  # originals kept
        dead.unlink()
        wait_until(lambda: status(cfg)["files"]["done"] == 8, 30, "done once it is back", d)
        assert not any((tmp_path / "state" / "claimed").iterdir())
    finally:
        d.terminate()
    restore_and_compare(cfg, data, tmp_path / "out")


# ------------------------------------------------------------------ systemd

def test_notify_protocol_ready_status_watchdog_stopping(tmp_path):
    cfg = daemon_config(tmp_path)
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(10)
    d = DaemonProc(cfg, tmp_path / "daemon.log",
                   env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"}).start()
    got: list[tuple[float, str]] = []

    def recv() -> str:
        msg = sock.recv(4096).decode()
        got.append((time.monotonic(), msg))
        return msg

    try:
        first = recv()
        assert "READY=1" in first.split("\n") and f"MAINPID={d.proc.pid}" in first, first
        assert any(x.startswith("STATUS=") for x in first.split("\n"))
        t_ready = time.monotonic()
        drop(tmp_path / "inbox", "a.dat", b"x" * 1000)
        while time.monotonic() - t_ready < 2.0:
            recv()
        pings = [t for t, m in got if m == "WATCHDOG=1"]
        assert len(pings) >= 4, got  # every 0.2 s (half of WatchdogSec)
        assert max(b - a for a, b in itertools.pairwise(pings)) < 0.4
        wait_until(lambda: status(cfg)["files"]["done"] == 1, 20, "done", d)
        t_done = time.monotonic()  # STATUS= lines are throttled (MIN_INTERVAL): the next says so
        while not any("1 done" in m for _, m in got if m.startswith("STATUS=")) \
                and time.monotonic() - t_done < 10:
            recv()
        d.proc.send_signal(15)
        msgs = []
        while "STOPPING=1" not in msgs:
            msgs.append(recv())
        assert d.wait(10) == 0
    finally:
        d.kill()
        sock.close()
    statuses = [m for _, m in got if m.startswith("STATUS=")]
    assert any("1 done" in m for m in statuses), statuses


UNIT = ROOT / "deploy" / "dispersiond.service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's ini dialect: repeated keys accumulate; '#' and ';' start comments."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        assert section is not None and "=" in line, f"bad unit line: {raw!r}"
        key, value = line.split("=", 1)
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def test_unit_file_is_valid_and_hardened(tmp_path):
    unit = parse_unit(UNIT.read_text())
    svc = unit["Service"]
    one = {k: v[-1] for k, v in svc.items()}
    assert one["Type"] == "notify" and one["Restart"] == "on-failure"
    assert one["User"] == "dispersiond" and one["NoNewPrivileges"] == "yes"
    assert one["ProtectSystem"] == "strict" and one["ProtectHome"] == "yes"
    assert one["PrivateTmp"] == "yes" and one["CapabilityBoundingSet"] == ""
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert int(one["WatchdogSec"].rstrip("s")) >= 10
    assert "78" in one["RestartPreventExitStatus"].split()
    assert int(one["TimeoutStopSec"].rstrip("s")) > 10  # SIGTERM exits within ~10 s
    # A background job; the pipeline bench runs the daemon at the same niceness.
    from dispersiond.research.pipeline_bench import DAEMON_NICE

    assert int(one["Nice"]) == DAEMON_NICE > 0 and one["IOSchedulingClass"] == "best-effort"
    exec_start = one["ExecStart"].split()
    assert exec_start[-1] == "run" and "-c" in exec_start
    # The config the unit points at keeps inbox and state under one writable tree.
    dep = yaml.safe_load((ROOT / "deploy" / "dispersiond.yaml").read_text())
    rw = [p for entry in svc["ReadWritePaths"] for p in entry.split()]
    for path in (dep["state_dir"], dep["inbox"]):
        assert any(path == p or path.startswith(p.rstrip("/") + "/") for p in rw), path
    assert sum(dep["state_dir"].startswith(p) and dep["inbox"].startswith(p) for p in rw) == 1
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    analyze = shutil.which("systemd-analyze")
    if analyze:
        # verify insists that ExecStart's binary exists: point it at this checkout's.
        exe = shutil.which("dispersiond", path=str(Path(sys.executable).parent)) or sys.executable
        text = UNIT.read_text().replace(exec_start[0], exe)
        copy = tmp_path / "dispersiond.service"
        copy.write_text(text)
        res = subprocess.run([analyze, "verify", str(copy)], check=False, capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 0 and not res.stderr.strip() and not res.stdout.strip(), (
            res.stdout + res.stderr)


def test_install_script_stages_a_working_layout(tmp_path):
    root = tmp_path / "root"
    res = subprocess.run(["bash", str(ROOT / "deploy" / "install.sh")], check=False, capture_output=True,
                         text=True, env={**os.environ, "DESTDIR": str(root), "SKIP_VENV": "1"},
                         timeout=60)
    assert res.returncode == 0, res.stderr
    conf = root / "etc" / "dispersiond"
    assert (conf / "master.key").stat().st_size == 32
    assert oct((conf / "master.key").stat().st_mode & 0o777) == "0o400"
    assert (root / "etc/systemd/system/dispersiond.service").read_text() == UNIT.read_text()
    assert oct((root / "var/lib/dispersiond/inbox").stat().st_mode & 0o7777) == "0o2770"
    from dispersiond.config import load_config

    c = load_config(conf / "dispersiond.yaml")  # the shipped config is valid as it stands
    assert c.inbox and c.after in ("delete", "move", "keep")
    again = subprocess.run(["bash", str(ROOT / "deploy" / "install.sh")], check=False, capture_output=True,
                           text=True, env={**os.environ, "DESTDIR": str(root), "SKIP_VENV": "1"})
    assert again.returncode == 0 and "master key" not in again.stdout  # never overwritten


# ------------------------------------------------------------------ faults

@pytest.mark.parametrize("problem,expect", [
    ({"inbox": None}, "'inbox' is not set"),
    ({"key": {"file": "/nonexistent/master.key"}}, "master.key"),
    ({"schedule": {"rescan": "soon"}}, "schedule.rescan"),
    ({"stable_secs": 3}, "unknown setting"),
    ({"after": "move", "after_move_to": "INBOX"}, "after_move_to"),
])
def test_bad_config_refuses_to_start(tmp_path, problem, expect):
    cfg = daemon_config(tmp_path)
    if problem.get("after_move_to") == "INBOX":
        problem = {**problem, "after_move_to": str(tmp_path / "inbox")}
    raw = yaml.safe_load(cfg.read_text())
    for k, v in problem.items():
        if v is None:
            raw.pop(k, None)
        elif isinstance(v, dict) and isinstance(raw.get(k), dict):
            raw[k] = {**raw[k], **v}
        else:
            raw[k] = v
    cfg.write_text(yaml.safe_dump(raw))
    res = subprocess.run([sys.executable, "-m", "dispersiond", "-c", str(cfg), "run"],
                         check=False, capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 78, res.stderr
    assert "configuration error, not starting" in res.stderr and expect in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_second_daemon_on_the_same_state_is_refused(tmp_path):
    cfg = daemon_config(tmp_path)
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    try:
        wait_until(lambda: status(cfg)["running"], 20, "first daemon", d)
        res = subprocess.run([sys.executable, "-m", "dispersiond", "-c", str(cfg), "run"],
                             check=False, capture_output=True, text=True, timeout=30,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert res.returncode == 2 and "in use by dispersiond pid" in res.stderr
    finally:
        d.terminate()


def test_a_status_probe_does_not_stop_the_daemon_from_starting(tmp_path):
    """`status` takes a shared lock for an instant; a daemon starting just then waits
    it out instead of taking the prober for a running daemon."""
    import fcntl
    import threading

    from dispersiond.config import load_config
    from dispersiond.archive import Archive

    cfg = daemon_config(tmp_path)
    v = Archive(load_config(cfg))
    fd = os.open(v.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    threading.Timer(0.3, os.close, (fd,)).start()  # the probe lets go
    try:
        v.lock()
        assert (v.root / "lock").read_text() == str(os.getpid())
    finally:
        v.close()


def test_unreadable_and_vanished_files_go_to_quarantine(tmp_path):
    """Unreadable: mode 000 under a daemon without capabilities (the unit's empty bounding
    set). Vanished: a claimed original removed behind the daemon's back."""
    cfg = daemon_config(tmp_path, after="delete")
    inbox = tmp_path / "inbox"
    d = DaemonProc(cfg, tmp_path / "daemon.log", unprivileged=True).start()
    try:
        drop(inbox, "locked.dcm", b"secret" * 100)
        os.chmod(inbox / "locked.dcm", 0)
        drop(inbox, "fine.dcm", b"ok" * 100)
        wait_until(lambda: status(cfg)["files"]["failed"] == 1 and
                   status(cfg)["files"]["done"] == 1, 30, "one quarantined, one done", d)
        time.sleep(1.5)
        assert d.alive and status(cfg)["files"]["failed"] == 1  # no retry loop
    finally:
        d.terminate()
    # Vanished: a claimed row whose original is gone (seeded while the daemon is down).
    from dispersiond.config import load_config
    from dispersiond.state import StateDB

    state = load_config(cfg).state_path
    db = StateDB(state / "state.db")
    db.add_file(file_id="ab" * 16, name="gone.dcm", size=10, mtime=0.0, scheme="se2",
                state="claimed", source=str(state / "claimed" / ("ab" * 16)))
    db.close()
    d = DaemonProc(cfg, tmp_path / "daemon2.log").start()
    try:
        wait_until(lambda: status(cfg)["files"]["failed"] == 2, 30, "vanished quarantined", d)
    finally:
        d.terminate()
    q = state / "quarantine"
    folders = {p.name: p for p in q.iterdir()}
    assert len(folders) == 2
    reasons = {fid: (p / "REASON").read_text() for fid, p in folders.items()}
    assert "Permission denied" in "".join(reasons.values())
    assert "vanished or cannot be read" in reasons["ab" * 16]
    locked = next(p for p in folders.values() if (p / "locked.dcm").exists())
    os.chmod(locked / "locked.dcm", 0o600)
    assert (locked / "locked.dcm").read_bytes() == b"secret" * 100  # set aside, never lost
    st = cli_json(cfg, "status")
    assert st["files"]["failed"] == 2 and st["files"]["done"] == 1


def test_full_disk_pauses_intake_and_resumes(tmp_path):
    """min_free_space is set 1 GiB below what is free now; a 2 GiB ballast file then makes
    the disk 'full', removing it gives the space back."""
    free = shutil.disk_usage(tmp_path).free
    assert free > (3 << 30), "this test needs 3 GiB free in the temp folder"
    cfg = daemon_config(tmp_path, min_free_space=free - (1 << 30))
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    ballast = tmp_path / "ballast"
    try:
        drop(tmp_path / "inbox", "before.dat", os.urandom(1000))
        wait_until(lambda: status(cfg)["files"]["done"] == 1, 30, "first file", d)
        with open(ballast, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, 2 << 30)
        drop(tmp_path / "inbox", "during.dat", os.urandom(1000))
        st = wait_until(lambda: (s := status(cfg))["daemon"]["intake"] == "paused" and s, 20,
                        "intake paused", d)
        assert "disk full" in st["daemon"]["paused_reason"]
        assert "min_free_space" in st["daemon"]["paused_reason"]
        time.sleep(1.0)
        assert (tmp_path / "inbox" / "during.dat").exists()  # not taken while paused
        assert "intake PAUSED" in cli(cfg, "status")[1]
        ballast.unlink()
        wait_until(lambda: status(cfg)["files"]["done"] == 2, 30, "resumed", d)
    finally:
        ballast.unlink(missing_ok=True)
        d.terminate()
    msgs = [x["msg"] for x in d.lines()]
    assert "intake resumed" in msgs and any("intake paused" in m for m in msgs)


def test_a_large_file_sent_directly_needs_room_only_for_its_private_container(tmp_path):
    """With 60 MiB to spare above min_free_space, a 100 MiB file could not be staged
    (~170 MiB with 2-of-3 erasure: intake would pause before encoding it); sent directly
    to healthy stores, only its private container (~13 MiB) is written locally."""
    data = os.urandom(100 << 20)
    staged = tmp_path / "ct-series.dcm"
    staged.write_bytes(data)  # on this filesystem already: moving it in takes no space
    free = shutil.disk_usage(tmp_path).free
    assert free > (1 << 30), "this test needs 1 GiB free in the temp folder"
    cfg = daemon_config(tmp_path, after="delete", min_free_space=free - (60 << 20))
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    try:
        wait_until(lambda: status(cfg)["running"], 30, "start-up", d)
        os.rename(staged, tmp_path / "inbox" / staged.name)
        # The local "cloud" stores fill this disk as the file lands there, which pauses
        # intake for later files; this one was encoded, and finishes.
        wait_until(lambda: status(cfg)["files"].get("done") == 1, 60, "done", d)
    finally:
        d.terminate()
    restore_and_compare(cfg, {"ct-series.dcm": data}, tmp_path / "out")


# ------------------------------------------------------------------ schedules

def test_upload_window_arithmetic():
    night = (dt.time(1), dt.time(5))
    late = (dt.time(22), dt.time(2))  # crosses midnight
    at = lambda h, m=0: dt.datetime(2025, 3, 1, h, m)
    assert in_window(night, at(1)) and in_window(night, at(4, 59)) and not in_window(night, at(5))
    assert in_window(late, at(23)) and in_window(late, at(1)) and not in_window(late, at(12))
    assert in_window(None, at(12))
    assert window_opens(night, at(12)) == dt.datetime(2025, 3, 2, 1, 0)
    assert window_opens(night, at(0, 30)) == dt.datetime(2025, 3, 1, 1, 0)
    assert window_opens(night, at(2)) is None


def test_upload_window_holds_uploads_but_encodes_at_once(tmp_path):
    now = dt.datetime.now()
    closed = f"{(now + dt.timedelta(hours=2)):%H:%M}-{(now + dt.timedelta(hours=3)):%H:%M}"
    cfg = daemon_config(tmp_path, schedule={"upload_window": closed})
    data = {f"n{i}.dat": os.urandom(30_000) for i in range(3)}
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    try:
        for name, blob in data.items():
            drop(tmp_path / "inbox", name, blob)
        wait_until(lambda: status(cfg)["files"]["encoded"] == 3, 20, "encoded", d)
        time.sleep(1.0)
        st = cli_json(cfg, "status")
        assert st["files"]["encoded"] == 3 and st["daemon"]["uploads"] == "held"
        assert st["next_runs"]["upload_window_opens"] > time.time() + 3600
        assert all(not (tmp_path / f"cloud-{c}").exists() or not any(
            (tmp_path / f"cloud-{c}").iterdir()) for c in "abc")
        assert "uploads held" in cli(cfg, "status")[1]
        # small records: their public fragments wait in memory, nothing is staged ...
        assert not list((tmp_path / "state" / "work").glob("*/shard-*"))
    finally:
        assert d.terminate()[0] == 0
    # ... until the stop writes them out as staged copies: the next start resumes them
    assert len(list((tmp_path / "state" / "work").glob("*/shard-*"))) == 3 * 3
    edit_config(cfg, schedule={"upload_window": f"{now:%H:%M}-{(now + dt.timedelta(hours=1)):%H:%M}"})
    d = DaemonProc(cfg, tmp_path / "daemon2.log").start()
    try:
        wait_until(lambda: status(cfg)["files"]["done"] == 3, 30, "uploaded in the window", d)
    finally:
        d.terminate()
    assert not [x for x in d.lines() if x.get("encoded_again")]  # none encoded again
    restore_and_compare(cfg, data, tmp_path / "out")


def test_bandwidth_limit_is_respected(tmp_path):
    rate = 1_000_000
    cfg = daemon_config(tmp_path, "replicate", schedule={"bandwidth_limit": rate})
    edit_config(cfg, public={"mode": "replicate", "stores": ["cloud-a"]})
    blob = os.urandom(3_000_000)
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    try:
        drop(tmp_path / "inbox", "scan.raw", blob)
        wait_until(lambda: status(cfg)["files"]["done"] == 1, 30, "done", d)
    finally:
        d.terminate()
    lines = d.lines()
    ts = {x["msg"]: dt.datetime.fromisoformat(x["ts"].rstrip("Z")) for x in lines
          if x["msg"] in ("file encoded", "file committed")}
    took = (ts["file committed"] - ts["file encoded"]).total_seconds()
    # ~3.4 MB go up (public + private); the bucket starts with one second's worth.
    assert took >= 3_000_000 / rate - 1.0 - 0.2, took
    assert took < 8, took


def test_sigterm_mid_upload_exits_0_quickly_and_resumes(tmp_path):
    cfg = daemon_config(tmp_path, schedule={"bandwidth_limit": 400_000})
    blob = os.urandom(6_000_000)
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    try:
        drop(tmp_path / "inbox", "slow.raw", blob)
        wait_until(lambda: status(cfg)["files"]["encoded"] == 1, 20, "uploading", d)
        time.sleep(1.0)
        code, took = d.terminate()
    finally:
        d.kill()
    assert code == 0 and took < 10, (code, took, d.tail())
    assert status(cfg)["files"]["encoded"] == 1
    edit_config(cfg, schedule={"bandwidth_limit": None})
    d = DaemonProc(cfg, tmp_path / "daemon2.log").start()
    try:
        wait_until(lambda: status(cfg)["files"]["done"] == 1, 30, "done after restart", d)
    finally:
        d.terminate()
    restore_and_compare(cfg, {"slow.raw": blob}, tmp_path / "out")


def test_pipeline_bench_runs_and_counts_requests(tmp_path):
    """`dispersiond bench pipeline` end to end on a tiny shape (the numbers are for a
    real run; here only their shape and sanity)."""
    res = subprocess.run([sys.executable, "-m", "dispersiond", "bench", "pipeline", "--files",
                          "20", "--size", "4KiB", "--runs", "1", "--digest", "sha256", "--json"],
                         check=False, capture_output=True,
                         text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    out = __import__("json").loads(res.stdout)
    (shape,) = out["shapes"]
    assert shape["files"] == 20 and shape["size"] == 4096 and shape["digest"] == "sha256"
    assert shape["raw"]["requests_per_file"] == 1.0
    # small files share packs: one public and one private pack, plus the manifest backup
    # (a burst that straddles a flush adds two packs and a backup)
    assert 3 / 20 <= shape["pipeline"]["requests_per_file"] <= 6 / 20
    assert shape["pipeline"]["files_per_s"] > 0 and shape["raw"]["mb_per_s"] > 0
    assert 20 < shape["daemon_peak_rss_mib"] < 1024  # the daemon's VmHWM: an interpreter, not 0
    assert shape["cpu_seconds"]["raw"] > 0 and shape["cpu_seconds"]["pipeline"] > 0


def test_pipeline_bench_trickle_reports_latency_requests_and_rss(tmp_path):
    """`bench pipeline --trickle`: one record every 200 ms for 2 s (the figures are for the
    one-minute run; here their shape and sanity): every record is timed on both sides,
    the baseline makes one request per record, the daemon at most a public and a private
    pack and a manifest backup per record (fewer once records share a flush)."""
    res = subprocess.run([sys.executable, "-m", "dispersiond", "bench", "pipeline", "--trickle",
                          "200ms", "--duration", "2s", "--size", "2KiB", "--runs", "1",
                          "--json"], check=False, capture_output=True, text=True, timeout=180,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    (shape,) = __import__("json").loads(res.stdout)["shapes"]
    assert shape["files"] == 10 and shape["size"] == 2048
    assert shape["trickle"]["interval_s"] == 0.2 and shape["trickle"]["duration_s"] == 2
    assert shape["raw"]["requests_per_file"] == 1.0
    assert 0 < shape["pipeline"]["requests_per_file"] <= 3
    for side in ("raw", "pipeline"):
        lat = shape[side]["latency"]
        assert 0 < lat["median_ms"] <= lat["max_ms"] < 60_000, (side, lat)
    assert 20 < shape["daemon_peak_rss_mib"] < 1024
    assert shape["cpu_seconds"]["pipeline"] > 0


@pytest.mark.parametrize("args, message", [
    (["--duration", "5s"], "--duration goes with --trickle"),
    (["--trickle", "200ms", "--files", "3"], "not --files"),
    (["--trickle", "soon"], "--trickle: not a duration"),
    (["--trickle", "2s", "--duration", "1s"], "at least one --trickle interval"),
])
def test_pipeline_bench_trickle_arguments(args, message):
    code, _, err = cli(None, "bench", "pipeline", *args, expect=None)
    assert code != 0 and message in err, err


def test_pipeline_bench_on_local_folders_needs_no_server(tmp_path):
    """`bench pipeline --stores local`: the same run with local-folder stores (no
    network); every file's public object and private container land in the folders."""
    res = subprocess.run([sys.executable, "-m", "dispersiond", "bench", "pipeline", "--stores",
                          "local", "--files", "12", "--size", "3KiB", "--runs", "1", "--json"],
                         check=False, capture_output=True, text=True, timeout=180,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    (shape,) = __import__("json").loads(res.stdout)["shapes"]
    assert shape["stores"] == "local" and shape["files"] == 12 and shape["bytes"] == 12 * 3072
    assert shape["stored_vs_raw"] > 1.0  # both objects of every file, and the manifest
    assert shape["pipeline"]["ms_per_file"] > 0 and shape["raw"]["seconds"] > 0
    assert 0 < shape["pipeline"]["cpu_ms_per_file"] < 10 * shape["pipeline"]["ms_per_file"]
    bad = subprocess.run([sys.executable, "-m", "dispersiond", "bench", "pipeline", "--stores",
                          "local", "--link", "8MiB"], check=False, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert bad.returncode != 0 and "--link caps an uplink" in bad.stderr


def test_pipeline_bench_link_cap_applies_to_both_sides(tmp_path):
    """--link caps the baseline and the daemon alike (a 1-second burst, then the rate);
    the 24 MiB file also goes through the daemon's early uploads."""
    res = subprocess.run([sys.executable, "-m", "dispersiond", "bench", "pipeline", "--files",
                          "1", "--size", "24MiB", "--runs", "1", "--link", "8MiB", "--json"],
                         check=False, capture_output=True, text=True, timeout=180,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr
    (shape,) = __import__("json").loads(res.stdout)["shapes"]
    assert shape["link"] == 8 << 20
    assert shape["raw"]["seconds"] >= 1.9  # (24 MiB - 8 MiB burst) / 8 MiB/s
    assert shape["pipeline"]["seconds"] >= 1.9
    assert shape["pipeline_vs_raw"] < 3


def test_standing_grant_gives_the_doctor_a_bundle_for_each_new_file(tmp_path):
    from dispersiond.identity import load_identity
    from dispersiond.share import open_bundle

    key = tmp_path / "doctor" / "dr-lee.key"
    pub = cli(None, "keygen", "--out", str(key))[1].strip()
    cfg = daemon_config(tmp_path, after="delete",
                        recipients=[{"name": "dr-lee", "role": "doctor", "public_key": pub}],
                        grants=[{"recipient": "dr-lee", "outbox": str(tmp_path / "outbox"),
                                 "expires": "1h"}])
    # the doctor pins the patient's device once (bundles are signed by it)
    cli(None, "trust", "patient", cli_json(cfg, "identity")["sender_key"], "-i", str(key))
    originals = {p.name: p.read_bytes() for p in real_files()[3:6]}
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    try:
        for name, data in originals.items():
            drop(tmp_path / "inbox", name, data)
        wait_until(lambda: status(cfg)["files"]["done"] == len(originals), 60, "all done", d)
        assert d.terminate()[0] == 0
    finally:
        d.kill()
    bundles = sorted((tmp_path / "outbox").iterdir())
    assert len(bundles) == len(originals)  # one per new file, nothing else shared
    got = set()
    for i, b in enumerate(bundles):
        opened = open_bundle(b, load_identity(key), tmp_path / f"opened-{i}")
        got.add(opened.path.read_bytes())
    assert got == set(originals.values())
    events = cli_json(cfg, "audit", "ls")
    assert [e["event"] for e in events].count("share") == len(originals)


def test_an_idle_daemon_leaves_its_status_alone_and_a_clean_stop_logs_no_error(tmp_path):
    """The status document lives in a synchronous database on flash: while nothing
    changes it is not rewritten (only a heartbeat a minute). Stopping while the inbox is
    busy must not log watchdog's stop race as an ERROR."""
    import threading

    cfg = daemon_config(tmp_path, schedule={"rescan": "1h", "manifest_backup": "1h"})
    inbox = tmp_path / "inbox"
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    try:
        for i in range(3):
            drop(inbox, f"rec-{i}.csv", os.urandom(4000 + i))
        wait_until(lambda: done_count(cfg) == 3, 30, "all done", d)
        time.sleep(3)  # the last changes (in flight: 0, backup time) are written by now
        first = status(cfg)["daemon"]
        time.sleep(6)
        st = status(cfg)
        assert st["running"] and st["daemon"] == first  # not one write in 6 idle seconds
        stop = threading.Event()

        def churn() -> None:  # partial names: events, but nothing to take
            i = 0
            while not stop.is_set():
                (inbox / f".w{i % 7}.part").write_bytes(b"x")
                i += 1

        t = threading.Thread(target=churn)
        t.start()
        try:
            time.sleep(0.5)
            code, took = d.terminate()
        finally:
            stop.set()
            t.join()
    finally:
        d.kill()
    assert code == 0, d.tail()
    lines = d.lines()
    assert [x for x in lines if x["level"] in ("error", "critical", "raw")] == []
    assert lines[-1]["msg"] == "daemon stopped"
    doc = status(cfg)["daemon"]
    assert doc["state"] == "stopped" and doc["heartbeat"] >= first["heartbeat"]
