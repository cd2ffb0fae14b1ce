"""A large replicated file is decoded while its public object downloads (no temporary copy):
bit-exact, and still never built from an object that fails its own digest, padding
included; a bad copy is marked and the next one used; nothing is left behind."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from dispersiond.archive import open_archive
from dispersiond.config import load_config
from dispersiond.errors import IntegrityError
from dispersiond.ops.restore import IN_MEMORY_MAX
from dispersiond.ops.streaming import ObjectStream
from dsp import cli, local_config, put


def big_file(tmp: Path, size: int = 3 * IN_MEMORY_MAX + 12345) -> Path:
    p = tmp / "scan.dcm"
    p.write_bytes(os.urandom(size))
    return p


def public_objects(cfg: Path, fid: str):
    with open_archive(load_config(cfg)) as v:
        return {o.store: o for o in v.db.objects(fid, role="public")}


def flip(cfg: Path, store: str, name: str, at: int) -> None:
    with open_archive(load_config(cfg)) as v:
        path = v.store(store).inner._path(name)
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x01]))


def states(cfg: Path, fid: str) -> dict[str, str]:
    return {s: o.state for s, o in public_objects(cfg, fid).items()}


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_a_large_replicated_file_restores_bit_exact(tmp_path):
    cfg = local_config(tmp_path, "replicate")
    src = big_file(tmp_path)
    (fid,) = put(cfg, src)
    assert all(not o.packed for o in public_objects(cfg, fid).values())
    out = tmp_path / "out"
    out.mkdir()
    cli(cfg, "restore", fid, "--to", str(out))
    assert (out / src.name).read_bytes() == src.read_bytes()
    assert leftovers(out) == [] and list((tmp_path / "state" / "work").iterdir()) == []


@pytest.mark.parametrize("where", ["fragment", "padding"])
def test_a_bad_copy_is_never_used_and_the_next_one_is(tmp_path, where):
    cfg = local_config(tmp_path, "replicate")
    src = big_file(tmp_path)
    (fid,) = put(cfg, src)
    objs = public_objects(cfg, fid)
    with open_archive(load_config(cfg)) as v:
        from dispersiond.ops.restore import _order

        first = _order(v, list(objs.values()))[0]
    if where == "fragment":
        at = first.offset + first.length // 2
    else:  # bytes the decoder never reads: only the object's own digest can tell
        assert first.object_size > first.offset + first.length
        at = first.object_size - 1
    flip(cfg, first.store, first.name, at)
    out = tmp_path / "out"
    out.mkdir()
    cli(cfg, "restore", fid, "--to", str(out))
    assert (out / src.name).read_bytes() == src.read_bytes()
    assert states(cfg, fid) == {first.store: "corrupt",
                                **{s: "uploaded" for s in objs if s != first.store}}


def test_with_every_copy_bad_nothing_is_written(tmp_path):
    cfg = local_config(tmp_path, "replicate")
    src = big_file(tmp_path)
    (fid,) = put(cfg, src)
    for store, o in public_objects(cfg, fid).items():
        flip(cfg, store, o.name, o.offset + 100)
    out = tmp_path / "out"
    out.mkdir()
    _, _, err = cli(cfg, "restore", fid, "--to", str(out), expect=2)
    assert "no intact public replica" in err and "Traceback" not in err
    assert list(out.iterdir()) == []
    assert set(states(cfg, fid).values()) == {"corrupt"}


def test_a_missing_copy_is_marked_and_the_other_restores(tmp_path):
    cfg = local_config(tmp_path, "replicate")
    src = big_file(tmp_path)
    (fid,) = put(cfg, src)
    objs = public_objects(cfg, fid)
    gone = sorted(objs)[0]
    with open_archive(load_config(cfg)) as v:
        v.store(gone).delete(objs[gone].name)
    out = tmp_path / "x.dcm"
    cli(cfg, "restore", fid, "--to", str(out))
    assert out.read_bytes() == src.read_bytes()
    assert states(cfg, fid)[gone] == "missing"


def test_the_stream_hands_over_bytes_in_order_and_the_download_verdict_last():
    data = os.urandom(5 << 20)

    def fetch(sink):
        for i in range(0, len(data), 70_001):
            sink.write(data[i:i + 70_001])
        raise IntegrityError("object does not match its digest")

    s = ObjectStream(fetch, cap=1 << 20)
    got = bytearray()
    buf = bytearray(300_000)
    while len(got) < len(data):
        n = s.readinto(buf)
        got += buf[:n]
    assert bytes(got) == data
    with pytest.raises(IntegrityError, match="does not match"):
        s.drain()
    s.close()


def test_closing_the_stream_stops_a_download_that_waits_for_room():
    started, wrote = threading.Event(), []

    def fetch(sink):
        started.set()
        for _ in range(100):
            sink.write(b"x" * 1000)
            wrote.append(1)

    s = ObjectStream(fetch, cap=4000)
    started.wait(5)
    assert s.read(10) == b"x" * 10
    s.close()  # returns only once the download thread has ended
    assert len(wrote) < 100


def test_an_output_written_out_as_it_grows_is_still_whole_and_atomic(tmp_path, monkeypatch):
    from dispersiond import fsutil

    monkeypatch.setattr(fsutil, "WRITEBACK_EVERY", 1000)
    data = os.urandom(1_000_000)
    target = tmp_path / "out.bin"
    with fsutil.atomic_output(target, writeback=True) as f:
        for i in range(0, len(data), 4096):
            f.write(data[i:i + 4096])
        assert f.mark > 0 and not target.exists()  # writeback started; not in place yet
    assert target.read_bytes() == data
    with pytest.raises(RuntimeError):
        with fsutil.atomic_output(target, writeback=True) as f:
            f.write(b"half")
            raise RuntimeError("decode failed")
    assert target.read_bytes() == data and leftovers(tmp_path) == []
