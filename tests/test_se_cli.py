"""`dispersiond se encode|decode` as a user runs it: round trips and clear errors."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from dsp import real_files, run_cli


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for scheme, n in (("se2", 32), ("paper-v1", 16)):
        p = tmp_path / f"{scheme}.key"
        p.write_bytes(os.urandom(n))
        out[scheme] = p
    return out


@pytest.mark.parametrize("scheme", ["se2", "paper-v1"])
def test_round_trip_of_a_real_file(tmp_path, keys, scheme):
    src = real_files()[0]
    puf, prf, back = tmp_path / "x.puf", tmp_path / "x.prf", tmp_path / "back"
    r = run_cli("se", "encode", "--scheme", scheme, "--key-file", str(keys[scheme]),
                "--in", str(src), "--puf", str(puf), "--prf", str(prf))
    assert r.returncode == 0, r.stderr
    assert puf.stat().st_size < src.stat().st_size and prf.stat().st_size < src.stat().st_size / 4
    r = run_cli("se", "decode", "--scheme", scheme, "--key-file", str(keys[scheme]),
                "--puf", str(puf), "--prf", str(prf), "--out", str(back))
    assert r.returncode == 0, r.stderr
    assert back.read_bytes() == src.read_bytes()


def test_clear_errors_never_tracebacks(tmp_path, keys):
    src = real_files()[3]
    puf, prf, out = tmp_path / "x.puf", tmp_path / "x.prf", tmp_path / "out"
    base = ["se", "encode", "--scheme", "se2", "--puf", str(puf), "--prf", str(prf)]

    r = run_cli(*base, "--key-file", str(keys["se2"]), "--in", str(tmp_path / "missing"))
    assert r.returncode == 2 and "cannot open input file" in r.stderr and "missing" in r.stderr
    assert not puf.exists() and not prf.exists()

    r = run_cli(*base, "--key-file", str(keys["paper-v1"]), "--in", str(src))
    assert r.returncode == 2 and "32-byte" in r.stderr and "16 bytes" in r.stderr

    assert run_cli(*base, "--key-file", str(keys["se2"]), "--in", str(src)).returncode == 0
    data = bytearray(prf.read_bytes())
    data[len(data) // 2] ^= 4
    prf.write_bytes(bytes(data))
    r = run_cli("se", "decode", "--scheme", "se2", "--key-file", str(keys["se2"]),
                "--puf", str(puf), "--prf", str(prf), "--out", str(out))
    assert r.returncode == 2 and "failed authentication" in r.stderr
    assert not out.exists() and "Traceback" not in r.stderr  # nothing unverified left behind

    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    r = run_cli("se", "decode", "--scheme", "se2", "--key-file", str(other),
                "--puf", str(puf), "--prf", str(prf), "--out", str(out))
    assert r.returncode == 2 and "different master key" in r.stderr
