"""`put FILE... | DIR` on the batched engine (ops/protect_batch.py): a folder is walked,
every file comes back bit-exact, small files share packs, one bad file is reported while
the others are protected, and a SIGKILL anywhere in a batch followed by `put --resume`
leaves each file protected exactly once, with nothing in a store the manifest does not
name.
"""
from __future__ import annotations

import base64
import collections
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from daemonctl import drop_privileges_like_the_unit
from dsp import ROOT, cli, cli_json, kept_containers, local_config, real_files

from backends import open_store
from dispersiond.commands.put import walk
from dispersiond.config import load_config
from dispersiond.ops.protect_batch import put_batches

BAD = b"bad\xff.dcm"  # not valid UTF-8


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def db_rows(cfg: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(load_config(cfg).state_path / "state.db")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def stored_names(cfg: Path) -> dict[str, set[str]]:
    """What each store holds, manifest backups aside."""
    out = {}
    for s in yaml.safe_load(cfg.read_text())["stores"]:
        with open_store(s["type"], s["name"], path=s["path"]) as store:
            out[s["name"]] = {n for n in store.list("") if not n.startswith("manifest")}
    return out


def recorded_names(cfg: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = collections.defaultdict(set)
    for store, name in db_rows(cfg, "SELECT store, name FROM objects"):
        out[store].add(name)
    return {s: out[s] for s in stored_names(cfg)}


def record_dir(tmp: Path) -> tuple[Path, dict[str, bytes]]:
    """A folder of real records (some in a subfolder, one with a non-UTF-8 name) and,
    to be skipped, a symlink to a file, a symlink to a folder and a FIFO."""
    top = tmp / "records"
    (top / "ward-2").mkdir(parents=True)
    files = real_files()
    originals: dict[str, bytes] = {}
    for i, f in enumerate(files):
        dest = top / ("ward-2" if i % 3 == 1 else "") / f.name
        shutil.copyfile(f, dest)
        originals[f.name] = f.read_bytes()
    raw = os.path.join(os.fsencode(top / "ward-2"), BAD)
    with open(raw, "wb") as out:
        out.write(files[0].read_bytes()[::-1])
    originals[os.fsdecode(BAD)] = files[0].read_bytes()[::-1]
    (top / "link.dcm").symlink_to(files[0])
    (top / "ward-link").symlink_to(top / "ward-2")
    os.mkfifo(top / "pipe")
    return top, originals


# ------------------------------------------------------------------ walking a folder

def test_walk_takes_regular_files_in_name_order_and_skips_the_rest(tmp_path):
    top, originals = record_dir(tmp_path)
    state = top / "zz-state"
    (state / "work").mkdir(parents=True)
    (state / "work" / "staged").write_bytes(b"never a record")
    errors: list[str] = []
    got = walk(top, errors, skip=state)
    assert errors == []
    rel = [os.fsencode(p.relative_to(top)) for p in got]
    assert rel == sorted(rel, key=lambda r: r.split(b"/"))  # name order at each level
    assert {os.fsdecode(os.fsencode(p.name)) for p in got} == set(originals)
    assert len(got) == len(originals)  # no symlink, no FIFO, nothing of the state dir
    assert all(not p.is_symlink() for p in got)


def test_put_batches_keep_the_order_and_both_bounds():
    sizes = [("a", 10), ("b", 10), ("c", 10), ("d", 100), ("e", 1), ("f", 1), ("g", 1)]
    assert put_batches(sizes, files=3, size=50) == [["a", "b", "c"], ["d"], ["e", "f", "g"]]
    assert put_batches(sizes, files=2, size=1000) == [["a", "b"], ["c", "d"], ["e", "f"],
                                                      ["g"]]
    assert put_batches(sizes, files=10, size=25) == [["a", "b"], ["c"], ["d"],
                                                     ["e", "f", "g"]]
    assert put_batches([], files=3, size=50) == []


# ------------------------------------------------------------------ a folder, end to end

def test_put_dir_restores_bit_exact_and_small_files_share_packs(tmp_path):
    cfg = local_config(tmp_path, "replicate")
    top, originals = record_dir(tmp_path)
    res = cli_json(cfg, "put", str(top))
    assert res["errors"] == []
    assert [f["state"] for f in res["files"]] == ["done"] * len(originals)
    names = {base64.b64decode(f["name_b64"]).decode("utf-8", "surrogateescape")
             if "name_b64" in f else f["name"]: f["file_id"] for f in res["files"]}
    assert set(names) == set(originals)
    # admitted in one transaction, listed in the order they were given (walked)
    assert [r["file_id"] for r in cli_json(cfg, "ls")] == [f["file_id"] for f in res["files"]]
    out = tmp_path / "out"
    out.mkdir()
    for name, fid in names.items():
        dest = Path(os.fsdecode(os.path.join(os.fsencode(out), os.fsencode(name))))
        cli(cfg, "restore", fid, "--to", str(dest))
        assert sha(dest.read_bytes()) == sha(originals[name]), name
    # One batch: one pack per store (public on each cloud, private on the vault),
    # shared by every file, and the stores hold exactly the packs the manifest names.
    n = len(originals)
    per_store = collections.Counter(s for s, in db_rows(cfg, "SELECT store FROM packs"))
    assert per_store == {"cloud-a": 1, "cloud-b": 1, "vault": 1}
    rows = db_rows(cfg, "SELECT store, COUNT(*), COUNT(DISTINCT name) FROM objects "
                        "GROUP BY store")
    assert sorted(rows) == [("cloud-a", n, 1), ("cloud-b", n, 1), ("vault", n, 1)]
    assert stored_names(cfg) == recorded_names(cfg)
    assert db_rows(cfg, "SELECT COUNT(*) FROM trash") == [(0,)]
    # Text output: one line per file, the undecodable name escaped.
    again = cli(cfg, "put", str(top / "ward-2"))[1].splitlines()
    assert len(again) == 1 + sum(1 for i in range(len(real_files())) if i % 3 == 1)
    assert any(line.endswith("bad\\xff.dcm") for line in again)


# ------------------------------------------------------------------ sending while encoding

def test_a_batch_s_packs_go_up_while_the_rest_of_it_is_encoded(tmp_path, monkeypatch):
    """The last chunk of a batch waits, inside its encode, until a pack of the batch has
    landed: a put that sent nothing before every encode was done would never get there.
    Each file's private container still goes up only after its public fragments."""
    import threading

    from dispersiond.ops import packing, protect_batch

    cfg = local_config(tmp_path, "replicate")
    folder = tmp_path / "records"
    folder.mkdir()
    rng = random.Random(7)
    originals = {f"rec-{i:03d}.hl7": rng.randbytes(8 << 10) for i in range(256)}
    for name, data in originals.items():
        (folder / name).write_bytes(data)
    chunks = -(-len(originals) // 64)  # encode_many's chunks of 64 files
    monkeypatch.setattr(protect_batch, "SEND_BYTES", 64 << 10)
    landed = threading.Event()
    order: list[tuple[str, set[str]]] = []  # (kind, its files) of each pack, as it landed
    lock = threading.Lock()
    real_pack, real_encode = packing.send_pack, protect_batch.encode_many

    def pack_spy(v, job, *args, **kwargs):
        row = real_pack(v, job, *args, **kwargs)
        with lock:
            order.append((job.kind, {o.file_id for o in job.objs}))
        landed.set()
        return row

    calls = [0]
    waited: list[bool] = []

    def encode_spy(v, fids, *args, **kwargs):
        with lock:
            calls[0] += 1
            last = calls[0] == chunks
        if last:
            waited.append(landed.wait(60))
        return real_encode(v, fids, *args, **kwargs)

    monkeypatch.setattr(packing, "send_pack", pack_spy)
    monkeypatch.setattr(protect_batch, "encode_many", encode_spy)
    res = cli_json(cfg, "put", str(folder))
    assert waited == [True]  # a pack landed while the last chunk was still to encode
    assert res["errors"] == [] and {f["state"] for f in res["files"]} == {"done"}
    fids = {f["file_id"] for f in res["files"]}
    for fid in fids:  # every file's container after its public fragment, on each cloud
        public = [i for i, (kind, members) in enumerate(order)
                  if kind == "public" and fid in members]
        private = [i for i, (kind, members) in enumerate(order)
                   if kind == "private" and fid in members]
        assert len(public) == 2 and len(private) == 1 and max(public) < private[0], fid
    assert len(order) > 3  # more than one group: (cloud-a, cloud-b, vault) per group
    assert stored_names(cfg) == recorded_names(cfg)
    out = tmp_path / "out"
    out.mkdir()
    for f in list(res["files"])[:5]:
        cli(cfg, "restore", f["file_id"], "--to", str(out / f["name"]))
        assert (out / f["name"]).read_bytes() == originals[f["name"]]


# ------------------------------------------------------------------ one bad file

def test_a_bad_file_is_reported_and_the_others_are_protected(tmp_path):
    """An unreadable record (mode 000, with root's override dropped as the systemd unit
    drops it) and a path that does not exist, among good records."""
    cfg = local_config(tmp_path, "replicate")
    top, originals = record_dir(tmp_path)
    locked = top / "locked.hl7"
    locked.write_bytes(b"MSH|^~\\&|LOCKED\r" * 50)
    locked.chmod(0)
    r = subprocess.run([sys.executable, "-m", "dispersiond", "-c", str(cfg), "put", "--json",
                        str(top), str(tmp_path / "missing.dcm")],
                       capture_output=True, text=True, timeout=300,
                       preexec_fn=drop_privileges_like_the_unit,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    res = json.loads(r.stdout)
    assert len(res["errors"]) == 2, res["errors"]
    assert any(e.startswith("locked.hl7: ") and "Permission denied" in e
               for e in res["errors"]), res["errors"]
    assert any("missing.dcm" in e and "not a readable file" in e for e in res["errors"])
    assert "locked.hl7" in r.stderr and "missing.dcm" in r.stderr
    assert len(res["files"]) == len(originals)
    assert {f["state"] for f in res["files"]} == {"done"}
    assert db_rows(cfg, "SELECT state FROM files WHERE name='locked.hl7'") == [("claimed",)]
    locked.chmod(0o600)
    res = cli_json(cfg, "put", "--resume")
    assert [(f["name"], f["state"]) for f in res["files"]] == [("locked.hl7", "done")]
    cli(cfg, "restore", res["files"][0]["file_id"], "--to", str(tmp_path / "back.hl7"))
    assert (tmp_path / "back.hl7").read_bytes() == locked.read_bytes()
    assert stored_names(cfg) == recorded_names(cfg)


def test_dead_stores_fail_their_files_and_resume_finishes_them(tmp_path):
    """The vault down: no file of the batch is restorable, each says so and stays
    encoded. Then only a cloud down: every file is committed (the other replica
    suffices) and its copy on that cloud is still owed; then done."""
    cfg = local_config(tmp_path, "replicate")
    top, originals = record_dir(tmp_path)
    for dead in ("vault", "cloud-b"):
        (tmp_path / dead).write_text("not a folder")  # the store cannot be written
    res = cli_json(cfg, "put", str(top), expect=2)
    assert res["files"] == [] and len(res["errors"]) == len(originals)
    assert all("upload to store(s) cloud-b, vault failed" in e for e in res["errors"]), \
        res["errors"]
    assert set(db_rows(cfg, "SELECT state FROM files")) == {("encoded",)}
    (tmp_path / "vault").unlink()
    res = cli_json(cfg, "put", "--resume")
    assert res["errors"] == [] and {f["state"] for f in res["files"]} == {"committed"}
    assert set(db_rows(cfg, "SELECT store, state FROM objects WHERE state!='uploaded'")) == {
        ("cloud-b", "pending")}
    (tmp_path / "cloud-b").unlink()
    res = cli_json(cfg, "put", "--resume")
    assert len(res["files"]) == len(originals)
    assert {f["state"] for f in res["files"]} == {"done"}
    assert stored_names(cfg) == recorded_names(cfg)


# ------------------------------------------------------------------ SIGKILL, then --resume

#: Runs `put DIR` and SIGKILLs itself at a chosen step of the batch.
CHILD = textwrap.dedent('''
    import os, signal, sys, threading, time
    from dispersiond import cli
    from dispersiond.commands import put as cmd
    from dispersiond.ops import finalize, packing, protect_batch

    cfg, folder, point, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])

    def dies_after(n, real):
        calls = [0]
        lock = threading.Lock()
        def wrapped(*args, **kwargs):
            out = real(*args, **kwargs)
            with lock:
                calls[0] += 1
                if calls[0] == n:
                    os.kill(os.getpid(), signal.SIGKILL)
            return out
        return wrapped

    steps = {
        "admitted": (cmd, "admit_many", 1),        # every file admitted, none encoded
        "encoding": (protect_batch, "encode_many", 2),  # two chunks recorded, not the rest
        "pack-landed": (packing, "send", 1),       # a pack uploaded, not yet committed
        "packs-committed": (protect_batch, "send_objects", 1),
        "committed": (protect_batch, "commit_many", 1),
        "backed-up": (finalize, "backup_manifest", 1),  # backup landed, not yet done
    }
    if point == "random":  # at a random instant once every file is admitted
        admit = cmd.admit_many
        def armed(*args, **kwargs):
            out = admit(*args, **kwargs)
            threading.Timer(delay, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
            return out
        cmd.admit_many = armed
    else:
        mod, name, n = steps[point]
        setattr(mod, name, dies_after(n, getattr(mod, name)))
    sys.exit(cli.main(["-c", cfg, "put", folder]))
''')


def many_records(folder: Path, rng: random.Random) -> dict[str, bytes]:
    """Small records of every size class in two folders, and two medium ones (encoded
    alone, not in a chunk)."""
    out = {}
    for i in range(150):
        size = rng.choice([0, 1, 31, 32, 4096]) if i % 25 == 3 else rng.randrange(1, 40 << 10)
        out[f"{'a' if i % 2 else 'b'}/rec-{i:03d}.hl7"] = rng.randbytes(size)
    for i in range(2):
        out[f"a/scan-{i}.dcm"] = rng.randbytes(rng.randrange(1 << 20, 3 << 20))
    for rel, data in out.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return out


@pytest.mark.parametrize("point", ["admitted", "encoding", "pack-landed", "packs-committed",
                                   "committed", "backed-up", "random"])
def test_sigkill_in_a_batched_put_then_resume_protects_each_file_once(tmp_path, point):
    seed = int(os.environ.get("DISPERSIOND_PUT_KILL_SEED", random.randrange(1 << 30)))
    print(f"seed {seed}")
    rng = random.Random(seed)
    cfg = local_config(tmp_path, "erasure")
    folder = tmp_path / "records"
    originals = many_records(folder, rng)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", CHILD, str(cfg), str(folder), point,
                        str(rng.uniform(0.0, 3.0))],
                       capture_output=True, text=True, timeout=300, env=env)
    if point != "random":
        assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    states = collections.Counter(s for s, in db_rows(cfg, "SELECT state FROM files"))
    assert sum(states.values()) == len(originals), states  # all admitted before any encode

    res = cli_json(cfg, "put", "--resume")
    assert res["errors"] == []
    rows = db_rows(cfg, "SELECT file_id, name, state FROM files")
    assert sorted(name for _, name, _ in rows) == sorted(Path(p).name for p in originals)
    assert {state for _, _, state in rows} == {"done"}
    assert db_rows(cfg, "SELECT COUNT(*) FROM trash") == [(0,)]
    assert db_rows(cfg, "SELECT COUNT(*) FROM planned") == [(0,)]
    assert stored_names(cfg) == recorded_names(cfg)  # nothing the manifest does not name
    state = load_config(cfg).state_path
    assert not any((state / "work").iterdir())
    assert sorted(kept_containers(state)) == sorted(fid for fid, _, _ in rows)
    by_name = {Path(p).name: data for p, data in originals.items()}
    out = tmp_path / "out"
    out.mkdir()
    for fid, name, _ in rows:
        cli(cfg, "restore", fid, "--to", str(out / name))
        assert sha((out / name).read_bytes()) == sha(by_name[name]), name
