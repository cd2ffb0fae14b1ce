"""What follows a file's uploads, for `put` and the daemon alike: a manifest backup if one
is due, the standing grants (shares), the after-policy (daemon only) and `done`.

A file becomes done only once every object is confirmed and a landed manifest backup
holds it; each step is idempotent, so a crash anywhere just repeats it.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Iterable

from ..errors import DispersiondError
from .backup import backup_manifest
from ..state import PROTECTED, FileRow, ObjectState
from ..archive import Archive


def finalize(v: Archive, fid: str) -> bool:
    """committed -> done once every object is confirmed and a manifest backup holds it."""
    return bool(finalize_many(v, [fid]))


def finalize_many(v: Archive, fids: Iterable[str]) -> list[str]:
    """`finalize` for many files in one transaction, each checked inside it; returns
    the ids now done."""
    return v.db.finish_many(fids)


def grant_standing(v: Archive, fid: str, errors: list[str] | None = None) -> list[Path]:
    """Bundles for the configured standing grants (none configured: nothing to do)."""
    if not v.cfg.grants:
        return []
    from ..share import apply_grants

    return apply_grants(v, fid, errors)


class AfterPolicyFailed(DispersiondError):
    """The after-policy could not move or delete an original (recorded on the file)."""

    def __init__(self, file_id: str, exc: OSError) -> None:
        super().__init__(f"file {file_id}: the after-policy failed ({exc.strerror or exc}); "
                         "it is retried, nothing is lost")
        self.file_id, self.cause = file_id, exc
        self.handled: dict[str, dict] = {}


def finish(v: Archive, fids: Iterable[str], *, grant_errors: list[str] | None = None,
           after: Callable[[FileRow], str] | None = None,
           stopping: Callable[[], bool] | None = None,
           backup: bool = True) -> dict[str, dict]:
    """Back up the manifest if it changed, then for each protected file: standing grants,
    the after-policy (`after`, returning what became of the original), and `done`.

    Returns, per file handled, the bundles written, the after-policy's outcome and
    whether the file is now done. An OSError from `after` is recorded on its file and
    raised as AfterPolicyFailed (its `handled` says what was finished before it);
    `stopping` is asked between files. The daemon times its own backups (`backup=False`)."""
    if backup:
        backup_manifest(v)
    handled: dict[str, dict] = {}
    fids = list(fids)
    rows = v.db.files_by_id(fids)  # a few reads for the lot, not two a file
    staged = {o.file_id for o in v.db.objects_of(
        fids, states=[s for s in ObjectState if s != ObjectState.UPLOADED])}
    try:
        for fid in fids:
            if stopping is not None and stopping():
                break
            f = rows.get(fid)
            if f is None or f.state not in PROTECTED:
                continue
            res: dict = {"bundles": grant_standing(v, fid, grant_errors)}
            if after is not None:
                try:
                    res["original"] = after(f)
                except OSError as exc:
                    v.db.update_file(fid, error=f"after-policy failed: {exc}")
                    failed = AfterPolicyFailed(fid, exc)
                    failed.handled = handled  # finalized in `finally` below
                    raise failed from exc
            if fid not in staged:  # the staged copies are still needed else
                shutil.rmtree(v.work_dir(fid), ignore_errors=True)
            handled[fid] = res
    finally:  # one transaction for the lot (a crash before it: the steps are redone)
        done = set(finalize_many(v, handled))
        for fid, res in handled.items():
            res["done"] = fid in done
    return handled
