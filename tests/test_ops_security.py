"""Findings of the security audit, each pinned by a test that failed before the fix:
`forget` must leave no plaintext in the state directory (a kept original, a claimed
or quarantined copy, a rekey's work folder), and `restore --to DIR` must never write
outside DIR whatever name or id the state holds."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dispersiond import inbox
from dispersiond.errors import DispersiondError
from dispersiond.ops.finalize import finish
from dispersiond.ops.forget import forget
from dispersiond.ops.protect import admit, protect_file, resume
from dispersiond.ops.restore import restore
from dispersiond.state import FileState
from dsp import cli, local_config, real_files
from memory_archive import memory_archive


def _claimed_and_kept(v, src: Path) -> str:
    """A file protected the daemon's way: claimed into the state directory, then kept
    there by `after: keep` (what `init` writes)."""
    claimed = inbox.claimed_dir(v) / "incoming"
    shutil.copyfile(src, claimed)
    fid = admit(v, claimed, name=src.name)
    resume(v, fid)
    finish(v, [fid], after=lambda files: inbox.apply_after_many(v, files))
    f = v.db.file(fid)
    assert f.state == FileState.DONE and Path(f.source).parent == v.root / "kept"
    return fid


def test_forget_removes_the_kept_original(tmp_path):
    src = real_files()[4]
    with memory_archive(tmp_path, after="keep") as v:
        fid = _claimed_and_kept(v, src)
        kept = Path(v.db.file(fid).source)
        assert kept.read_bytes() == src.read_bytes()  # plaintext in the state directory
        res = forget(v, fid)
        assert not kept.exists()
        assert str(kept) in res["removed_local"] and res["left"] == []
        leftovers = [p for p in v.root.rglob("*") if p.is_file()
                     and p.read_bytes() == src.read_bytes()]
        assert leftovers == []


def test_forget_removes_a_rekey_work_folder_and_a_quarantined_copy(tmp_path):
    src = real_files()[3]
    with memory_archive(tmp_path) as v:
        fid = protect_file(v, src)
        work = v.root / "work" / f"rekey-{fid}"  # a rekey killed after decoding
        work.mkdir(parents=True)
        shutil.copyfile(src, work / "plain")
        quarantined = v.root / "quarantine" / fid
        quarantined.mkdir(parents=True)
        shutil.copyfile(src, quarantined / src.name)
        res = forget(v, fid)
        assert not work.exists() and not quarantined.exists()
        assert {str(work), str(quarantined)} <= set(res["removed_local"])


def test_forget_reports_the_users_own_copy_and_leaves_it(tmp_path):
    src = tmp_path / "mine.csv"
    shutil.copyfile(real_files()[5], src)
    with memory_archive(tmp_path) as v:
        fid = protect_file(v, src)
        res = forget(v, fid)
    assert res["left"] == [str(src)] and src.exists()


def test_forget_cli_says_what_it_removed_and_left(tmp_path):
    cfg = local_config(tmp_path)
    src = tmp_path / "mine.hl7"
    shutil.copyfile(real_files()[5], src)
    _, out, _ = cli(cfg, "put", str(src))
    fid = out.split()[0]
    _, out, _ = cli(cfg, "forget", fid)
    assert f"your own copy is left in place: {src}" in out


@pytest.mark.parametrize("planted", ["../../x", "..", "sub/../../x", "{tmp}/abs", "a\\..\\x"])
def test_restore_to_a_folder_never_writes_outside_it(tmp_path, planted):
    planted = planted.format(tmp=tmp_path)  # an absolute name, kept inside the test's folder
    src = real_files()[0]
    out = tmp_path / "a" / "b" / "out"
    out.mkdir(parents=True)
    with memory_archive(tmp_path) as v:
        fid = protect_file(v, src)
        finish(v, [fid])
        v.db.update_file(fid, name=planted)  # a hostile or damaged state row
        before = {p for p in tmp_path.rglob("*")}
        with pytest.raises(DispersiondError, match="not a plain file name"):
            restore(v, fid, out)
        written = {p for p in tmp_path.rglob("*")} - before
        assert written == set()
        # an explicit file path is still fine: the name is not used then
        restore(v, fid, out / "explicit")
        assert (out / "explicit").read_bytes() == src.read_bytes()


def test_restore_cli_refuses_a_planted_name_in_one_line(tmp_path):
    cfg = local_config(tmp_path)
    src = real_files()[1]
    _, out, _ = cli(cfg, "put", str(src))
    fid = out.split()[0]
    from dispersiond.config import load_config
    from dispersiond.archive import open_archive

    with open_archive(load_config(cfg)) as v:
        v.db.update_file(fid, name="../../x")
    dest = tmp_path / "d1" / "d2"
    dest.mkdir(parents=True)
    _, _, err = cli(cfg, "restore", fid, "--to", str(dest), expect=2)
    assert "not a plain file name" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_restore_refuses_a_malformed_file_id(tmp_path):
    src = real_files()[2]
    with memory_archive(tmp_path) as v:
        fid = protect_file(v, src)
        finish(v, [fid])
        good = v.db.file(fid)
        bad = "../../" + fid[6:]  # a row as a damaged or hostile state might hold it
        fields = {k: getattr(good, k) for k in good.__dataclass_fields__
                  if k not in ("file_id", "state", "created", "updated")}
        v.db.add_file(file_id=bad, state=FileState.DONE, **fields)
        with pytest.raises(DispersiondError, match="malformed file id"):
            restore(v, bad, tmp_path / "out")
        assert not (tmp_path / "out").exists()
