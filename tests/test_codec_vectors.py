"""The FORMAT.md vectors: code, vectors file and document must agree byte for byte,
and an independent, deliberately naive paper-v1 implementation must interoperate."""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from dispersiond import codec

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads((ROOT / "tests" / "vectors.json").read_text())
FORMAT = (ROOT / "docs" / "FORMAT.md").read_text()
sys.path.insert(0, str(ROOT / "scripts"))
import make_vectors  # noqa: E402


def _doc_hex() -> str:
    """All hex digits of FORMAT.md's code blocks, whitespace removed, for substring checks."""
    blocks = re.findall(r"```\n(.*?)```", FORMAT, flags=re.S)
    return "".join(re.sub(r"[^0-9a-f\n]", " ", b).replace(" ", "").replace("\n", "") for b in blocks)


def _doc_field(name: str) -> str:
    """Hex of one field in a vector block: the field's line and its continuation lines."""
    out = []
    for block in re.findall(r"```\n(.*?)```", FORMAT, flags=re.S):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if line.split()[:1] == [name]:
                out.append(line.split()[1])
                for nxt in lines[i + 1:]:
                    if nxt.startswith("   ") and re.fullmatch(r"\s+[0-9a-f]+", nxt):
                        out[-1] += nxt.strip()
                    else:
                        break
    return out


def test_vectors_file_is_what_the_code_makes():
    fresh = {"paper-v1": make_vectors.paper_v1_vector(), "se2": make_vectors.se2_vector(100),
             "se2-multichunk": make_vectors.se2_vector(2 * 1024 + 100 + 7)}
    assert fresh == VECTORS


@pytest.mark.parametrize("field,doc_name", [("key", "K"), ("iv", "IV"), ("puf", "PUF"),
                                            ("prf_plain", "PRF_plain"), ("prf", "PRF"),
                                            ("h0", "H_0")])
def test_format_doc_paper_v1_vector(field, doc_name):
    assert VECTORS["paper-v1"][field] in _doc_field(doc_name)


@pytest.mark.parametrize("field,doc_name", [("master_key", "MK"), ("key_id", "key_id"),
                                            ("secret", "s"), ("content", "content"),
                                            ("private_words", "P_0"), ("puf", "PUF"),
                                            ("prf", "PRF")])
def test_format_doc_se2_vector(field, doc_name):
    assert VECTORS["se2"][field] in _doc_field(doc_name)


def test_format_doc_names_multichunk_digests():
    v = VECTORS["se2-multichunk"]
    assert v["puf_sha256"] in FORMAT and v["prf_sha256"] in FORMAT
    assert hashlib.sha256(bytes.fromhex(v["puf"])).hexdigest() == v["puf_sha256"]


def test_format_doc_positions():
    assert "positions  6 1" in FORMAT
    assert VECTORS["paper-v1"]["positions"] == [6, 1]
    assert "positions   " + " ".join(map(str, VECTORS["se2"]["positions"])) in FORMAT


@pytest.mark.parametrize("name", ["se2", "se2-multichunk"])
def test_se2_vectors_decode(name):
    v = VECTORS[name]
    out = codec.decode("se2", bytes.fromhex(v["master_key"]), bytes.fromhex(v["puf"]),
                       bytes.fromhex(v["prf"]))
    assert out == bytes.fromhex(v["head"]) + bytes.fromhex(v["content"])


# --- an independent paper-v1, written straight from the pinned spec, one unit at a time ---

def naive_paper_v1_encode(key: bytes, data: bytes, iv: bytes) -> tuple[bytes, bytes]:
    n = len(data) // 32
    ks = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(n))
    puf, prv = b"", b""
    for i in range(n):
        words = [data[32 * i + 4 * k: 32 * i + 4 * k + 4] for k in range(8)]
        j = ks[i] & 7
        h = hashlib.sha256(words[j] + key + i.to_bytes(8, "big")).digest()
        rest = b"".join(w for k, w in enumerate(words) if k != j)
        puf += bytes(a ^ b for a, b in zip(rest, h[:28]))
        prv += words[j]
    padder = padding.PKCS7(128).padder()
    plain = padder.update(prv + data[32 * n:]) + padder.finalize()
    return puf, iv + Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor().update(plain)


def naive_paper_v1_decode(key: bytes, puf: bytes, prf: bytes) -> bytes:
    n = len(puf) // 28
    dec = Cipher(algorithms.AES(key), modes.CBC(prf[:16])).decryptor()
    unpad = padding.PKCS7(128).unpadder()
    plain = unpad.update(dec.update(prf[16:]) + dec.finalize()) + unpad.finalize()
    ks = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(n))
    out = b""
    for i in range(n):
        j = ks[i] & 7
        w = plain[4 * i: 4 * i + 4]
        h = hashlib.sha256(w + key + i.to_bytes(8, "big")).digest()
        rest = bytes(a ^ b for a, b in zip(puf[28 * i: 28 * i + 28], h[:28]))
        words = [rest[4 * k: 4 * k + 4] for k in range(7)]
        words.insert(j, w)
        out += b"".join(words)
    return out + plain[4 * n:]


def test_paper_v1_vector_matches_naive_implementation():
    v = VECTORS["paper-v1"]
    key, iv, data = (bytes.fromhex(v[k]) for k in ("key", "iv", "input"))
    assert naive_paper_v1_encode(key, data, iv) == (bytes.fromhex(v["puf"]), bytes.fromhex(v["prf"]))


@pytest.mark.parametrize("size", [0, 1, 31, 32, 33, 64, 1000, 32 * 1100 + 5])
def test_paper_v1_interop_both_ways(size):
    key, data = os.urandom(16), os.urandom(size)
    puf, prf = codec.encode("paper-v1", key, data)
    assert naive_paper_v1_decode(key, puf, prf) == data
    npuf, nprf = naive_paper_v1_encode(key, data, os.urandom(16))
    assert codec.decode("paper-v1", key, npuf, nprf) == data
    assert npuf == puf  # the PUF is deterministic given the key

