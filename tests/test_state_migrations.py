"""State databases written by earlier builds are migrated in place on open and keep
restoring: schema 1 (every digest SHA-256, columns named for it) to the current schema."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from dispersiond.config import load_config
from dsp import cli_json, local_config, put, real_files, restores


def _to_schema_1(db_path: Path) -> None:
    """Turn a fresh database into what schema 1 was: digests named sha256, no algorithm,
    the container's columns named prf_*."""
    db = sqlite3.connect(db_path)
    with db:
        db.execute("ALTER TABLE files RENAME COLUMN digest TO sha256")
        db.execute("ALTER TABLE files RENAME COLUMN container_digest TO prf_sha256")
        db.execute("ALTER TABLE files RENAME COLUMN container_len TO prf_len")
        db.execute("ALTER TABLE files DROP COLUMN digest_alg")
        db.execute("ALTER TABLE objects RENAME COLUMN digest TO sha256")
        db.execute("UPDATE meta SET value='1' WHERE key='schema'")
    db.close()


def test_a_schema_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    cfg = local_config(tmp_path, "erasure", digest="sha256")
    old, new = real_files()[:2]
    (old_id,) = put(cfg, old)
    db_path = load_config(cfg).state_path / "state.db"
    _to_schema_1(db_path)
    cfg.write_text(cfg.read_text().replace("digest: sha256", "digest: blake3"))
    (new_id,) = put(cfg, new)  # opening it migrates; new files take the configured hash
    db = sqlite3.connect(db_path)
    assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == ("4",)
    algs = dict(db.execute("SELECT file_id, digest_alg FROM files"))
    db.close()
    assert algs == {old_id: "sha256", new_id: "blake3"}
    assert cli_json(cfg, "verify", "--deep")["problems"] == []
    restores(cfg, old_id, old, tmp_path / "old")
    restores(cfg, new_id, new, tmp_path / "new")
