"""Helpers for tests that drive dispersiond as a user would: a config file and the CLI."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom.data
import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "dispersiond" / "samples"


def real_files() -> list[Path]:
    """Real-format health records: DICOM shipped by pydicom, plus the FHIR/HL7/CSV samples."""
    dcm = Path(pydicom.data.__file__).parent / "test_files"
    picks = [dcm / "CT_small.dcm", dcm / "MR_small.dcm", dcm / "liver_1frame.dcm"]
    return picks + sorted(p for p in SAMPLES.iterdir() if p.suffix in (".json", ".hl7", ".csv"))


def write_config(tmp: Path, stores: list[dict[str, Any]], public: dict, private: dict,
                 **extra: Any) -> Path:
    """A config in `tmp` with a fresh key file; store dicts are name/type/trust + settings."""
    key = tmp / "master.key"
    if not key.exists():
        key.write_bytes(os.urandom(32))
        key.chmod(0o600)
    cfg = {"version": 1, "state_dir": str(tmp / "state"), "key": {"file": str(key)},
           "trust_levels": ["untrusted", "trusted"], "stores": stores, "public": public,
           "private": private, **extra}
    path = tmp / "dispersiond.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def local_config(tmp: Path, mode: str = "erasure", **extra: Any) -> Path:
    stores = [{"name": f"cloud-{c}", "type": "local", "trust": "untrusted",
               "path": str(tmp / f"cloud-{c}")} for c in "abc"]
    stores.append({"name": "vault", "type": "local", "trust": "trusted", "path": str(tmp / "vault")})
    public = ({"mode": "erasure", "stores": ["cloud-a", "cloud-b", "cloud-c"], "k": 2}
              if mode == "erasure" else {"mode": "replicate", "stores": ["cloud-a", "cloud-b"]})
    return write_config(tmp, stores, public, {"min_trust": "trusted", "stores": ["vault"]}, **extra)


def cli(cfg: Path | None, *args: str, expect: int | None = 0) -> tuple[int, str, str]:
    """Run the CLI in this process; returns (exit code, stdout, stderr)."""
    from dispersiond.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = (["-c", str(cfg)] if cfg else []) + list(args)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
    if expect is not None:
        assert code == expect, f"exit {code} != {expect}\nstdout:\n{out.getvalue()}\nstderr:\n{err.getvalue()}"
    return code, out.getvalue(), err.getvalue()


def cli_json(cfg: Path | None, *args: str, expect: int | None = 0) -> Any:
    return json.loads(cli(cfg, *args, "--json", expect=expect)[1])


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The CLI as a separate process, the way a user runs it."""
    return subprocess.run([sys.executable, "-m", "dispersiond", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=300)


def put(cfg: Path, *paths: Path) -> list[str]:
    """`dispersiond put`, which must take every file to done; returns their ids."""
    res = cli_json(cfg, "put", *map(str, paths))
    assert res["errors"] == [] and {f["state"] for f in res["files"]} == {"done"}
    return [f["file_id"] for f in res["files"]]


def restores(cfg: Path, fid: str, original: Path, out: Path) -> None:
    """`dispersiond restore` must give back the original's bytes."""
    cli(cfg, "restore", fid, "--to", str(out))
    assert out.read_bytes() == original.read_bytes()


def manifest_objects(cfg: Path, store: str = "vault") -> tuple[list[tuple[dict, bytes, str]],
                                                                dict[str, tuple[dict, bytes]]]:
    """The manifest backups on `store` by seq ((document, sealed bytes, name): a
    segmented checkpoint's document with its segments' entries in `files`), and its
    checkpoint segments by digest ((document, sealed bytes))."""
    from dispersiond import manifest
    from dispersiond.archive import open_archive
    from dispersiond.config import load_config

    with open_archive(load_config(cfg)) as v:
        s = v.store(store)
        got = [(manifest.read(v.key, b, n), b, n)
               for b, n in ((s.get_bytes(n), n) for n in s.list(manifest.PREFIX))]
    segments = {manifest.blob_digest(b): (d, b) for d, b, _ in got if d["kind"] == "segment"}
    out = []
    for d, b, n in got:
        if d["kind"] == "segment":
            continue
        if d.get("segments") is not None and all(r["digest"] in segments
                                                 for r in d["segments"]):
            d = manifest.expand(d, [segments[r["digest"]][0] for r in d["segments"]])
        out.append((d, b, n))
    return sorted(out, key=lambda t: t[0]["seq"]), segments


def whole(doc: dict) -> dict:
    """A checkpoint as a build before segments wrote it: its entries inline."""
    return {k: v for k, v in doc.items() if k != "segments"}


def kept_containers(state: Path) -> dict[str, bytes]:
    """The device's own private containers by file id, read from outside the program:
    small files' rows in the state database, then the files under prf/."""
    import sqlite3

    db = sqlite3.connect(state / "state.db")
    try:
        out = {fid: bytes(data) for fid, data in db.execute("SELECT file_id, data FROM containers")}
    finally:
        db.close()
    for p in (state / "prf").iterdir():
        if p.suffix == ".prf":
            out.setdefault(p.stem, p.read_bytes())
    return out
