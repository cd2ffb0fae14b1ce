"""Print the test vectors of docs/FORMAT.md as JSON (tests/vectors.json holds the output).

Every value is fixed, so running this again must give the same bytes; the tests
check the codec against the file and the file against the document.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from dispersiond import codec
from dispersiond.codec import se2


def pattern(n: int, seed: int) -> bytes:
    return bytes((seed + 37 * i + (i * i >> 3)) & 0xFF for i in range(n))


def paper_v1_vector() -> dict:
    key = bytes(range(16))
    iv = bytes(range(0xA0, 0xB0))
    data = b"PID|1||12345^^^HOSP||DOE^JANE||19700101|F|||1 MAIN ST^^TOWN|||555-0100"
    enc = codec.paper_v1.PaperV1Encoder(key, len(data), iv=iv)
    n = len(data) // 32
    enc.work[: 32 * n] = np.frombuffer(data[: 32 * n], dtype=np.uint8)
    puf, prf_body = enc.encode_chunk(n) if n else (memoryview(b""), b"")
    puf = bytes(puf)
    prf = iv + prf_body + enc.finish(data[32 * n:])
    ks = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(n))
    pos = [b & 7 for b in ks]
    words = [data[32 * i + 4 * pos[i]: 32 * i + 4 * pos[i] + 4] for i in range(n)]
    return {
        "scheme": "paper-v1", "key": key.hex(), "iv": iv.hex(), "input": data.hex(),
        "positions": pos, "puf": puf.hex(),
        "prf_plain": (b"".join(words) + data[32 * n:]).hex(), "prf": prf.hex(),
        "h0": hashlib.sha256(words[0] + key + (0).to_bytes(8, "big")).hexdigest(),
    }


def se2_vector(content_len: int) -> dict:
    mk = bytes(range(0x40, 0x60))
    secret = bytes(range(0x80, 0xA0))
    wrap_nonce = bytes(range(0xC0, 0xCC))
    file_id = bytes(range(0xE0, 0xF0))
    head = b"DICM-HEAD"
    content = pattern(content_len, 5)
    enc = se2.Se2Encoder(mk, len(content), head, file_id=file_id, secret=secret,
                         wrap_nonce=wrap_nonce, chunk_log2=10)
    puf, prf = bytearray(enc.puf_header), bytearray(enc.prf_header)
    off = 0
    for n in enc.chunk_units():
        enc.work[: 32 * n] = np.frombuffer(content[off: off + 32 * n], dtype=np.uint8)
        p, s = enc.encode_chunk(n)
        puf += bytes(p)
        prf += s
        off += 32 * n
    prf += enc.finish(content[off:])
    n = len(content) // 32
    ks = Cipher(algorithms.AES(se2._hkdf(secret, b"dispersiond se2 v1 positions")),
                modes.CTR(bytes(16))).encryptor().update(bytes(n))
    pos = [b & 7 for b in ks]
    words = b"".join(content[32 * i + 4 * pos[i]: 32 * i + 4 * pos[i] + 4] for i in range(n))
    return {
        "scheme": "se2", "master_key": mk.hex(), "secret": secret.hex(),
        "wrap_nonce": wrap_nonce.hex(), "file_id": file_id.hex(), "chunk_log2": 10,
        "head": head.hex(), "content": content.hex(), "key_id": se2.key_id(mk).hex(),
        "positions": pos, "private_words": words.hex(), "tail": content[32 * n:].hex(),
        "puf": bytes(puf).hex(), "prf": bytes(prf).hex(),
        "puf_sha256": hashlib.sha256(puf).hexdigest(), "prf_sha256": hashlib.sha256(prf).hexdigest(),
    }

def se2_v2_vector(content_len: int, compressed: bool = False) -> dict:
    """A version 2 pair (same keys as above). Compressed: the content is a zstd frame of
    the original, made here and stored in the vector (zstd builds may differ in bytes)."""
    import blake3
    import zstandard

    mk = bytes(range(0x40, 0x60))
    secret = bytes(range(0x80, 0xA0))
    wrap_nonce = bytes(range(0xC0, 0xCC))
    file_id = bytes(range(0xE0, 0xF0))
    head = b"DICM-HEAD"
    original = pattern(content_len, 5) if not compressed else b"OBX|1|NM|8480-6||142|mm[Hg]\r" * 40
    content = zstandard.ZstdCompressor(level=3).compress(original) if compressed else original
    meta = se2.Meta(file_id, 1 if compressed else 0, 1 if compressed else 0, len(original))
    enc = se2.Se2Encoder(mk, len(content), head, secret=secret, wrap_nonce=wrap_nonce,
                         chunk_log2=10, meta=meta)
    puf, prf = bytearray(enc.puf_header), bytearray(enc.prf_header)
    off = 0
    for n in enc.chunk_units():
        p, s = enc.encode_chunk(n, src=content[off: off + 32 * n])
        puf += bytes(p)
        prf += s
        off += 32 * n
    digest = blake3.blake3(head + original).digest() if compressed else b""
    prf += enc.finish(content[off:], digest)
    return {"scheme": "se2", "version": 2, "master_key": mk.hex(), "secret": secret.hex(),
            "wrap_nonce": wrap_nonce.hex(), "file_id": file_id.hex(), "chunk_log2": 10,
            "head": head.hex(), "original": original.hex(), "content": content.hex(),
            "pair": se2.pair_tag(secret).hex(), "puf": bytes(puf).hex(), "prf": bytes(prf).hex(),
            "puf_sha256": hashlib.sha256(puf).hexdigest(),
            "prf_sha256": hashlib.sha256(prf).hexdigest()}


def v2_vectors() -> dict:
    return {"se2-v2": se2_v2_vector(100), "se2-v2-multichunk": se2_v2_vector(2 * 1024 + 107),
            "se2-v2-zstd": se2_v2_vector(0, compressed=True)}



if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["v2"]:  # tests/vectors-v2.json
        print(json.dumps(v2_vectors(), indent=1))
        raise SystemExit
    # "se2": one chunk, small enough to print in full; "se2-multichunk": 3 chunks + tail.
    print(json.dumps({"paper-v1": paper_v1_vector(), "se2": se2_vector(100),
                      "se2-multichunk": se2_vector(2 * 1024 + 100 + 7)}, indent=1))
