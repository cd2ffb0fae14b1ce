"""File names that are not valid UTF-8 or carry terminal control codes: taken, stored,
backed up, listed and restored under their exact bytes, shown escaped, never stopping
intake or the daemon."""
from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from daemonctl import DaemonProc, daemon_config, status, wait_until
from dsp import ROOT, cli, cli_json, local_config

from dispersiond.config import load_config
from dispersiond.display import shown

BAD = b"bad\xff.txt"  # not valid UTF-8
ESC = "\x1b[2J.txt"  # clears the screen when printed raw
NEWLINE = "line\nbreak.txt"


def run(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI as its own process with bytes output: what a terminal would receive."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8:strict",
           "LC_ALL": "C.UTF-8"}
    return subprocess.run([sys.executable, "-m", "dispersiond", "-c", str(cfg), *args],
                          capture_output=True, env=env, timeout=300)


def write_bytes_name(folder: Path, name: bytes, data: bytes) -> Path:
    path = os.path.join(os.fsencode(folder), name)
    with open(path, "wb") as f:
        f.write(data)
    return Path(os.fsdecode(path))


def test_shown_escapes_control_characters_and_undecodable_bytes():
    assert shown(os.fsdecode(BAD)) == "bad\\xff.txt"
    assert shown(ESC) == "\\x1b[2J.txt"
    assert shown(NEWLINE) == "line\\nbreak.txt"
    assert shown("a\\b") == "a\\\\b"  # never mistaken for an escape
    assert shown("evil\u202etxt.exe") == "evil\\u202etxt.exe"  # bidi override
    assert shown("Müller résumé.pdf") == "Müller résumé.pdf"
    assert shown(b"x\x07y") == "x\\x07y"


def test_daemon_protects_a_good_file_next_to_a_non_utf8_name_and_keeps_running(tmp_path):
    """`printf x > $'inbox/bad\\xff.txt'` next to a good file stopped intake for good."""
    cfg = daemon_config(tmp_path, after="keep")
    inbox = tmp_path / "inbox"
    write_bytes_name(inbox, BAD, b"x")
    (inbox / "good.txt").write_bytes(b"good record")
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    try:
        wait_until(lambda: status(cfg)["files"].get("done", 0) == 2, 60, "both done", d)
        assert d.alive
    finally:
        code, _ = d.terminate()
    assert code == 0, d.tail()
    kept = os.fsencode(tmp_path / "state" / "kept")
    assert sorted(os.listdir(kept)) == sorted([BAD, b"good.txt"])
    assert open(os.path.join(kept, BAD), "rb").read() == b"x"
    assert os.listdir(os.fsencode(inbox)) == []
    log = (tmp_path / "daemon.log").read_bytes()
    assert b"bad" not in log and b"Traceback" not in log
    # The daemon starts again on the same state (no crash loop) and ls shows it escaped.
    d = DaemonProc(cfg, tmp_path / "daemon2.log").start()
    try:
        wait_until(lambda: status(cfg).get("running"), 30, "running again", d)
        out = run(cfg, "ls")
        assert out.returncode == 0, out.stderr
        assert b"bad\\xff.txt" in out.stdout and BAD not in out.stdout
    finally:
        d.terminate()
    # restore NAME (as argv bytes) gives back the same bytes name in the --to folder.
    dest = tmp_path / "out"
    dest.mkdir()
    res = subprocess.run([sys.executable, "-m", "dispersiond", "-c", str(cfg), "restore",
                          os.fsdecode(BAD), "--to", str(dest)], capture_output=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "LC_ALL": "C.UTF-8",
                              "PYTHONIOENCODING": "utf-8:strict"}, timeout=300)
    assert res.returncode == 0, res.stderr
    assert os.listdir(os.fsencode(dest)) == [BAD]
    assert open(os.path.join(os.fsencode(dest), BAD), "rb").read() == b"x"
    assert b"bad\\xff.txt" in res.stdout and BAD not in res.stdout


def test_a_quarantined_non_utf8_name_keeps_its_bytes_and_a_readable_reason(tmp_path):
    from dispersiond import inbox as ib
    from dispersiond.archive import open_archive

    cfg = load_config(daemon_config(tmp_path))
    src = write_bytes_name(tmp_path / "inbox", BAD, b"unlucky")
    with open_archive(cfg) as v:
        (fid, _), = ib.claim(v, [(src, src.stat())])[0]
        q = tmp_path / "quarantine"
        ib.quarantine_file(v, fid, "a test reason", q)
        f = v.db.file(fid)
    assert os.fsencode(f.name) == BAD and Path(f.source).read_bytes() == b"unlucky"
    assert sorted(os.listdir(os.fsencode(q / fid))) == sorted([b"REASON", BAD])
    reason = (q / fid / "REASON").read_text(encoding="utf-8")
    assert "a test reason" in reason and "original name: bad\\xff.txt" in reason


def test_put_ls_restore_of_a_non_utf8_name(tmp_path):
    cfg = local_config(tmp_path)
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    src = write_bytes_name(src_dir, BAD, b"payload " * 100)
    res = run(cfg, "put", str(src))
    assert res.returncode == 0, res.stderr
    assert b"bad\\xff.txt" in res.stdout and BAD not in res.stdout and not res.stderr
    js = cli_json(cfg, "ls")
    assert js[0]["name"] == "bad\\xff.txt" and base64.b64decode(js[0]["name_b64"]) == BAD
    out = run(cfg, "ls")
    assert b"bad\\xff.txt" in out.stdout and BAD not in out.stdout
    # By the escaped name `ls` shows, and by id: the original bytes come back.
    dest = tmp_path / "out"
    dest.mkdir()
    cli(cfg, "restore", "bad\\xff.txt", "--to", str(dest))
    assert os.listdir(os.fsencode(dest)) == [BAD]
    assert open(os.path.join(os.fsencode(dest), BAD), "rb").read() == b"payload " * 100
    # The state database holds valid text and the exact bytes beside it.
    db = sqlite3.connect(load_config(cfg).state_path / "state.db")
    assert db.execute("SELECT name, name_raw FROM files").fetchall() == [("bad\\xff.txt", BAD)]
    db.close()


def test_put_of_one_unreadable_file_does_not_stop_the_others(tmp_path):
    cfg = local_config(tmp_path)
    good = tmp_path / "good.txt"
    good.write_bytes(b"fine")
    bad = write_bytes_name(tmp_path, BAD, b"also fine")
    res = run(cfg, "put", str(bad), str(good))
    assert res.returncode == 0, res.stderr
    assert cli_json(cfg, "status")["files"]["done"] == 2


def test_control_characters_in_names_are_escaped_everywhere_shown(tmp_path):
    cfg = local_config(tmp_path)
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    for name in (ESC, NEWLINE):
        (src_dir / name).write_bytes(name.encode() * 10)
    res = run(cfg, "put", str(src_dir / ESC), str(src_dir / NEWLINE))
    assert res.returncode == 0, res.stderr
    for out in (res.stdout, run(cfg, "ls").stdout):
        assert b"\x1b" not in out
        assert b"\\x1b[2J.txt" in out and b"line\\nbreak.txt" in out
        assert b"line\nbreak" not in out
    dest = tmp_path / "out"
    dest.mkdir()
    for name in (ESC, NEWLINE):
        res = run(cfg, "restore", shown(name), "--to", str(dest))
        assert res.returncode == 0, res.stderr
        assert b"\x1b" not in res.stdout and b"line\nbreak" not in res.stdout
        assert (dest / name).read_bytes() == name.encode() * 10
    # An unknown name in an error message is escaped too.
    res = run(cfg, "restore", "nope\x1b[2J")
    assert res.returncode != 0 and b"\x1b" not in res.stderr and b"Traceback" not in res.stderr
    fid = cli_json(cfg, "ls")[0]["file_id"]
    res = run(cfg, "forget", fid)
    assert res.returncode == 0 and b"\x1b" not in res.stdout


def test_backup_keeps_a_non_utf8_name_and_format_3_backups_still_load(tmp_path):
    """The sealed entry carries the exact bytes (name_b64); what today's backups hold
    (format 3, no name_b64) loads as before."""
    from dispersiond import manifest
    from dispersiond.state import StateDB

    cfg = local_config(tmp_path)
    src = write_bytes_name(tmp_path, BAD, b"in the backup")
    assert run(cfg, "put", str(src)).returncode == 0
    db = StateDB(load_config(cfg).state_path / "state.db")
    key = os.urandom(32)
    doc = manifest.open_sealed(key, manifest.seal(key, manifest.snapshot(db, 7)))
    db.close()
    assert doc["format"] == 6
    (e,) = doc["files"]
    assert e["name"] == "bad\\xff.txt" and base64.b64decode(e["name_b64"]) == BAD
    fresh = StateDB(tmp_path / "fresh.db")
    manifest.load_into(fresh, doc)
    (f,) = fresh.files()
    assert os.fsencode(f.name) == BAD
    old = dict(doc, format=3, files=[{k: v for k, v in e.items() if k != "name_b64"}
                                     | {"name": "plain.txt"}])
    older = StateDB(tmp_path / "older.db")
    manifest.load_into(older, old)
    (g,) = older.files()
    assert g.name == "plain.txt" and g.file_id == f.file_id
    fresh.close()
    older.close()


def test_a_schema_3_database_is_migrated_and_keeps_its_names(tmp_path):
    from dispersiond.state import SCHEMA_VERSION, StateDB

    path = tmp_path / "state.db"
    db = StateDB(path)
    db.add_file(file_id="ab" * 16, name="kept name.txt", size=1, mtime=0.0, scheme="se2",
                state="claimed", source="/somewhere/kept name.txt")
    db.close()
    raw = sqlite3.connect(path)
    with raw:  # what schema 3 was: no *_raw columns
        raw.execute("ALTER TABLE files DROP COLUMN name_raw")
        raw.execute("ALTER TABLE files DROP COLUMN source_raw")
        raw.execute("UPDATE meta SET value='3' WHERE key='schema'")
    raw.close()
    db = StateDB(path)
    assert db.get_meta("schema") == str(SCHEMA_VERSION) == "7"
    (f,) = db.files()
    assert (f.name, f.source) == ("kept name.txt", "/somewhere/kept name.txt")
    db.add_file(file_id="cd" * 16, name=os.fsdecode(BAD), size=1, mtime=0.0, scheme="se2",
                state="claimed", source=os.fsdecode(b"/in/" + BAD))
    g = db.file("cd" * 16)
    assert os.fsencode(g.name) == BAD and os.fsencode(g.source) == b"/in/" + BAD
    assert [r.file_id for r in db.find(os.fsdecode(BAD))] == ["cd" * 16]
    db.close()


def test_a_non_utf8_name_is_never_put_in_a_share_bundle():
    from dispersiond.share.issue import _sendable_name

    assert _sendable_name("scan.dcm") and _sendable_name("Müller.pdf")
    assert not _sendable_name(os.fsdecode(BAD)) and not _sendable_name(ESC)
