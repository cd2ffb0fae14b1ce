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
    assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == ("7",)
    algs = dict(db.execute("SELECT file_id, digest_alg FROM files"))
    db.close()
    assert algs == {old_id: "sha256", new_id: "blake3"}
    assert cli_json(cfg, "verify", "--deep")["problems"] == []
    restores(cfg, old_id, old, tmp_path / "old")
    restores(cfg, new_id, new, tmp_path / "new")


def _to_schema_4(db_path: Path) -> None:
    """Turn a fresh database into what schema 4 was: one object per row, unique by
    (store, name), no pack columns or table."""
    db = sqlite3.connect(db_path)
    with db:
        db.execute("DROP INDEX IF EXISTS objects_standalone")
        db.execute("DROP INDEX IF EXISTS objects_pack")
        db.execute("ALTER TABLE objects RENAME TO objects_new")
        db.execute("""CREATE TABLE objects (
            id INTEGER PRIMARY KEY,
            file_id TEXT NOT NULL REFERENCES files(file_id) ON DELETE CASCADE,
            role TEXT NOT NULL, shard INTEGER, store TEXT NOT NULL, name TEXT NOT NULL,
            offset INTEGER NOT NULL DEFAULT 0, length INTEGER NOT NULL,
            object_size INTEGER NOT NULL, digest TEXT NOT NULL, state TEXT NOT NULL,
            checked REAL, UNIQUE (store, name))""")
        db.execute("INSERT INTO objects SELECT id, file_id, role, shard, store, name, offset, "
                   "length, object_size, digest, state, checked FROM objects_new")
        db.execute("DROP TABLE objects_new")
        db.execute("DROP TABLE packs")
        db.execute("UPDATE meta SET value='4' WHERE key='schema'")
    db.close()


def test_a_schema_4_database_gains_packs_and_keeps_its_objects(tmp_path: Path) -> None:
    cfg = local_config(tmp_path, "erasure", pack={"threshold": 1})  # schema 4 had no packs
    old = real_files()[0]
    (old_id,) = put(cfg, old)
    db_path = load_config(cfg).state_path / "state.db"
    before = sqlite3.connect(db_path).execute(
        "SELECT id, store, name, digest FROM objects ORDER BY id").fetchall()
    _to_schema_4(db_path)
    restores(cfg, old_id, old, tmp_path / "old")  # opening it migrates
    db = sqlite3.connect(db_path)
    assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == ("7",)
    assert db.execute("SELECT id, store, name, digest FROM objects ORDER BY id").fetchall() \
        == before
    assert db.execute("SELECT COUNT(*) FROM objects WHERE pack_digest IS NOT NULL"
                      ).fetchone() == (0,)
    # a standalone object's name stays unique on its store
    store, name = before[0][1], before[0][2]
    try:
        db.execute("INSERT INTO objects (file_id, role, store, name, length, object_size, "
                   "digest, state) VALUES (?, 'public', ?, ?, 1, 1, 'x', 'pending')",
                   (old_id, store, name))
    except sqlite3.IntegrityError as exc:
        assert "UNIQUE" in str(exc)
    else:
        raise AssertionError("a second standalone object under a taken name was accepted")
    db.close()
    assert cli_json(cfg, "verify", "--deep")["problems"] == []


def _to_schema_6(state: Path) -> list[str]:
    """Turn a fresh state into what schema 6 kept: every container a file in prf/, no
    `containers` table. Returns the file ids moved."""
    db = sqlite3.connect(state / "state.db")
    with db:
        rows = db.execute("SELECT file_id, data FROM containers").fetchall()
        for fid, data in rows:
            (state / "prf" / f"{fid}.prf").write_bytes(data)
        db.execute("DROP TABLE containers")
        db.execute("UPDATE meta SET value='6' WHERE key='schema'")
    db.close()
    return [fid for fid, _ in rows]


def test_a_schema_6_archive_keeps_its_containers_as_files(tmp_path: Path) -> None:
    cfg = local_config(tmp_path, "erasure")
    files = real_files()[:3]
    ids = [put(cfg, p)[0] for p in files]
    state = load_config(cfg).state_path
    assert sorted(_to_schema_6(state)) == sorted(ids)  # small files: all were in the table
    for fid, path in zip(ids, files):  # opening it migrates; the files are read as before
        restores(cfg, fid, path, tmp_path / f"out-{fid}")
    db = sqlite3.connect(state / "state.db")
    assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == ("7",)
    assert db.execute("SELECT COUNT(*) FROM containers").fetchone() == (0,)
    db.close()
    assert cli_json(cfg, "verify", "--deep")["problems"] == []
    cli_json(cfg, "forget", ids[0])  # a file's container is gone from prf/ too
    assert sorted(p.stem for p in (state / "prf").iterdir()) == sorted(ids[1:])
    (new,) = put(cfg, real_files()[3])  # a new small file's goes into the table
    assert not (state / "prf" / f"{new}.prf").exists()
    db = sqlite3.connect(state / "state.db")
    assert db.execute("SELECT file_id FROM containers").fetchall() == [(new,)]
    db.close()

