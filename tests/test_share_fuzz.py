"""Fuzzing the bundle parser: valid bundles, mutated structurally and at random.

Payload mutations are re-sealed to the recipient and re-signed by the device's key, so
they get past the cryptography and reach the payload checks. Every input must end in
the project's own error with a one-line message, in bounded time, never with wrong
bytes, and never with a file written anywhere but the target.

DISPERSIOND_FUZZ_EXAMPLES=20000 runs a longer campaign (default 300 per test).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispersiond.config import load_config
from dispersiond.identity import load_identity
from dispersiond.share import ShareError, bundle, device, open_bundle
from dispersiond.state import dumps
from dispersiond.archive import open_archive
from dsp import local_config, real_files
from test_sharing import keygen, put, share_cli
from test_share_sender import sealed_plain

EXAMPLES = int(os.environ.get("DISPERSIOND_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=5000, derandomize="CI" in os.environ,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
ORIGINAL = real_files()[-1]  # a small CSV
STATS: dict[str, int] = {}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One device, one doctor, two bundles (replicated, erasure-coded) and a sandbox."""
    root = tmp_path_factory.mktemp("fuzz")
    key = root / "doctor" / "dr-lee.key"
    pub = keygen(key)
    made = {}
    for mode in ("replicate", "erasure"):
        sub = root / mode
        sub.mkdir()
        cfg = local_config(sub, mode, recipients=[{"name": "dr-lee", "role": "doctor",
                                                   "public_key": pub}])
        fid = put(cfg, ORIGINAL)
        b = Path(share_cli(cfg, fid, "dr-lee", sub / "b.dspshare", "--with-name")["path"])
        with open_archive(load_config(cfg)) as v:
            signer = device.load(v.root, v.key)
        made[mode] = (b.read_bytes(), signer)
    ident = load_identity(key)
    sandbox = root / "sandbox"
    (sandbox / "out").mkdir(parents=True)
    yield {"ident": ident, "bundles": made, "sandbox": sandbox, "root": root}
    if STATS:
        print("\nfuzz outcomes:", dict(sorted(STATS.items())))


def _tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def attempt(world, raw: bytes, to_folder: bool) -> None:
    """Open one candidate bundle and hold it to the rules above."""
    sandbox: Path = world["sandbox"]
    path = sandbox / "candidate.dspshare"
    path.write_bytes(raw)
    outdir = sandbox / "out"
    target = outdir if to_folder else outdir / "got.csv"
    before = _tree(world["root"])
    senders = {s.public_bytes: mode for mode, (_, s) in world["bundles"].items()}
    t0 = time.monotonic()
    try:
        got = open_bundle(path, world["ident"], target, senders=senders, timeout=5)
    except ShareError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg, repr(msg)
        STATS[type(exc).__name__] = STATS.get(type(exc).__name__, 0) + 1
        new = _tree(world["root"]) - before
        assert new == set(), new
    else:
        STATS["opened"] = STATS.get("opened", 0) + 1
        assert got.path.parent == outdir
        assert hashlib.sha256(got.path.read_bytes()).hexdigest() == \
            hashlib.sha256(ORIGINAL.read_bytes()).hexdigest()
        assert _tree(world["root"]) - before == {got.path}
        got.path.unlink()
    finally:
        path.unlink()
    assert time.monotonic() - t0 < 5


def sections(raw: bytes) -> list[bytes]:
    n = bundle.HEADER.unpack(raw[:bundle.HEADER_LEN])[-1]
    return [raw[:bundle.HEADER_LEN], raw[bundle.HEADER_LEN:bundle.HEADER_LEN + n],
            raw[bundle.HEADER_LEN + n:]]


@st.composite
def byte_mutations(draw, raw: bytes) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "splice", "swap", "random",
                                 "header-field"]))
    if kind == "flip":
        i = draw(st.integers(0, len(raw) - 1))
        return raw[:i] + bytes([raw[i] ^ (1 << draw(st.integers(0, 7)))]) + raw[i + 1:]
    if kind == "truncate":
        return raw[:draw(st.integers(0, len(raw) - 1))]
    if kind == "extend":
        return raw + draw(st.binary(min_size=1, max_size=64))
    if kind == "splice":
        i = draw(st.integers(0, len(raw)))
        j = draw(st.integers(i, min(len(raw), i + 64)))
        return raw[:i] + draw(st.binary(max_size=64)) + raw[j:]
    if kind == "swap":
        parts = sections(raw)
        order = draw(st.permutations(range(3)))
        return b"".join(parts[i] for i in order)
    if kind == "random":
        return draw(st.binary(max_size=512))
    # header fields: version, suite, flags, recipient id, sealed length
    head = bytearray(raw[:bundle.HEADER_LEN])
    field = draw(st.sampled_from([(4, 1), (5, 1), (6, 2), (8, 8), (48, 4)]))
    head[field[0]:sum(field)] = draw(st.binary(min_size=field[1], max_size=field[1]))
    return bytes(head) + raw[bundle.HEADER_LEN:]


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                   st.floats(allow_nan=True), st.text(max_size=24),
                   st.sampled_from(["", "0" * 64, "f" * 32, "se2", "erasure", "replicate",
                                    "sha256", "blake3", "../x", "a\0b", "file:///etc/passwd",
                                    "http://127.0.0.1:9/x", "https://[::1", 2**40, 0, 1, -1]),
                   st.lists(st.integers(0, 9), max_size=3),
                   st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


@st.composite
def payload_mutations(draw, p: dict) -> object:
    q = copy.deepcopy(p)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["top", "public", "object", "whole"]))
        if where == "whole":
            return draw(st.one_of(VALUES, st.just([q]), st.just({"v": 2})))
        if where == "object":
            if not isinstance(q.get("objects"), list) or not q["objects"]:
                continue
            i = draw(st.integers(0, len(q["objects"]) - 1))
            target = q["objects"][i]
            if not isinstance(target, dict):
                continue
            op = draw(st.sampled_from(["set", "delete", "dup", "drop", "nudge"]))
            if op == "dup":
                q["objects"].append(copy.deepcopy(target))
                continue
            if op == "drop":
                q["objects"].pop(i)
                continue
        elif where == "public":
            target = q.get("public")
            if not isinstance(target, dict):
                continue
            op = draw(st.sampled_from(["set", "delete", "nudge"]))
        else:
            target = q
            op = draw(st.sampled_from(["set", "delete", "nudge", "add"]))
        keys = sorted(target)
        if op == "add":
            target[draw(st.text(max_size=8))] = draw(VALUES)
        elif not keys:
            continue
        else:
            k = draw(st.sampled_from(keys))
            if op == "delete":
                del target[k]
            elif op == "nudge" and isinstance(target[k], int) and not isinstance(target[k], bool):
                target[k] += draw(st.sampled_from([-2**40, -65536, -1, 1, 7, 65536, 10**11]))
            else:
                target[k] = draw(VALUES)
    return q


@given(data=st.data())
@FUZZ
def test_mutated_bundle_bytes_fail_cleanly(world, data) -> None:
    mode = data.draw(st.sampled_from(["replicate", "erasure"]))
    raw, _ = world["bundles"][mode]
    attempt(world, data.draw(byte_mutations(raw)), data.draw(st.booleans()))


@given(data=st.data())
@FUZZ
def test_mutated_payloads_resigned_by_the_device_fail_cleanly(world, data) -> None:
    mode = data.draw(st.sampled_from(["replicate", "erasure"]))
    raw, signer = world["bundles"][mode]
    ident = world["ident"]
    _, plain = sealed_plain_bytes(world, raw)
    p = json.loads(plain[96:])
    q = data.draw(payload_mutations(p))
    try:
        body = dumps(q).encode()
    except (TypeError, ValueError):
        body = json.dumps(q, allow_nan=True).encode()
    rest = rest_of_bytes(raw)
    if data.draw(st.integers(0, 9)) == 0:
        rest = data.draw(byte_mutations(rest)) if rest else rest
    candidate = bundle.seal_signed(body, ident.public_bytes, signer) + rest
    attempt(world, candidate, data.draw(st.booleans()))


def sealed_plain_bytes(world, raw: bytes) -> tuple[bytes, bytes]:
    path = world["sandbox"].parent / "plain.dspshare"
    path.write_bytes(raw)
    return sealed_plain(path, world["ident"])


def rest_of_bytes(raw: bytes) -> bytes:
    return raw[bundle.HEADER_LEN + bundle.HEADER.unpack(raw[:bundle.HEADER_LEN])[-1]:]


def test_the_fuzz_harness_can_fail(world) -> None:
    """The harness rejects what the rules forbid: a wrong-bytes 'success' is caught."""
    raw, signer = world["bundles"]["replicate"]
    attempt(world, raw, False)  # the intact bundle opens to the original
    with pytest.raises(AssertionError):
        global ORIGINAL
        saved, ORIGINAL = ORIGINAL, real_files()[-2]
        try:
            attempt(world, raw, False)
        finally:
            ORIGINAL = saved
