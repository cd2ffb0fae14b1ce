"""What holds state is the owner's alone whatever the umask: state.db and its WAL/SHM
files 0600; the state folder, kept/ and quarantine/ 0700."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from daemonctl import DaemonProc, daemon_config, drop, status, wait_until


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def umask_0() -> None:
    os.umask(0)



def test_state_kept_and_quarantine_are_private_under_umask_0(tmp_path):
    cfg = daemon_config(tmp_path, after="keep")
    inbox = tmp_path / "inbox"
    d = DaemonProc(cfg, tmp_path / "daemon.log", preexec=umask_0).start()
    try:
        drop(inbox, "record.csv", b"a,b\n1,2\n")
        wait_until(lambda: status(cfg)["files"].get("done", 0) == 1, 60, "done", d)
        # A claimed row whose original is gone goes to the quarantine.
        from dispersiond.config import load_config
        from dispersiond.state import StateDB

        state = load_config(cfg).state_path
        db = StateDB(state / "state.db")
        db.add_file(file_id="ab" * 16, name="gone.dcm", size=10, mtime=0.0, scheme="se2",
                    state="claimed", source=str(state / "claimed" / ("ab" * 16)))
        db.close()
    finally:
        d.terminate()
    d = DaemonProc(cfg, tmp_path / "daemon2.log", preexec=umask_0).start()
    try:
        wait_until(lambda: status(cfg)["files"].get("failed", 0) == 1, 60, "quarantined", d)
        db_files = [state / n for n in ("state.db", "state.db-wal", "state.db-shm")]
        assert all(p.exists() for p in db_files)
        assert {p.name: mode(p) for p in db_files} == {p.name: 0o600 for p in db_files}
    finally:
        d.terminate()
    q = state / "quarantine"
    folders = [state, state / "kept", q, q / ("ab" * 16)]
    assert {str(p): mode(p) for p in folders} == {str(p): 0o700 for p in folders}
    assert mode(q / ("ab" * 16) / "REASON") == 0o600
    assert mode(state / "state.db") == 0o600
