"""Fuzzing the manifest backup parser: structured mutations of a valid backup, re-sealed
under the test key so they reach the document checks, random sealed JSON and random
bytes. Every input is either a well-formed document or the project's one-line error.

Bounded in CI; DISPERSIOND_FUZZ_EXAMPLES=N runs N examples per test.
"""
from __future__ import annotations

import copy
import os
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispersiond import manifest
from dispersiond.errors import DispersiondError
from dispersiond.manifest_doc import FILE_ID

KEY = bytes(range(32))
EXAMPLES = int(os.environ.get("DISPERSIOND_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def _entry(i: int) -> dict:
    return {"file_id": f"{i:032x}", "name": f"scan-{i}.dcm", "size": 1000 + i,
            "digest": "ab" * 32, "digest_alg": "blake3", "mtime": 1.5e9, "scheme": "se2",
            "head_len": 0, "chunk_log2": 16, "puf_len": 900, "prf_len": 140,
            "prf_digest": "cd" * 32, "key_id": "ef" * 8, "public_mode": "erasure", "k": 2,
            "n": 3, "block": 262144, "created": 1.7e9,
            "objects": [{"role": r, "shard": s, "store": st_, "name": f"{i:02x}" * 16,
                         "offset": 0, "length": 500, "object_size": 512, "digest": "12" * 32}
                        for r, s, st_ in (("public", 0, "cloud-a"), ("public", 1, "cloud-b"),
                                          ("private", None, "vault"))]}


VALID = {"format": 4, "kind": "delta", "seq": 7, "base": 5,
         "prev": {"seq": 6, "digest": "9" * 64}, "created": 1.7e9,
         "audit_head": "2:" + "a" * 64,
         "audit": [{"seq": 2, "ts": 1.7e9, "event": "share", "file_id": "1" * 32,
                    "detail": "{}", "prev": "0" * 64, "hash": "a" * 64}],
         "files": [_entry(1), _entry(2)], "removed": ["3" * 32], "sender_key": "5" * 64}

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=False) | st.text(string.printable + "/\\\0é", max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


def _paths(doc, at=()) -> list[tuple]:
    out = [at]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, at + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, at + (i,))
    return out


@st.composite
def mutated(draw) -> dict:
    return _mutate(draw, VALID)


def _holds(blob: bytes) -> None:
    """Either a checked document that loads, or a one-line project error."""
    try:
        doc = manifest.read(KEY, blob, "fuzz/backup")
    except DispersiondError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    state = manifest.replay([doc])
    manifest.rows_of(state)
    for e in state.files.values():
        assert FILE_ID.fullmatch(e["file_id"])
        assert e["name"] not in (".", "..") and not set("/\\\0") & set(e["name"])


def test_the_valid_document_loads() -> None:
    assert manifest.read(KEY, manifest.seal(KEY, VALID), "x")["seq"] == 7


@FUZZ
@given(mutated())
def test_mutated_backups_end_in_a_document_or_one_line(doc: dict) -> None:
    _holds(manifest.seal(KEY, doc))


@FUZZ
@given(JSON)
def test_any_sealed_json_ends_in_a_document_or_one_line(doc) -> None:
    _holds(manifest.seal(KEY, doc))


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_end_in_one_line(blob: bytes) -> None:
    _holds(blob)
    _holds(manifest.seal(KEY, VALID)[:25] + blob)  # our header, random ciphertext


@FUZZ
@given(st.binary(max_size=200))
def test_sealed_bytes_that_are_not_json_end_in_one_line(body: bytes) -> None:
    import zlib

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from dispersiond.codec import se2
    from dispersiond.keys import subkey

    header = manifest.MAGIC + bytes([manifest.VERSION]) + se2.key_id(KEY)
    nonce = os.urandom(12)
    for plain in (body, zlib.compress(body)):
        _holds(header + nonce + AESGCM(subkey(KEY, "manifest")).encrypt(nonce, plain, header))


# --- segmented checkpoints (format 6): the root and its segments

ROOT_DOC = {"format": 6, "kind": "checkpoint", "seq": 9, "base": 9,
            "prev": {"seq": 8, "digest": "9" * 64}, "created": 1.7e9,
            "audit_head": None, "audit": [], "files": [], "removed": [],
            "segments": [{"index": 0, "name": "manifest/" + "a" * 32, "digest": "b" * 64,
                          "files": 2}]}
SEGMENT_DOC = {"format": 6, "kind": "segment", "seq": 9, "index": 0,
               "files": [_entry(1), _entry(2)]}


def _mutate(draw, valid: dict) -> dict:
    doc = copy.deepcopy(valid)
    paths = _paths(valid)[1:]
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        parent = doc
        try:
            for p in path[:-1]:
                parent = parent[p]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(JSON)
        except (KeyError, IndexError, TypeError):
            continue
    return doc


def _expands(root: object, segment: object) -> None:
    """Open both; then the root with the segment expands, or one line says why not."""
    try:
        r = manifest.read(KEY, manifest.seal(KEY, root), "fuzz/root")
        s = manifest.read(KEY, manifest.seal(KEY, segment), "fuzz/segment")
        if r["kind"] != "checkpoint" or s["kind"] != "segment" or not r.get("segments"):
            return
        doc = manifest.expand(r, [s] * len(r["segments"]), "fuzz/root")
    except DispersiondError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    state = manifest.replay([doc])
    manifest.rows_of(state)
    assert all(FILE_ID.fullmatch(e["file_id"]) for e in state.files.values())


def test_the_valid_root_and_segment_expand() -> None:
    doc = manifest.expand(manifest.read(KEY, manifest.seal(KEY, ROOT_DOC), "r"),
                          [manifest.read(KEY, manifest.seal(KEY, SEGMENT_DOC), "s")])
    assert len(manifest.replay([doc]).files) == 2


@FUZZ
@given(st.data())
def test_mutated_roots_and_segments_end_in_a_document_or_one_line(data) -> None:
    _expands(_mutate(data.draw, ROOT_DOC), SEGMENT_DOC)
    _expands(ROOT_DOC, _mutate(data.draw, SEGMENT_DOC))


@FUZZ
@given(JSON, JSON)
def test_any_sealed_json_as_root_or_segment_ends_in_one_line(a, b) -> None:
    _expands(a, SEGMENT_DOC)
    _expands(ROOT_DOC, b)
    _expands({**ROOT_DOC, "segments": a}, SEGMENT_DOC)
    _expands(ROOT_DOC, {**SEGMENT_DOC, "files": b})


ENTRY = st.builds(_entry, st.integers(0, 2**48))


@FUZZ
@given(st.lists(ENTRY, max_size=5, unique_by=lambda e: e["file_id"]), st.integers(0, 2**20),
       st.integers(1, 2**40))
def test_segments_and_roots_round_trip(files, index, seq) -> None:
    seg = manifest.segment(seq, index, files)
    blob = manifest.seal(KEY, seg)
    assert manifest.read(KEY, blob, "s") == seg
    ref = {"index": index, "name": manifest.segment_name(blob),
           "digest": manifest.blob_digest(blob), "files": len(files)}
    root = {**ROOT_DOC, "seq": seq + 1, "base": seq + 1, "prev": None, "segments": [ref]}
    assert manifest.read(KEY, manifest.seal(KEY, root), "r") == root
    assert manifest.expand(root, [seg])["files"] == files
