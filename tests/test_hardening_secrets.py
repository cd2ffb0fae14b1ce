"""A process holding the master key: non-dumpable, no core files, no passphrase left in
its environment; the passphrase can come from a file or a systemd credential instead."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import yaml
from daemonctl import DaemonProc, daemon_config, drop, status, wait_until
from dsp import ROOT, local_config, run_cli

PHRASE = "correct horse battery staple"
SALT = "5a" * 16


def passphrase_config(tmp: Path, daemon: bool = False) -> Path:
    cfg = daemon_config(tmp) if daemon else local_config(tmp)
    raw = yaml.safe_load(cfg.read_text())
    raw["key"] = {"passphrase_env": "DISPERSIOND_PASSPHRASE", "salt": SALT}
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


CHILD = """
import ctypes, json, os, resource, sys
from dispersiond.config import load_config
from dispersiond.keys import key_id, load_master_key
libc = ctypes.CDLL(None)
before = {"dumpable": libc.prctl(3, 0, 0, 0, 0), "env": "DISPERSIOND_PASSPHRASE" in os.environ,
          "core": resource.getrlimit(resource.RLIMIT_CORE)[0] != 0}
key = load_master_key(load_config(sys.argv[1]))
again = load_master_key(load_config(sys.argv[1]))  # a second open in the same process
print(json.dumps({"before": before, "dumpable": libc.prctl(3, 0, 0, 0, 0),
                  "env": "DISPERSIOND_PASSPHRASE" in os.environ,
                  "core": resource.getrlimit(resource.RLIMIT_CORE)[0],
                  "key_id": key_id(key), "same": key == again}))
"""


def cores_allowed() -> None:
    """preexec_fn: core files on (soft limit up to the hard one), as on a stock system,
    so that only dispersiond itself can turn them off."""
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))


def child(cfg: Path, env: dict[str, str]) -> dict:
    base = {k: v for k, v in os.environ.items()
            if k not in ("DISPERSIOND_PASSPHRASE", "DISPERSIOND_PASSPHRASE_FILE",
                         "CREDENTIALS_DIRECTORY")}
    res = subprocess.run([sys.executable, "-c", CHILD, str(cfg)], capture_output=True,
                         text=True, timeout=120, preexec_fn=cores_allowed,  # noqa: PLW1509
                         env={**base, "PYTHONPATH": str(ROOT), **env})
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_after_key_derivation_the_process_is_non_dumpable_and_the_passphrase_gone(tmp_path):
    cfg = passphrase_config(tmp_path)
    out = child(cfg, {"DISPERSIOND_PASSPHRASE": PHRASE})
    assert out["before"] == {"dumpable": 1, "env": True, "core": True}
    assert out["dumpable"] == 0 and out["core"] == 0
    assert out["env"] is False and out["same"] is True


def test_a_key_file_process_is_non_dumpable_too(tmp_path):
    out = child(local_config(tmp_path), {})
    assert out["before"]["core"] and out["dumpable"] == 0 and out["core"] == 0


def test_the_passphrase_from_a_file_or_a_systemd_credential(tmp_path):
    cfg = passphrase_config(tmp_path)
    by_env = child(cfg, {"DISPERSIOND_PASSPHRASE": PHRASE})["key_id"]
    phrase_file = tmp_path / "phrase"
    phrase_file.write_text(PHRASE + "\n")
    phrase_file.chmod(0o600)
    assert child(cfg, {"DISPERSIOND_PASSPHRASE_FILE": str(phrase_file)})["key_id"] == by_env
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "passphrase").write_text(PHRASE)
    assert child(cfg, {"CREDENTIALS_DIRECTORY": str(creds)})["key_id"] == by_env
    # A file named but unreadable: one clear line, no traceback.
    res = run_cli("-c", str(cfg), "ls", env={"DISPERSIOND_PASSPHRASE_FILE": str(tmp_path / "no")})
    assert res.returncode == 2 and "cannot read the passphrase file" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1



def test_the_daemon_runs_on_a_credential_file_without_core_dumps(tmp_path):
    cfg = passphrase_config(tmp_path, daemon=True)
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "passphrase").write_text(PHRASE)
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    d = DaemonProc(cfg, tmp_path / "daemon.log", env=env, preexec=cores_allowed).start()
    try:
        drop(tmp_path / "inbox", "record.csv", b"a,b\n1,2\n")
        wait_until(lambda: status(cfg)["files"].get("done", 0) == 1, 60, "done", d)
        limits = Path(f"/proc/{d.proc.pid}/limits").read_text()
        core = next(line for line in limits.splitlines() if line.startswith("Max core file size"))
        assert core.split()[4] == "0", core
    finally:
        d.terminate()
    res = run_cli("-c", str(cfg), "ls", env=env)
    assert res.returncode == 0 and "record.csv" in res.stdout, res.stderr
