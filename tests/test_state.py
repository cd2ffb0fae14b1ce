"""The state package: file states and their legal moves, the trash's one clock, the
manifest-backup and rekey tables, and the in-place upgrade of a schema 2 database (what
the code before schema 3 left: lists packed into meta strings, prf_* columns)."""
from __future__ import annotations

import itertools
import json
import sqlite3
import time
from pathlib import Path

import pytest

from dispersiond import manifest
from dispersiond.config import load_config
from dispersiond.errors import DispersiondError
from dispersiond.placement import new_object_name
from dispersiond.state import (SCHEMA_VERSION, TRANSITIONS, FileState, IllegalTransition,
                               StateDB, check_transition, peek_counts)
from dispersiond.archive import open_archive
from dsp import cli, cli_json, local_config, real_files

S = FileState
#: The moves the pipeline makes, written out independently of the table.
LEGAL = {(None, S.CLAIMING), (None, S.CLAIMED), (None, S.DONE),
         (S.CLAIMING, S.CLAIMED), (S.CLAIMED, S.ENCODED), (S.CLAIMED, S.FAILED),
         (S.ENCODED, S.COMMITTED), (S.ENCODED, S.CLAIMED),  # held fragments lost
         (S.COMMITTED, S.DONE), (S.COMMITTED, S.COMMITTED),
         (S.DONE, S.COMMITTED)}


def _db(tmp_path: Path) -> StateDB:
    return StateDB(tmp_path / "state" / "state.db")


def _add(db: StateDB, fid: str, state: FileState = S.CLAIMED) -> None:
    db.add_file(file_id=fid, name="x.dcm", size=1, mtime=0.0, scheme="se2", state=state)


def _put(cfg: Path, *paths: Path) -> list[str]:
    res = cli_json(cfg, "put", *map(str, paths))
    assert res["errors"] == [] and {f["state"] for f in res["files"]} == {"done"}
    return [f["file_id"] for f in res["files"]]


def _restores(cfg: Path, fid: str, original: Path, out: Path) -> None:
    cli(cfg, "restore", fid, "--to", str(out))
    assert out.read_bytes() == original.read_bytes()


# --------------------------------------------------------------- states

def test_the_stored_words_are_unchanged() -> None:
    assert [s.value for s in FileState] == ["claiming", "claimed", "encoded", "committed",
                                            "done", "failed"]
    assert f"{S.DONE}" == str(S.DONE) == "done" and S.DONE == "done"
    assert json.dumps({"state": S.FAILED}) == '{"state": "failed"}'


@pytest.mark.parametrize("old,new", list(itertools.product([None, *FileState], FileState)))
def test_only_the_pipeline_moves_are_legal(old, new) -> None:
    assert (new in TRANSITIONS[old]) == ((old, new) in LEGAL)
    if (old, new) in LEGAL:
        assert check_transition("f" * 32, old, new) is new
    else:
        with pytest.raises(IllegalTransition, match=f"from {old or '.new.'} to {new}"):
            check_transition("f" * 32, old, new)


def test_an_illegal_state_change_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    db = _db(tmp_path)
    _add(db, "a" * 32)
    with pytest.raises(IllegalTransition, match="from claimed to done"):
        with db.tx() as conn:
            db.mark_manifest_dirty(conn)
            db.set_state("a" * 32, S.DONE, conn, error="x")
    assert db.file("a" * 32).state is S.CLAIMED and db.file("a" * 32).error is None
    assert db.get_meta("manifest_dirty") is None  # the whole transaction rolled back
    with pytest.raises(IllegalTransition, match="from .new. to encoded"):
        _add(db, "b" * 32, S.ENCODED)
    assert db.file("b" * 32) is None
    with pytest.raises(TypeError, match="set_state"):
        db.update_file("a" * 32, state=S.ENCODED)
    db.set_state("a" * 32, S.ENCODED, error=None, puf_len=7)
    f = db.file("a" * 32)
    assert f.state is S.ENCODED and f.puf_len == 7
    db.set_state("c" * 32, S.ENCODED)  # no such row: nothing to move, nothing written
    assert db.file("c" * 32) is None
    db.close()


def test_claims_land_in_one_statement_and_an_illegal_one_undoes_the_batch(
        tmp_path: Path) -> None:
    db = _db(tmp_path)
    now = time.time()
    ids = ["a" * 32, "b" * 32, "c" * 32]
    odd = "/claimed/\udcff" + "d" * 32  # a path that is not UTF-8 keeps its bytes
    db.add_claims([(fid, f"{fid[:2]}.dcm", 1, now, "se2", f"/inbox/{fid}") for fid in ids],
                  now)
    db.claimed_many([(ids[0], f"/claimed/{ids[0]}"), (ids[1], odd), ("e" * 32, "/gone")],
                    [ids[2]], now)  # a row that is not there is left alone
    assert db.file(ids[0]).state is S.CLAIMED and db.file(ids[0]).source == f"/claimed/{ids[0]}"
    assert db.file(ids[1]).source == odd and db.file(ids[2]) is None
    db.add_claims([("f" * 32, "f.dcm", 1, now, "se2", "/inbox/f")], now)
    with pytest.raises(IllegalTransition, match=f"file {'a' * 32}: .* from claimed to claimed"):
        db.claimed_many([("f" * 32, "/claimed/f"), (ids[0], "/claimed/again")], [], now)
    assert db.file("f" * 32).state is S.CLAIMING  # the whole batch rolled back
    assert db.file(ids[0]).source == f"/claimed/{ids[0]}"
    db.close()


def test_upload_counts_say_what_a_commit_needs_in_one_read(tmp_path: Path) -> None:
    db = _db(tmp_path)
    for fid in ("a" * 32, "b" * 32, "c" * 32):
        _add(db, fid)

    def obj(fid: str, role: str, store: str, state: str) -> dict:
        return {"file_id": fid, "role": role, "shard": None, "store": store,
                "name": f"{store}-{fid}-{role}", "offset": 0, "length": 1,
                "object_size": 1, "digest": "0" * 64, "state": state}

    with db.tx() as conn:
        db.add_objects(conn, [obj("a" * 32, "public", "x", "uploaded"),
                              obj("a" * 32, "public", "y", "pending"),
                              obj("a" * 32, "private", "v", "uploaded"),
                              obj("b" * 32, "public", "x", "uploaded"),
                              obj("b" * 32, "private", "v", "missing")])
    counts = db.upload_counts(["a" * 32, "b" * 32, "c" * 32, "d" * 32])
    assert counts == {"a" * 32: (1, 1, 2, 3), "b" * 32: (1, 0, 1, 2)}  # none: not there
    db.close()


def test_a_batch_with_fields_of_its_own_is_checked_before_anything_is_written(
        tmp_path: Path) -> None:
    db = _db(tmp_path)
    for fid in ("a" * 32, "b" * 32, "c" * 32):
        _add(db, fid)
    db.set_state("c" * 32, S.FAILED)
    with pytest.raises(IllegalTransition, match=f"file {'c' * 32}: .* from failed to encoded"):
        with db.tx() as conn:
            db.set_states_each([("a" * 32, {"puf_len": 1}), ("c" * 32, {"puf_len": 3})],
                               S.ENCODED, conn)
    assert db.file("a" * 32).state is S.CLAIMED and db.file("a" * 32).puf_len is None
    with db.tx() as conn:  # a file with no row is left alone
        db.set_states_each([("a" * 32, {"puf_len": 1, "error": None}),
                            ("b" * 32, {"puf_len": 2, "error": None}),
                            ("d" * 32, {"puf_len": 4, "error": None})], S.ENCODED, conn)
    assert [(f.state, f.puf_len) for f in (db.file("a" * 32), db.file("b" * 32))] == [
        (S.ENCODED, 1), (S.ENCODED, 2)]
    assert db.file("d" * 32) is None
    db.close()


def test_object_rows_keep_the_order_given_whatever_their_columns(tmp_path: Path) -> None:
    db = _db(tmp_path)
    _add(db, "a" * 32)
    base = {"file_id": "a" * 32, "role": "public", "shard": None, "offset": 0, "length": 1,
            "object_size": 1, "digest": "0" * 64, "state": "pending"}
    rows = [dict(base, store="s1", name="n1"), dict(base, store="s2", name="n2"),
            dict(base, store="s3", name="n3", pack_digest="1" * 64),
            dict(base, store="s4", name="n4")]
    with db.tx() as conn:
        db.add_objects(conn, rows)
    got = db.objects("a" * 32)
    assert [o.store for o in got] == ["s1", "s2", "s3", "s4"]  # by id: as given
    assert [o.pack_digest for o in got] == [None, None, "1" * 64, None]
    db.close()


def test_a_batch_of_state_changes_stops_at_the_first_illegal_one(tmp_path: Path) -> None:
    db = _db(tmp_path)
    for fid in ("a" * 32, "b" * 32):
        _add(db, fid)
    db.set_state("b" * 32, S.FAILED)
    with pytest.raises(IllegalTransition, match=f"file {'b' * 32}: .* from failed to encoded"):
        db.set_states(["a" * 32, "b" * 32], S.ENCODED)
    assert db.counts() == {"claimed": 1, "failed": 1}
    assert peek_counts(db.path) == {"claiming": 0, "claimed": 1, "encoded": 0, "committed": 0,
                                    "done": 0, "failed": 1}
    db.close()


# --------------------------------------------------------------- trash, backups, rekey rows

def test_every_way_into_the_trash_uses_one_clock(tmp_path: Path) -> None:
    db = _db(tmp_path)
    _add(db, "a" * 32)
    t0 = time.time()
    db.trash("s1", "direct")
    db.trash_many([("s1", "many-1"), ("s2", "many-2")])
    db.plan_uploads("a" * 32, [("s1", "planned")])
    assert db.abandon_planned("a" * 32) == 1 and db.abandon_planned("a" * 32) == 0
    db.plan_rekey("a" * 32, [("s2", "plan")])
    assert db.abandon_rekey_plan("a" * 32) and not db.abandon_rekey_plan("a" * 32)
    with db.tx() as conn:
        db.retire("a" * 32, [("s3", "retired")], conn)
    db.trash_retired(db.retirements())
    with db.tx() as conn:
        db.add_objects(conn, [{"file_id": "a" * 32, "role": "private", "store": "s3",
                               "name": "old-copy", "length": 1, "object_size": 1,
                               "digest": "d", "state": "corrupt"}])
    db.replace_object(db.objects("a" * 32)[0], "new-copy", "d2", object_size=2,
                      checked=time.time())
    t1 = time.time()
    rows = db.query("SELECT store, name, since FROM trash ORDER BY name")
    assert {(r[0], r[1]) for r in rows} == {
        ("s1", "direct"), ("s1", "many-1"), ("s2", "many-2"), ("s1", "planned"),
        ("s2", "plan"), ("s3", "retired"), ("s3", "old-copy")}
    for r in rows:  # time.time() seconds, not a whole-second SQLite clock
        assert isinstance(r[2], float) and t0 <= r[2] <= t1, dict(r)
    (obj,) = db.objects("a" * 32)
    assert (obj.name, obj.digest, obj.object_size, obj.state) == ("new-copy", "d2", 2, "uploaded")
    assert db.retirements() == {} and db.rekey_plan("a" * 32) is None
    db.untrash("s1", "direct")
    assert ("s1", "direct") not in db.trashed() and len(db.trashed()) == 6
    db.close()


def test_manifest_backups_are_rows_per_store(tmp_path: Path) -> None:
    db = _db(tmp_path)
    for seq, name in ((2, "b"), (1, "z"), (3, "a")):
        db.record_backup("vault", seq, name)
    db.record_backup("other", 1, "o")
    assert db.backups("vault") == [(1, "z"), (2, "b"), (3, "a")]
    db.set_backups("vault", [(3, "a")])
    assert db.backups("vault") == [(3, "a")] and db.backups("other") == [(1, "o")]
    assert db.manifest_dirty()  # never backed up
    db.manifest_backed_up(3, [])
    assert not db.manifest_dirty() and db.manifest_seq() == 3
    db.mark_manifest_dirty()
    assert db.manifest_dirty()
    db.close()


def test_the_recorded_backups_are_the_ones_on_the_store(tmp_path: Path) -> None:
    cfg = local_config(tmp_path, "replicate")
    for path in real_files()[:manifest.KEEP_BACKUPS + 1]:  # one backup per put
        _put(cfg, path)
    with open_archive(load_config(cfg)) as v:
        recorded = v.db.backups("vault")
        bases = {b for b, _, _ in v.db.backup_generations("vault")}
        assert 1 <= len(bases) <= manifest.KEEP_BACKUPS
        assert [s for s, _ in recorded] == list(range(recorded[0][0], manifest.KEEP_BACKUPS + 2))
        segments = {n for n, _, _ in v.db.segment_objects("vault")}
        assert segments and {n for _, n in recorded} | segments == set(
            v.store("vault").list(manifest.PREFIX))
        assert not v.db.query("SELECT key FROM meta WHERE key LIKE 'manifest_backups:%'")


def test_rekey_plans_and_retirements_are_rows(tmp_path: Path) -> None:
    db = _db(tmp_path)
    for fid in ("a" * 32, "b" * 32):
        _add(db, fid)
    db.plan_rekey("a" * 32, [("s1", "n1"), ("s2", "n2")])
    db.plan_rekey("a" * 32, [("s1", "n3")])  # a new plan replaces the old
    assert db.rekey_plan("a" * 32) == [("s1", "n3")] and db.rekey_plan("b" * 32) is None
    with db.tx() as conn:
        db.drop_rekey_plan("a" * 32, conn)
        db.retire("a" * 32, [("s1", "old-a")], conn)
        db.retire("b" * 32, [("s1", "old-b1"), ("s2", "old-b2")], conn)
    assert db.rekey_plan("a" * 32) is None
    assert db.retirements() == {"a" * 32: [("s1", "old-a")],
                                "b" * 32: [("s1", "old-b1"), ("s2", "old-b2")]}
    db.close()


def test_a_rekey_leaves_no_plan_and_retires_through_the_trash(tmp_path: Path) -> None:
    cfg = local_config(tmp_path, "erasure")
    (path,) = real_files()[:1]
    (fid,) = _put(cfg, path)
    with open_archive(load_config(cfg)) as v:
        old = {(o.store, o.name) for o in v.db.objects(fid)}
    res = cli_json(cfg, "rekey", fid)
    assert res["old_deleted"] and res["deletions_pending"] == 0
    with open_archive(load_config(cfg)) as v:
        assert v.db.rekey_plan(fid) is None and v.db.retirements() == {}
        assert v.db.trashed() == []
        for store in {s for s, _ in old}:
            assert not {n for s, n in old if s == store} & set(v.store(store).list())
    _restores(cfg, fid, path, tmp_path / "out")


# --------------------------------------------------------------- schema 2 -> 3

def _to_schema_2(db_path: Path, plans: dict, retires: dict, rotation: tuple[str, str]) -> None:
    """What the code before schema 3 left: lists in meta strings, prf_* columns."""
    db = sqlite3.connect(db_path)
    with db:
        db.execute("ALTER TABLE files RENAME COLUMN container_len TO prf_len")
        db.execute("ALTER TABLE files RENAME COLUMN container_digest TO prf_digest")
        by_store: dict[str, list[str]] = {}
        for store, seq, name in db.execute("SELECT store, seq, name FROM manifest_backups "
                                           "ORDER BY seq"):
            by_store.setdefault(store, []).append(f"{seq}={name}")
        for store, items in by_store.items():
            db.execute("INSERT INTO meta VALUES (?, ?)",
                       (f"manifest_backups:{store}", ",".join(items)))
        for prefix, rows in (("rekey_plan:", plans), ("rekey_retire:", retires)):
            for fid, names in rows.items():
                db.execute("INSERT INTO meta VALUES (?, ?)",
                           (prefix + fid, json.dumps(names, separators=(",", ":"))))
        db.execute("INSERT INTO meta VALUES ('rotate_salt', ?)", (rotation[0],))
        db.execute("INSERT INTO meta VALUES ('rotate_key_id', ?)", (rotation[1],))
        for table in ("manifest_backups", "rekey_plan", "rekey_retire", "key_rotation"):
            db.execute(f"DROP TABLE {table}")
        db.execute("UPDATE meta SET value='2' WHERE key='schema'")
    db.close()


def test_a_schema_2_database_is_migrated_in_place(tmp_path: Path) -> None:
    cfg = local_config(tmp_path, "erasure")
    files = real_files()[:2]
    ids = _put(cfg, files[0])
    ids += _put(cfg, files[1])  # two backups recorded on the vault
    db_path = load_config(cfg).state_path / "state.db"
    with open_archive(load_config(cfg)) as v:
        backups = v.db.backups("vault")
        before = {f.file_id: (f.container_len, f.container_digest) for f in v.db.files()}
    assert len(backups) == 2 and all(length and digest for length, digest in before.values())
    plans = {ids[0]: [["cloud-a", new_object_name()], ["cloud-b", new_object_name()]]}
    retires = {ids[1]: [["cloud-c", new_object_name()]]}
    _to_schema_2(db_path, plans, retires, ("ab" * 16, "cd" * 8))
    with open_archive(load_config(cfg)) as v:  # opening it migrates
        db = v.db
        assert db.get_meta("schema") == "7" and SCHEMA_VERSION == 7
        assert db.backups("vault") == backups
        assert db.rekey_plan(ids[0]) == sorted(map(tuple, plans[ids[0]]))
        assert db.retirements() == {ids[1]: [tuple(retires[ids[1]][0])]}
        assert db.rotation() == ("ab" * 16, "cd" * 8)
        assert {r[0] for r in db.query("SELECT key FROM meta")} <= {
            "schema", "manifest_seq", "manifest_dirty", "audit_head", "daemon"}
        assert not db.query("SELECT key FROM meta WHERE key LIKE 'manifest_backups:%' OR "
                            "key LIKE 'rekey_%' OR key LIKE 'rotate_%'")
        cols = {r[1] for r in db.query("PRAGMA table_info(files)")}
        assert {"container_len", "container_digest"} <= cols and not {"prf_len",
                                                                      "prf_digest"} & cols
        assert {f.file_id: (f.container_len, f.container_digest)
                for f in db.files()} == before
        db.end_rotation()  # no rotation is really under way in this test
    assert cli_json(cfg, "verify", "--deep")["problems"] == []
    for fid, path in zip(ids, files):
        _restores(cfg, fid, path, tmp_path / f"out-{fid}")
    # the migrated backup rows keep working: the next backup prunes by them
    _put(cfg, real_files()[2])
    with open_archive(load_config(cfg)) as v:
        assert [s for s, _ in v.db.backups("vault")] == [1, 2, 3]
        assert {n for _, n in v.db.backups("vault")} | {
            n for n, _, _ in v.db.segment_objects("vault")} == set(
            v.store("vault").list(manifest.PREFIX))


def test_a_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    cfg = local_config(tmp_path, "replicate")
    _put(cfg, real_files()[0])
    db_path = load_config(cfg).state_path / "state.db"
    db = sqlite3.connect(db_path)
    with db:
        db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION + 1),))
    db.close()
    with pytest.raises(DispersiondError, match=f"newer dispersiond .schema {SCHEMA_VERSION + 1}"):
        StateDB(db_path)
    code, _, err = cli(cfg, "ls", expect=2)
    assert "written by a newer dispersiond" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_row_read_back_is_the_row_written_or_a_clear_error(tmp_path: Path) -> None:
    """Rows are built without `__init__` once their columns are known: the result must
    be the dataclass the keyword call makes, and a row of other columns must still fail."""
    from dispersiond.state.model import FileRow

    db = _db(tmp_path)
    name = "r\udce9sultat.hl7"  # a name that is not UTF-8 keeps its exact bytes
    db.add_file(file_id="a" * 32, name=name, size=7, mtime=1.5, scheme="se2", state=S.CLAIMED)
    for _ in range(2):  # the first read checks the columns, the second takes the quick way
        f = db.file("a" * 32)
        assert f == FileRow(**vars(f)) and f.state is S.CLAIMED and f.name == name
        assert (f.size, f.mtime, f.scheme) == (7, 1.5, "se2")
    row = dict(vars(f), state="claimed", name_raw=None, source_raw=None)
    assert FileRow.from_db(row) == f
    with pytest.raises(TypeError):
        FileRow.from_db({**row, "surplus": 1})
    with pytest.raises(ValueError):
        FileRow.from_db({**row, "state": "lost"})
