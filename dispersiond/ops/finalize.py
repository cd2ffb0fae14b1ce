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
           after: Callable[[list[FileRow]], tuple[dict[str, str], list[tuple[FileRow, OSError]]]]
           | None = None,
           stopping: Callable[[], bool] | None = None,
           backup: bool = True) -> dict[str, dict]:
    """Back up the manifest if it changed, then for the protected files among `fids`:
    standing grants (each file), the after-policy (`after`, for the batch: what became
    of each original, and the files it failed for), and `done` (one transaction).

    Returns, per file handled, the bundles written, the after-policy's outcome and
    whether the file is now done. A file the after-policy failed for is not done: its
    error is recorded on it and the first such failure is raised as AfterPolicyFailed
    (its `handled` says what was finished); the others are finished all the same.
    `stopping` is asked between files. The daemon times its own backups (`backup=False`)."""
    if backup:
        backup_manifest(v)
    handled: dict[str, dict] = {}
    fids = list(fids)
    rows = v.db.files_by_id(fids)  # a few reads for the lot, not two a file
    staged = {o.file_id for o in v.db.objects_of(
        fids, states=[s for s in ObjectState if s != ObjectState.UPLOADED])}
    failure: AfterPolicyFailed | None = None
    try:
        granted: dict[str, dict] = {}
        todo: list[FileRow] = []
        for fid in fids:
            if stopping is not None and stopping():
                break
            f = rows.get(fid)
            if f is None or f.state not in PROTECTED:
                continue
            granted[fid] = {"bundles": grant_standing(v, fid, grant_errors)}
            todo.append(f)
        if after is None:
            handled.update(granted)
        elif todo:  # only files whose after-policy ran become done
            outcomes, failed = after(todo)
            for fid, outcome in outcomes.items():
                handled[fid] = {**granted[fid], "original": outcome}
            for f, exc in failed:
                v.db.update_file(f.file_id, error=f"after-policy failed: {exc}")
                failure = failure or AfterPolicyFailed(f.file_id, exc)
        present = v.staged_dirs() if handled else set()
        for fid in handled:
            if fid not in staged and fid in present:  # the staged copies are needed else
                shutil.rmtree(v.work_dir(fid), ignore_errors=True)
    finally:  # one transaction for the lot (a crash before it: the steps are redone)
        done = set(finalize_many(v, handled))
        for fid, res in handled.items():
            res["done"] = fid in done
    if failure is not None:
        failure.handled = handled
        raise failure
    return handled
