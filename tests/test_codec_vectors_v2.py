"""se2 version 2 vectors: the code, tests/vectors-v2.json and docs/FORMAT.md agree."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from dispersiond import codec

ROOT = Path(__file__).resolve().parent.parent
V2 = json.loads((ROOT / "tests" / "vectors-v2.json").read_text())
FORMAT = (ROOT / "docs" / "FORMAT.md").read_text()
sys.path.insert(0, str(ROOT / "scripts"))
import make_vectors  # noqa: E402


def test_uncompressed_vectors_are_what_the_code_makes():
    for name in ("se2-v2", "se2-v2-multichunk"):
        assert make_vectors.v2_vectors()[name] == V2[name]


@pytest.mark.parametrize("name", sorted(V2))
def test_v2_vectors_decode_and_are_named_in_the_document(name):
    v = V2[name]
    out = codec.decode("se2", bytes.fromhex(v["master_key"]), bytes.fromhex(v["puf"]),
                       bytes.fromhex(v["prf"]))
    assert out == bytes.fromhex(v["head"]) + bytes.fromhex(v["original"])
    assert v["puf_sha256"] in FORMAT and v["prf_sha256"] in FORMAT
    assert bytes.fromhex(v["puf"])[4] == 2 and bytes.fromhex(v["prf"])[4] == 2


def test_document_shows_the_one_chunk_pair_in_full():
    flat = "".join(FORMAT.split())
    assert V2["se2-v2"]["puf"] in flat and V2["se2-v2"]["prf"] in flat
    assert V2["se2-v2"]["pair"] in flat
