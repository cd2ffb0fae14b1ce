"""The sealed payload's schema (docs/FORMAT.md section 6.3): strict checks, and the
upgrade of version 1 payloads to today's shape.

Every length is bounded by what the listed objects can hold and the erasure block
size must be sane, so a payload made by a buggy or hostile sender cannot make
`open-share` loop over a fragment far larger than what it downloads.
"""
from __future__ import annotations

import re
from datetime import timedelta

from .. import digests
from ..codec import se2
from .errors import BundleFormatError

PAYLOAD_VERSION = 2  # 2 names every digest for its algorithm (digest_alg); 3 is inline.py
MAX_LIFETIME = timedelta(days=7)  # S3 SigV4 and GCS V4 links cannot live longer
MAX_OBJECTS = 256
MAX_LENGTH = 1 << 44  # 16 TiB: no object, file or fragment is larger
MIN_BLOCK, MAX_BLOCK = 1 << 12, 1 << 26  # erasure block per shard per stripe
MAX_URL = 8192
MAX_NAME = 255
LINK_SCHEMES = ("https://", "http://", "file://")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


def _bad(what: str) -> BundleFormatError:
    return BundleFormatError(f"the bundle's contents are malformed ({what})")


def _is_int(x, lo: int = 0, hi: int = MAX_LENGTH) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi


def _is_hex(x, pattern: re.Pattern) -> bool:
    return isinstance(x, str) and pattern.fullmatch(x) is not None


def upgrade(p: dict) -> dict:
    """A version 1 payload (every digest SHA-256, named sha256) in version 2's shape."""
    objs = p.get("objects")
    if not isinstance(objs, list) or not all(isinstance(o, dict) for o in objs):
        raise _bad("objects")
    rest = {k: v for k, v in p.items() if k not in ("sha256", "prf_sha256", "objects")}
    return dict(rest, v=PAYLOAD_VERSION, digest_alg=digests.LEGACY, digest=p.get("sha256"),
                prf_digest=p.get("prf_sha256"),
                objects=[dict({k: v for k, v in o.items() if k != "sha256"},
                              digest=o.get("sha256")) for o in objs])


def shard_length(puf_len: int, k: int, block: int) -> int:
    """Bytes of fragment in each shard (FORMAT.md section 3), in constant time."""
    stripe = k * block
    return (puf_len // stripe) * block + -(-(puf_len % stripe) // k)


def check_payload(p) -> dict:
    """Strict shape check of an (authenticated) payload: defence against a buggy issuer."""
    if isinstance(p, dict) and p.get("v") == 1:
        p = upgrade(p)
    if isinstance(p, dict) and p.get("v") == 3:
        from .inline import check_inline

        return check_inline(p)
    if not isinstance(p, dict) or p.get("v") != PAYLOAD_VERSION:
        raise _bad("version")
    if not isinstance(p.get("digest_alg"), str) or p["digest_alg"] not in digests.ALGORITHMS:
        raise _bad("digest algorithm")
    if p.get("scheme") != "se2":
        raise _bad(f"scheme {str(p.get('scheme'))[:40]!r}")
    for k in ("size", "puf_len", "prf_len", "created", "expires"):
        if not _is_int(p.get(k)):
            raise _bad(k)
    if p["puf_len"] < se2.PUF_HEADER_LEN or p["prf_len"] < se2.PRF_HEADER_LEN:
        raise _bad("fragment lengths")
    if not 0 < p["expires"] - p["created"] <= MAX_LIFETIME.total_seconds():
        raise _bad("expiry")
    if not _is_hex(p.get("file"), _HEX32):
        raise _bad("file id")
    for k in ("digest", "prf_digest", "share_key"):
        if not _is_hex(p.get(k), _HEX64):
            raise _bad(k)
    if "name" in p and not (isinstance(p["name"], str) and 0 < len(p["name"].encode(
            errors="replace")) <= MAX_NAME and not BAD_NAME.search(p["name"])
            and p["name"] not in (".", "..")):
        raise _bad("name")
    pub = p.get("public")
    if not isinstance(pub, dict) or pub.get("mode") not in ("replicate", "erasure"):
        raise _bad("public mode")
    objs = p.get("objects")
    if not isinstance(objs, list) or not objs or len(objs) > MAX_OBJECTS:
        raise _bad("objects")
    if pub["mode"] == "erasure":
        k, n, block = pub.get("k"), pub.get("n"), pub.get("block")
        if not (_is_int(k, 1) and _is_int(n, 1) and k <= n <= MAX_OBJECTS):
            raise _bad("erasure parameters")
        if not _is_int(block, MIN_BLOCK, MAX_BLOCK):
            raise _bad(f"erasure block size must be {MIN_BLOCK}..{MAX_BLOCK} bytes")
        want = shard_length(p["puf_len"], k, block)
    else:
        want = p["puf_len"]
    shards = set()
    for o in objs:
        if not isinstance(o, dict) or not isinstance(o.get("url"), str):
            raise _bad("object link")
        if len(o["url"]) > MAX_URL or not o["url"].startswith(LINK_SCHEMES) or "\0" in o["url"]:
            raise _bad("object link")
        if not all(_is_int(o.get(x)) for x in ("offset", "length", "size")):
            raise _bad("object sizes")
        if o["offset"] + o["length"] > o["size"]:
            raise _bad("object range")
        if o["length"] != want:
            raise _bad("object length does not fit the fragment length")
        if not _is_hex(o.get("digest"), _HEX64):
            raise _bad("object digest")
        if "shard" not in o:
            raise _bad("shard number")
        shard = o["shard"]
        if pub["mode"] == "erasure":
            if not (_is_int(shard) and shard < pub["n"]) or shard in shards:
                raise _bad("shard number")
            shards.add(shard)
        elif shard is not None:
            raise _bad("shard number")
    return p
