"""A large erasure-coded file is rebuilt while its k preferred shards download side by
side (no temporary copies): bit-exact, parity shards included; a shard that fails (its
fragment, its padding, or gone) is marked and the restore falls back to gathering
intact shards one by one; with too few intact ones nothing is written."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from dispersiond.archive import open_archive
from dispersiond.config import load_config
from dispersiond.ops import restore as restore_mod
from dispersiond.ops.restore import IN_MEMORY_MAX
from dsp import cli, local_config, put
from test_restore_stream import flip


@pytest.fixture
def rebuilds(monkeypatch) -> list[int]:
    """How often the restore fell back to gathering shards into temporary files."""
    calls: list[int] = []
    real = restore_mod.rebuild_public

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(restore_mod, "rebuild_public", counting)
    return calls


def protected(tmp: Path, size: int = 3 * IN_MEMORY_MAX + 12345) -> tuple[Path, Path, str]:
    cfg = local_config(tmp, "erasure")  # k = 2 of 3 shards
    src = tmp / "scan.dcm"
    src.write_bytes(os.urandom(size))
    (fid,) = put(cfg, src)
    return cfg, src, fid


def shards(cfg: Path, fid: str):
    with open_archive(load_config(cfg)) as v:
        return sorted(v.db.objects(fid, role="public"), key=lambda o: o.shard)


def restored(cfg: Path, fid: str, tmp: Path, expect: int = 0) -> Path:
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    cli(cfg, "restore", fid, "--to", str(out), "--force", expect=expect)
    return out


def leftovers(tmp: Path, out: Path) -> list[str]:
    return ([p.name for p in out.iterdir() if p.name.startswith(".")]
            + [p.name for p in (tmp / "state" / "work").iterdir()])


def test_a_large_erasure_coded_file_streams_bit_exact(tmp_path, rebuilds):
    cfg, src, fid = protected(tmp_path)
    out = restored(cfg, fid, tmp_path)
    assert (out / src.name).read_bytes() == src.read_bytes()
    assert rebuilds == [] and leftovers(tmp_path, out) == []
    assert {o.state for o in shards(cfg, fid)} == {"uploaded"}


@pytest.mark.parametrize("where", ["fragment", "padding"])
def test_a_bad_shard_is_marked_and_others_are_gathered(tmp_path, rebuilds, where):
    cfg, src, fid = protected(tmp_path)
    first = shards(cfg, fid)[0]
    if where == "fragment":
        at = first.offset + first.length // 2
    else:  # bytes the rebuild never reads: only the shard's own digest can tell
        assert first.object_size > first.offset + first.length
        at = first.object_size - 1
    flip(cfg, first.store, first.name, at)
    out = restored(cfg, fid, tmp_path)
    assert (out / src.name).read_bytes() == src.read_bytes()
    assert rebuilds == [1] and leftovers(tmp_path, out) == []
    assert [o.state for o in shards(cfg, fid)] == ["corrupt", "uploaded", "uploaded"]


def test_a_parity_shard_streams_once_the_missing_one_is_known(tmp_path, rebuilds):
    cfg, src, fid = protected(tmp_path)
    gone = shards(cfg, fid)[0]
    with open_archive(load_config(cfg)) as v:
        v.store(gone.store).delete(gone.name)
    out = restored(cfg, fid, tmp_path)  # finds shard 0 missing while streaming
    assert (out / src.name).read_bytes() == src.read_bytes() and rebuilds == [1]
    assert shards(cfg, fid)[0].state == "missing"
    (out / src.name).unlink()
    out = restored(cfg, fid, tmp_path)  # now streams shards 1 and 2 (parity) at once
    assert (out / src.name).read_bytes() == src.read_bytes() and rebuilds == [1]  # no new one


def test_with_too_few_intact_shards_nothing_is_written(tmp_path, rebuilds):
    cfg, src, fid = protected(tmp_path)
    for o in shards(cfg, fid)[:2]:
        flip(cfg, o.store, o.name, o.offset + 100)
    out = tmp_path / "out"
    out.mkdir()
    _, _, err = cli(cfg, "restore", fid, "--to", str(out), expect=2)
    assert "shards needed are intact" in err and "Traceback" not in err
    assert list(out.iterdir()) == [] and leftovers(tmp_path, out) == []
    assert [o.state for o in shards(cfg, fid)] == ["corrupt", "corrupt", "uploaded"]
