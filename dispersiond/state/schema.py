"""The state database's tables (schema 7) and the in-place upgrades from 1 to 6.

Tables added without changing an existing one (`requests`, `sweep_seen`, `pack_release`,
`share_copies`) need no version step: the CREATE TABLE IF NOT EXISTS below adds them to an
older database when it is opened, and a build that does not know them leaves them alone.
"""
from __future__ import annotations

import json
import sqlite3

from .. import digests

SCHEMA_VERSION = 7  # 2: digests named for their algorithm; 3: no structured data in meta;
#                     4: exact bytes of names and paths that are not valid UTF-8, and
#                     incremental manifest backups (change log, chain, generations);
#                     5: pack objects (the `packs` table, objects.pack_digest);
#                     6: segmented manifest checkpoints (the manifest_segment* tables);
#                     7: small files' own private containers in the `containers` table

#: The columns a manifest entry is made of (manifest.FILE_FIELDS / OBJECT_FIELDS by their
#: row names): a change to one of them is a change the next backup carries.
#: (`name_raw` needs no trigger of its own: its bytes change only with the escaped `name`.)
ENTRY_COLUMNS = ("file_id", "name", "size", "digest", "digest_alg", "mtime", "scheme",
                 "head_len", "chunk_log2", "puf_len", "container_len", "container_digest",
                 "key_id", "public_mode", "k", "n", "block", "created")
OBJECT_COLUMNS = ("role", "shard", "store", "name", "offset", "length", "object_size", "digest",
                  "pack_digest")

OBJECTS_TABLE = """
CREATE TABLE IF NOT EXISTS objects (
    id          INTEGER PRIMARY KEY,
    file_id     TEXT NOT NULL REFERENCES files(file_id) ON DELETE CASCADE,
    role        TEXT NOT NULL,              -- public | private
    shard       INTEGER,                    -- erasure shard number; NULL otherwise
    store       TEXT NOT NULL,
    name        TEXT NOT NULL,              -- the object's, or (a packed member) its pack's
    offset      INTEGER NOT NULL DEFAULT 0, -- where the fragment starts inside the object
    length      INTEGER NOT NULL,           -- fragment bytes inside the object
    object_size INTEGER NOT NULL,           -- stored bytes, padding included
    digest      TEXT NOT NULL,              -- of the stored object, or of a packed member's bytes
    state       TEXT NOT NULL,              -- pending | uploaded | missing | corrupt
    checked     REAL,
    pack_digest TEXT                        -- a packed member: of its whole pack; NULL otherwise
);
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    file_id     TEXT PRIMARY KEY,           -- 32 hex digits, random
    name        TEXT NOT NULL,              -- original name: never logged, never uploaded in clear
    size        INTEGER NOT NULL,
    digest      TEXT,                       -- of the original bytes (by digest_alg)
    mtime       REAL,
    scheme      TEXT NOT NULL,
    head_len    INTEGER NOT NULL DEFAULT 0,
    chunk_log2  INTEGER,
    puf_len     INTEGER,
    container_len    INTEGER,               -- bytes of the private container
    container_digest TEXT,                  -- of the private container
    digest_alg  TEXT,                       -- blake3 | sha256: every digest of this file
    key_id      TEXT,
    public_mode TEXT,                       -- replicate | erasure
    k           INTEGER,
    n           INTEGER,
    block       INTEGER,                    -- erasure block size
    state       TEXT NOT NULL,              -- see model.FileState
    source      TEXT,                       -- claimed original (daemon) or given path (put)
    created     REAL NOT NULL,
    updated     REAL NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_try    REAL,
    error       TEXT,
    backed_up   INTEGER NOT NULL DEFAULT 0, -- a manifest backup with this file has landed
    name_raw    BLOB,                       -- exact bytes of `name` when not valid UTF-8
    source_raw  BLOB                        -- exact bytes of `source` when not valid UTF-8
);
CREATE INDEX IF NOT EXISTS files_state ON files(state);
""" + OBJECTS_TABLE + """CREATE INDEX IF NOT EXISTS objects_file ON objects(file_id);
CREATE TABLE IF NOT EXISTS packs (          -- pack objects (docs/FORMAT.md section 8) we stored
    store    TEXT NOT NULL,
    name     TEXT NOT NULL,
    kind     TEXT NOT NULL,                 -- public | private
    size     INTEGER NOT NULL,              -- stored bytes, padding included
    digest   TEXT NOT NULL,                 -- of the whole stored pack
    digest_alg TEXT NOT NULL,
    body_len INTEGER,                       -- member bytes when written (NULL: recovered, unread)
    members  INTEGER,                       -- members when written
    created  REAL NOT NULL,
    state    TEXT NOT NULL,                 -- uploaded | missing | corrupt
    checked  REAL,
    PRIMARY KEY (store, name)
);
CREATE TABLE IF NOT EXISTS audit (
    seq     INTEGER PRIMARY KEY,
    ts      REAL NOT NULL,
    event   TEXT NOT NULL,
    file_id TEXT,
    detail  TEXT NOT NULL,
    prev    TEXT NOT NULL,
    hash    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS planned (        -- names of uploads begun before their file is encoded
    store   TEXT NOT NULL,
    name    TEXT NOT NULL,
    file_id TEXT NOT NULL,
    since   REAL NOT NULL,
    PRIMARY KEY (store, name)
);
CREATE TABLE IF NOT EXISTS trash (          -- objects to delete when their store answers
    store TEXT NOT NULL,
    name  TEXT NOT NULL,
    since REAL NOT NULL,                    -- time.time()
    PRIMARY KEY (store, name)
);
CREATE TABLE IF NOT EXISTS store_status (
    store      TEXT PRIMARY KEY,
    last_ok    REAL,
    last_error TEXT,
    error_at   REAL
);
CREATE TABLE IF NOT EXISTS manifest_backups ( -- the recorded (kept) backups on each private store
    store TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    name  TEXT NOT NULL,
    base  INTEGER,                          -- seq of the checkpoint it builds on (itself if one)
    PRIMARY KEY (store, name)
);
CREATE TABLE IF NOT EXISTS manifest_changes ( -- files whose manifest entry changed since the
    n       INTEGER PRIMARY KEY AUTOINCREMENT, -- last landed backup (filled by the triggers)
    file_id TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS manifest_chain ( -- the newest landed backup, which the next names
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    seq         INTEGER NOT NULL,
    digest      TEXT NOT NULL,              -- SHA-256 of its sealed bytes
    base        INTEGER NOT NULL,           -- seq of the checkpoint it builds on
    base_bytes  INTEGER NOT NULL,           -- sealed size of that checkpoint
    delta_bytes INTEGER NOT NULL,           -- sealed bytes of the deltas since it
    deltas      INTEGER NOT NULL,           -- how many deltas since it
    audit_seq   INTEGER NOT NULL            -- newest audit entry it carries
);
CREATE TABLE IF NOT EXISTS rekey_plan (     -- names of a rekey's new objects, before it commits
    file_id TEXT NOT NULL,
    store   TEXT NOT NULL,
    name    TEXT NOT NULL,
    PRIMARY KEY (file_id, store, name)
);
CREATE TABLE IF NOT EXISTS rekey_retire (   -- a re-keyed file's old objects, deleted once a
    file_id TEXT NOT NULL,                  -- manifest backup naming the new ones has landed
    store   TEXT NOT NULL,
    name    TEXT NOT NULL,
    PRIMARY KEY (file_id, store, name)
);
CREATE TABLE IF NOT EXISTS requests (       -- consent requests from recipients (share/consent.py)
    id       TEXT PRIMARY KEY,              -- 16 hex digits of the signed body's hash
    nonce    TEXT NOT NULL UNIQUE,          -- the requester's: a replayed request is refused
    recipient TEXT NOT NULL,                -- the configured recipient whose key signed it
    received REAL NOT NULL,
    body     TEXT NOT NULL,                 -- the verified body, canonical JSON
    state    TEXT NOT NULL,                 -- pending | approved | denied
    decided  REAL,
    outcome  TEXT                           -- JSON: the bundles written, or the owner's note
);
CREATE TABLE IF NOT EXISTS sweep_seen (     -- a name on a store the state does not know:
    store      TEXT NOT NULL,               -- when the sweep first saw it (prune deletes it,
    name       TEXT NOT NULL,               -- if it is a pack of ours, sweep_grace later)
    first_seen REAL NOT NULL,
    PRIMARY KEY (store, name)
);
CREATE TABLE IF NOT EXISTS pack_release (   -- a pack no row points into any more: deleted
    store TEXT NOT NULL,                    -- once a manifest backup newer than `seq` (the
    name  TEXT NOT NULL,                    -- newest when it was found empty) has landed
    seq   INTEGER NOT NULL,
    PRIMARY KEY (store, name)
);
CREATE TABLE IF NOT EXISTS share_copies (   -- standalone copies of packed members behind a
    store   TEXT NOT NULL,                  -- share's links (docs/FORMAT.md section 6.6)
    name    TEXT NOT NULL,
    file_id TEXT NOT NULL,                  -- no foreign key: a forgotten file's copies
    expires REAL NOT NULL,                  -- still go once their links have expired
    PRIMARY KEY (store, name)
);
CREATE TABLE IF NOT EXISTS manifest_members ( -- the segment of the newest checkpoint that
    file_id TEXT PRIMARY KEY,               -- holds a file (docs/FORMAT.md section 4.1)
    seg     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS manifest_members_seg ON manifest_members(seg);
CREATE TABLE IF NOT EXISTS manifest_segments ( -- the segments the newest checkpoint lists
    seg    INTEGER PRIMARY KEY,
    name   TEXT NOT NULL,                   -- the object's name (the same on every store)
    digest TEXT NOT NULL,                   -- SHA-256 of its sealed bytes
    files  INTEGER NOT NULL,
    bytes  INTEGER NOT NULL                 -- sealed size
);
CREATE TABLE IF NOT EXISTS manifest_segment_objects ( -- segment objects on each private store
    store TEXT NOT NULL,
    name  TEXT NOT NULL,
    born  INTEGER NOT NULL,                 -- seq of the first checkpoint listing it
    died  INTEGER,                          -- of the first that does not (NULL: the newest does)
    PRIMARY KEY (store, name)
);
CREATE TABLE IF NOT EXISTS manifest_touched ( -- files changed since the newest checkpoint:
    file_id TEXT PRIMARY KEY                -- their segments are what the next one re-seals
);
CREATE TABLE IF NOT EXISTS manifest_planned ( -- objects a manifest backup puts before it
    store TEXT NOT NULL,                    -- lands: a crash leaves them for the next one
    name  TEXT NOT NULL,                    -- to delete
    PRIMARY KEY (store, name)
);
CREATE TABLE IF NOT EXISTS containers (     -- the device's own copy of a small file's private
    file_id TEXT PRIMARY KEY REFERENCES files(file_id) ON DELETE CASCADE, -- container (a larger
    data    BLOB NOT NULL                     -- file's is prf/<file_id>.prf): no inode, no fsync
);                                            -- of its own, durable with its file's encode
CREATE TABLE IF NOT EXISTS key_rotation (   -- a passphrase rotation under way (at most one row)
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    salt   TEXT,                            -- the new salt, until the config carries it
    key_id TEXT                             -- of the key the new passphrase gave
);
"""


def migrate(db: sqlite3.Connection, version: int) -> None:
    """Bring a database of schema `version` up to SCHEMA_VERSION, one step at a time
    (inside the caller's transaction: all of it lands, or none)."""
    if version < 2:
        _v1_to_v2(db)
    if version < 3:
        _v2_to_v3(db)
    if version < 4:
        _v3_to_v4(db)
    if version < 5:
        _v4_to_v5(db)
    if version < 6:
        _v5_to_v6(db)
    # 6 -> 7 adds `containers` (SCHEMA makes it, empty: every container of an older
    # database is a file). A step all the same, so that an older build, which would not
    # see the containers kept there, refuses the database instead of missing them.


def _v1_to_v2(db: sqlite3.Connection) -> None:
    """Schema 1 named every digest sha256 (it was the only algorithm)."""
    db.execute("ALTER TABLE files RENAME COLUMN sha256 TO digest")
    db.execute("ALTER TABLE files RENAME COLUMN prf_sha256 TO prf_digest")
    db.execute("ALTER TABLE files ADD COLUMN digest_alg TEXT")
    db.execute("UPDATE files SET digest_alg=? WHERE digest IS NOT NULL OR prf_digest IS NOT NULL",
               (digests.LEGACY,))
    db.execute("ALTER TABLE objects RENAME COLUMN sha256 TO digest")


def _v2_to_v3(db: sqlite3.Connection) -> None:
    """Schema 2 packed lists into meta strings and named the container's columns prf_*."""
    db.execute("ALTER TABLE files RENAME COLUMN prf_len TO container_len")
    db.execute("ALTER TABLE files RENAME COLUMN prf_digest TO container_digest")
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    for key, value in meta.items():
        kind, _, ident = key.partition(":")
        if kind == "manifest_backups":  # "seq=name,seq=name"
            db.executemany("INSERT OR IGNORE INTO manifest_backups (store, seq, name) VALUES (?, ?, ?)",
                           [(ident, int(seq), name) for seq, name in
                            (item.split("=", 1) for item in value.split(",") if item)])
        elif kind in ("rekey_plan", "rekey_retire"):  # JSON [[store, name], ...]
            db.executemany(f"INSERT OR IGNORE INTO {kind} VALUES (?, ?, ?)",
                           [(ident, store, name) for store, name in json.loads(value)])
        else:
            continue
        db.execute("DELETE FROM meta WHERE key=?", (key,))
    if "rotate_salt" in meta or "rotate_key_id" in meta:
        db.execute("INSERT OR REPLACE INTO key_rotation VALUES (1, ?, ?)",
                   (meta.get("rotate_salt"), meta.get("rotate_key_id")))
        db.execute("DELETE FROM meta WHERE key IN ('rotate_salt', 'rotate_key_id')")


def _v3_to_v4(db: sqlite3.Connection) -> None:
    """Schema 3 could hold only names that are valid UTF-8 (others stopped intake): the
    exact bytes of any other go beside the text, which then holds the escaped form.
    Schema 3 kept only full backups: each is its own checkpoint. With no chain row the
    next backup is a checkpoint; a head recorded before heads were authenticated is
    marked as such (audit.py)."""
    have = {r[1] for r in db.execute("PRAGMA table_info(files)")}
    for col in ("name_raw", "source_raw"):
        if col not in have:
            db.execute(f"ALTER TABLE files ADD COLUMN {col} BLOB")
    cols = {r[1] for r in db.execute("PRAGMA table_info(manifest_backups)")}
    if "base" not in cols:
        db.execute("ALTER TABLE manifest_backups ADD COLUMN base INTEGER")
    db.execute("UPDATE manifest_backups SET base=seq WHERE base IS NULL")
    head = db.execute("SELECT value FROM meta WHERE key='audit_head'").fetchone()
    if head is not None and head[0].count(":") == 1:
        db.execute("UPDATE meta SET value=? WHERE key='audit_head'", (head[0] + ":legacy",))


def _v4_to_v5(db: sqlite3.Connection) -> None:
    """Schema 4 held one object per row, unique by (store, name); packed members share
    their pack's name, so the table is rebuilt without that constraint (the partial index
    in POST_MIGRATION keeps it for standalone objects) and with `pack_digest`."""
    cols = {r[1] for r in db.execute("PRAGMA table_info(objects)")}
    if "pack_digest" in cols:
        return
    db.execute("ALTER TABLE objects RENAME TO objects_v4")
    db.execute("DROP INDEX IF EXISTS objects_file")
    db.execute(OBJECTS_TABLE)
    keep = ", ".join(("id", "file_id", "role", "shard", "store", "name", "offset", "length",
                      "object_size", "digest", "state", "checked"))
    db.execute(f"INSERT INTO objects ({keep}) SELECT {keep} FROM objects_v4")
    db.execute("DROP TABLE objects_v4")
    db.execute("CREATE INDEX IF NOT EXISTS objects_file ON objects(file_id)")


def _v5_to_v6(db: sqlite3.Connection) -> None:
    """Schema 5's checkpoints were whole: the segment tables (made by SCHEMA) start
    empty, and with no segment state the next checkpoint writes every segment (one
    full upload, as a checkpoint was before). Segment objects already recorded stay
    recorded, so pruning still deletes them."""
    db.execute("DELETE FROM meta WHERE key IN ('manifest_segmented', 'manifest_segment_key')")
    db.execute("DELETE FROM manifest_touched")


#: Indexes on columns an older schema lacks: made after any migration.
POST_MIGRATION = """
CREATE UNIQUE INDEX IF NOT EXISTS objects_standalone ON objects(store, name)
    WHERE pack_digest IS NULL;
CREATE INDEX IF NOT EXISTS objects_pack ON objects(store, name) WHERE pack_digest IS NOT NULL;
"""


def triggers(protected: tuple[str, ...], file_cols: tuple[str, ...],
             object_cols: tuple[str, ...]) -> str:
    """Triggers that log every change of a protected file's manifest entry, so that a
    backup reads the batch, never the archive. Temporary (this connection's): made on
    every open after any migration, so they always name today's columns and never stand
    in the way of a migration's own changes."""
    p = "(" + ", ".join(f"'{s}'" for s in protected) + ")"
    log = "INSERT OR REPLACE INTO manifest_changes (file_id) VALUES"
    differs = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in file_cols)
    odiffers = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in object_cols)
    held = f"EXISTS (SELECT 1 FROM files f WHERE f.file_id={{}}.file_id AND f.state IN {p})"
    return f"""
CREATE TEMP TRIGGER IF NOT EXISTS manifest_file_added AFTER INSERT ON files
WHEN NEW.state IN {p} BEGIN {log} (NEW.file_id); END;
CREATE TEMP TRIGGER IF NOT EXISTS manifest_file_changed AFTER UPDATE ON files
WHEN (NEW.state IN {p}) != (OLD.state IN {p}) OR (NEW.state IN {p} AND ({differs}))
BEGIN {log} (NEW.file_id); END;
CREATE TEMP TRIGGER IF NOT EXISTS manifest_file_deleted AFTER DELETE ON files
WHEN OLD.state IN {p} BEGIN {log} (OLD.file_id); END;
CREATE TEMP TRIGGER IF NOT EXISTS manifest_object_added AFTER INSERT ON objects
WHEN {held.format("NEW")} BEGIN {log} (NEW.file_id); END;
CREATE TEMP TRIGGER IF NOT EXISTS manifest_object_changed AFTER UPDATE ON objects
WHEN ({odiffers}) AND {held.format("NEW")} BEGIN {log} (NEW.file_id); END;
CREATE TEMP TRIGGER IF NOT EXISTS manifest_object_deleted AFTER DELETE ON objects
WHEN {held.format("OLD")} BEGIN {log} (OLD.file_id); END;
"""
