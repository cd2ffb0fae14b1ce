"""The device's own private containers: a small file's in the state database (no file of
its own), a larger file's in prf/; every operation reads either, and forget leaves no
byte of a deleted one in the database or its write-ahead log."""
from __future__ import annotations

import os
from pathlib import Path

from dispersiond.ops.forget import forget
from dispersiond.ops.packing import send_objects
from dispersiond.ops.protect import admit, commit_many, encode_many
from dispersiond.ops.rekey import rekey
from dispersiond.ops.restore import restore
from dispersiond.ops.verify import verify
from memory_archive import memory_archive


def _protect(v, paths: list[Path]) -> list[str]:
    fids = [admit(v, p) for p in paths]
    assert encode_many(v, fids) == dict.fromkeys(fids)
    assert send_objects(v, v.db.objects_of(fids)) == []
    assert commit_many(v, list(v.db.files_by_id(fids).values())) == fids
    return fids


def _files(tmp: Path, *sizes: int) -> list[Path]:
    (tmp / "in").mkdir()
    out = []
    for i, n in enumerate(sizes):
        p = tmp / "in" / f"r{i}.json"
        p.write_bytes(os.urandom(n))
        out.append(p)
    return out


def _on_disk(v) -> bytes:
    """Every byte of the state database as it lies on disk, its log included."""
    return b"".join(p.read_bytes() for p in v.root.glob("state.db*") if p.is_file())


def test_small_containers_live_in_the_database_large_ones_in_files(tmp_path: Path) -> None:
    with memory_archive(tmp_path, "erasure", pack={"threshold": "64KiB"}) as v:
        paths = _files(tmp_path, 3000, 200_000)  # packed, and one of its own
        small, large = _protect(v, paths)
        assert v.db.has_container(small) and not v.container_path(small).exists()
        assert v.container_path(large).exists() and not v.db.has_container(large)
        assert v.container(small) is not None and v.container(large) is not None
        assert verify(v, deep=True).findings == []
        out = tmp_path / "out"
        out.mkdir()
        for fid, p in zip((small, large), paths):
            restore(v, fid, out / fid)
            assert (out / fid).read_bytes() == p.read_bytes()
        old = v.container(small)
        rekey(v, small)  # a fresh secret: the new container replaces the old in the table
        assert v.db.has_container(small) and v.container(small) != old
        assert not v.container_path(small).exists()
        restore(v, small, out / "again")
        assert (out / "again").read_bytes() == paths[0].read_bytes()


def test_forget_leaves_no_byte_of_a_kept_container(tmp_path: Path) -> None:
    with memory_archive(tmp_path, "replicate") as v:
        paths = _files(tmp_path, 4000, 4000, 4000)
        fids = _protect(v, paths)
        victim = v.container(fids[1])
        assert victim is not None
        pieces = [victim[i:i + 48] for i in range(200, len(victim) - 48, 400)]  # sealed bytes
        assert pieces and all(p in _on_disk(v) for p in pieces)  # there before
        forget(v, fids[1])
        assert not v.has_container(fids[1]) and v.db.file(fids[1]) is None
        disk = _on_disk(v)
        assert not any(p in disk for p in pieces), "a piece of the forgotten container is left"
        for fid, p in ((fids[0], paths[0]), (fids[2], paths[2])):  # the others are intact
            restore(v, fid, tmp_path / fid)
            assert (tmp_path / fid).read_bytes() == p.read_bytes()


def test_a_damaged_kept_container_is_replaced_by_a_trusted_copy(tmp_path: Path) -> None:
    with memory_archive(tmp_path, "replicate") as v:
        (path,) = _files(tmp_path, 5000)
        (fid,) = _protect(v, [path])
        bad = bytearray(v.container(fid) or b"")
        bad[-5] ^= 1
        with v.db.tx() as conn:
            v.db.put_containers(conn, [(fid, bytes(bad))])
        restore(v, fid, tmp_path / "out")  # from the private pack, checked
        assert (tmp_path / "out").read_bytes() == path.read_bytes()
