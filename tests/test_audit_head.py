"""The audit log's tail cannot be cut: the recorded head is authenticated, a head lower
than a backed-up one is refused, a shortened log is never re-anchored, and a share is
anchored on the trusted store at once."""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import yaml

from dispersiond import manifest
from dispersiond.config import load_config
from dispersiond.archive import open_archive
from dsp import cli, cli_json, local_config, put


def setup(tmp: Path) -> tuple[Path, str]:
    """A device with one record, a doctor to share it with, and four audit entries."""
    cfg = local_config(tmp, "replicate")
    pub = cli(None, "keygen", "--out", str(tmp / "dr-lee.key"))[1].strip()
    doc = yaml.safe_load(cfg.read_text())
    doc["recipients"] = [{"name": "dr-lee", "role": "doctor", "public_key": pub}]
    cfg.write_text(yaml.safe_dump(doc))
    rec = tmp / "ecg.txt"
    rec.write_bytes(b"ecg " + os.urandom(3000))
    (fid,) = put(cfg, rec)
    for i in range(3):
        cli(cfg, "restore", fid, "--to", str(tmp / f"r{i}"))
    cli(cfg, "share", fid, "--to", "dr-lee", "--out", str(tmp / "a.dspshare"))
    return cfg, fid


def newest_backup(cfg: Path) -> dict:
    with open_archive(load_config(cfg)) as v:
        s = v.store("vault")
        return max((d for d in (manifest.read(v.key, s.get_bytes(n), n)
                                for n in s.list(manifest.PREFIX)) if d["kind"] != "segment"),
                   key=lambda d: d["seq"])


def cut_tail(tmp: Path) -> int:
    """The finding: delete the last row and point the head at the entry before it."""
    db = sqlite3.connect(tmp / "state" / "state.db")
    with db:
        rows = db.execute("SELECT seq, hash FROM audit ORDER BY seq").fetchall()
        db.execute("DELETE FROM audit WHERE seq=?", (rows[-1][0],))
        db.execute("UPDATE meta SET value=? WHERE key='audit_head'",
                   (f"{rows[-2][0]}:{rows[-2][1]}",))
    db.close()
    return rows[-1][0]


def test_a_share_is_anchored_on_the_trusted_store_at_once(tmp_path: Path) -> None:
    cfg, _ = setup(tmp_path)
    events = cli_json(cfg, "audit", "ls")
    assert events[-1]["event"] == "share"
    doc = newest_backup(cfg)  # made by the share itself: no put or daemon came after it
    assert doc["audit_head"].split(":") == [str(events[-1]["seq"]), events[-1]["hash"]]


def test_cutting_the_tail_and_moving_the_head_back_is_caught(tmp_path: Path) -> None:
    cfg, _ = setup(tmp_path)
    assert cli_json(cfg, "audit", "verify")["ok"]
    cut = cut_tail(tmp_path)
    for extra in ((), ("--offline",)):
        code, out, _ = cli(cfg, "audit", "verify", *extra, expect=1)
        assert "FAILED" in out and "not authenticated" in out, out
    out = cli(cfg, "audit", "verify", expect=1)[1]
    assert f"a manifest backup holds entries up to {cut}" in out


def test_a_shortened_log_is_not_re_anchored_by_the_next_backup(tmp_path: Path) -> None:
    cfg, _ = setup(tmp_path)
    before = newest_backup(cfg)["seq"]
    cut_tail(tmp_path)
    rec = tmp_path / "more.txt"
    rec.write_bytes(os.urandom(500))
    res = cli_json(cfg, "put", str(rec))
    assert res["files"][0]["state"] == "committed"  # no backup holds it: not done
    assert newest_backup(cfg)["seq"] == before
    assert not cli_json(cfg, "audit", "verify", expect=1)["ok"]


def test_an_old_authenticated_head_replayed_is_caught_against_the_backups(
        tmp_path: Path) -> None:
    cfg, fid = setup(tmp_path)
    db = sqlite3.connect(tmp_path / "state" / "state.db")
    old_head = db.execute("SELECT value FROM meta WHERE key='audit_head'").fetchone()[0]
    db.close()
    cli(cfg, "share", fid, "--to", "dr-lee", "--out", str(tmp_path / "b.dspshare"))
    db = sqlite3.connect(tmp_path / "state" / "state.db")
    with db:  # cut the new share and put back the head (and its MAC) from before it
        seq = int(old_head.split(":")[0])
        db.execute("DELETE FROM audit WHERE seq>?", (seq,))
        db.execute("UPDATE meta SET value=? WHERE key='audit_head'", (old_head,))
    db.close()
    res = cli_json(cfg, "audit", "verify", expect=1)
    assert any(f"ends at entry {seq}" in p and "cut off the end" in p for p in res["problems"])
    res = cli_json(cfg, "audit", "verify", "--offline", expect=1)  # the chain tip knows too
    assert any("cut off the end" in p for p in res["problems"])
