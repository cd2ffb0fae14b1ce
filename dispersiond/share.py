"""Sharing one file with one recipient (paper section 4.2): share bundles.

Issuer side (needs the vault): `create_bundle` re-wraps the file's private container
under a fresh random share key, seals that key and the file's description (sizes,
erasure parameters, a time-limited read link, length and SHA-256 for every public
object, the original's SHA-256) to the recipient's X25519 key, and writes one bundle
file. `apply_grants` does the same for the config's standing grants.

Recipient side (needs only the bundle and the identity file): `open_bundle` opens
the sealed part, checks the re-wrapped container against its digest, fetches the
public objects through the links (any k of n shards), checks each one's digest,
decodes, checks the original's digest, and only then renames the output into place.

Byte format: docs/FORMAT.md section 6. The master key never leaves the device: the
bundle holds only the one file's secret, re-wrapped under the share key.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import logging
import os
import re
import struct
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, Callable
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import codec, digests
from .codec import se2
from .errors import DispersiondError, FragmentMismatch, IntegrityError, WrongKey
from .fsutil import atomic_output
from .identity import Identity, IdentityError, decode_public, recipient_id
from .logs import event, log
from .placement import HashingWriter, decode_shards
from .state import PROTECTED, FileState, dumps

MAGIC = b"DSPS"
VERSION = 1
PAYLOAD_VERSION = 2  # of the sealed JSON: 2 names every digest for its algorithm (digest_alg)
SUITE = 1  # X25519 + HKDF-SHA256 + ChaCha20-Poly1305
HEADER = struct.Struct(">4sBBH8s32sI")  # magic version suite flags recipient_id epk sealed_len
HEADER_LEN = HEADER.size  # 52
TAG = 16
MAX_SEALED = 4 << 20
SUFFIX = ".dspshare"
SEAL_INFO = b"dispersiond share v1 seal"
MAX_LIFETIME = timedelta(days=7)  # S3 SigV4 and GCS V4 links cannot live longer
DEFAULT_EXPIRES = "72h"


# ------------------------------------------------------------------ errors

class ShareError(DispersiondError):
    """A share could not be made or opened."""


class ShareRefused(ShareError):
    """Access control said no (unknown recipient, file not protected, ...). Audited."""


class BundleFormatError(ShareError):
    """Not a share bundle, or a version this build does not read."""


class WrongIdentity(ShareError):
    """The bundle is sealed to another recipient's key."""


class BundleTampered(ShareError):
    """The bundle failed authentication: altered, truncated or extended."""


class LinkExpired(ShareError):
    """The bundle's links have expired."""


class ObjectGone(ShareError):
    """The public objects are no longer there (the file was re-keyed or erased)."""


class ObjectTampered(ShareError):
    """A public object does not match the digest the bundle gives for it."""


class ObjectMismatch(ObjectTampered):
    """The public objects belong to another file than the bundle's private container."""


class ObjectUnavailable(ShareError):
    """Not enough objects could be fetched (store down, link refused, network)."""


# ------------------------------------------------------------------ sealing (HPKE-style)

def _seal_key(shared: bytes, epk: bytes, rpk: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=epk + rpk,
                info=SEAL_INFO).derive(shared)


def seal(payload: bytes, rpk: bytes, eph: X25519PrivateKey | None = None) -> bytes:
    """Header || ChaCha20-Poly1305 of `payload` to recipient public key `rpk` (32 bytes)."""
    eph = eph or X25519PrivateKey.generate()
    epk = eph.public_key().public_bytes_raw()
    shared = eph.exchange(X25519PublicKey.from_public_bytes(rpk))
    header = HEADER.pack(MAGIC, VERSION, SUITE, 0, recipient_id(rpk), epk, len(payload) + TAG)
    return header + ChaCha20Poly1305(_seal_key(shared, epk, rpk)).encrypt(bytes(12), payload,
                                                                          header)


def unseal(f: BinaryIO, identity: Identity) -> dict:
    """Read and open the sealed part of a bundle from `f` (left just after it)."""
    head = f.read(HEADER_LEN)
    if len(head) < 4 or head[:4] != MAGIC:
        raise BundleFormatError("not a dispersiond share bundle (bad magic)")
    if len(head) < HEADER_LEN:
        raise BundleTampered(f"the bundle is truncated ({len(head)} bytes)")
    _, version, suite, flags, rid, epk, sealed_len = HEADER.unpack(head)
    if version != VERSION or suite != SUITE:
        raise BundleFormatError(f"share bundle version {version} suite {suite} is not read by "
                                f"this build (it reads version {VERSION} suite {SUITE}); "
                                "upgrade dispersiond, or the bundle is damaged")
    rpk = identity.public_bytes
    if rid != recipient_id(rpk):
        raise WrongIdentity(f"this bundle is sealed to another recipient (key fingerprint "
                            f"{rid.hex()}; your identity's is {recipient_id(rpk).hex()}): "
                            "open it with the identity it was made for (or it was altered)")
    if not TAG <= sealed_len <= MAX_SEALED:
        raise BundleTampered("the bundle header is damaged (impossible sealed length)")
    sealed = f.read(sealed_len)
    if len(sealed) != sealed_len:
        raise BundleTampered(f"the bundle is truncated ({HEADER_LEN + len(sealed)} bytes)")
    try:
        shared = identity.secret.exchange(X25519PublicKey.from_public_bytes(epk))
        payload = ChaCha20Poly1305(_seal_key(shared, epk, rpk)).decrypt(bytes(12), sealed, head)
    except (InvalidTag, ValueError):
        raise BundleTampered("the bundle failed authentication: it was altered or damaged "
                             "after it was made") from None
    if flags:
        raise BundleFormatError(f"share bundle flags {flags:#x} are not understood by this "
                                "build; upgrade dispersiond")
    try:
        doc = json.loads(payload)
    except ValueError:
        raise BundleFormatError("the bundle's sealed part is not valid JSON") from None
    return _check_payload(doc)


_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")


def _upgrade_payload(p: dict, bad) -> dict:
    """A version 1 payload (every digest SHA-256, named sha256) in version 2's shape."""
    objs = p.get("objects")
    if not isinstance(objs, list) or not all(isinstance(o, dict) for o in objs):
        raise bad("objects")
    rest = {k: v for k, v in p.items() if k not in ("sha256", "prf_sha256", "objects")}
    return dict(rest, v=PAYLOAD_VERSION, digest_alg=digests.LEGACY, digest=p.get("sha256"),
                prf_digest=p.get("prf_sha256"),
                objects=[dict({k: v for k, v in o.items() if k != "sha256"},
                              digest=o.get("sha256")) for o in objs])


def _check_payload(p) -> dict:
    """Strict shape check of an (authenticated) payload: defence against a buggy issuer."""
    def bad(what: str):
        return BundleFormatError(f"the bundle's contents are malformed ({what})")

    def is_int(x, lo=0):
        return isinstance(x, int) and not isinstance(x, bool) and x >= lo

    if isinstance(p, dict) and p.get("v") == 1:
        p = _upgrade_payload(p, bad)
    if not isinstance(p, dict) or p.get("v") != PAYLOAD_VERSION:
        raise bad("version")
    if p.get("digest_alg") not in digests.ALGORITHMS:
        raise bad("digest algorithm")
    if p.get("scheme") != "se2":
        raise bad(f"scheme {p.get('scheme')!r}")
    for k in ("size", "puf_len", "prf_len", "created", "expires"):
        if not is_int(p.get(k)):
            raise bad(k)
    if not (isinstance(p.get("file"), str) and _HEX32.fullmatch(p["file"])):
        raise bad("file id")
    for k in ("digest", "prf_digest", "share_key"):
        if not (isinstance(p.get(k), str) and _HEX64.fullmatch(p[k])):
            raise bad(k)
    if "name" in p and not (isinstance(p["name"], str) and p["name"]):
        raise bad("name")
    pub = p.get("public")
    if not isinstance(pub, dict) or pub.get("mode") not in ("replicate", "erasure"):
        raise bad("public mode")
    objs = p.get("objects")
    if not isinstance(objs, list) or not objs or len(objs) > 256:
        raise bad("objects")
    if pub["mode"] == "erasure":
        k, n, block = pub.get("k"), pub.get("n"), pub.get("block")
        if not (is_int(k, 1) and is_int(n, 1) and is_int(block, 1) and k <= n <= 256):
            raise bad("erasure parameters")
    for o in objs:
        if not isinstance(o, dict) or not isinstance(o.get("url"), str):
            raise bad("object link")
        if not all(is_int(o.get(x)) for x in ("offset", "length", "size")):
            raise bad("object sizes")
        if o["offset"] + o["length"] > o["size"]:
            raise bad("object range")
        if not (isinstance(o.get("digest"), str) and _HEX64.fullmatch(o["digest"])):
            raise bad("object digest")
        shard = o.get("shard")
        if pub["mode"] == "erasure":
            if not (is_int(shard) and shard < pub["n"]):
                raise bad("shard number")
        elif shard is not None:
            raise bad("shard number")
    return p


# ------------------------------------------------------------------ issuer side

@dataclass
class ShareResult:
    path: Path
    file_id: str
    recipient: str
    expires: float
    links: int
    bundle_sha256: str

    def as_dict(self) -> dict:
        return {"path": str(self.path), "file_id": self.file_id, "recipient": self.recipient,
                "expires": _iso(self.expires), "links": self.links,
                "bundle_sha256": self.bundle_sha256}


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).replace(microsecond=0).isoformat()


def lifetime(expires: str | int | float | timedelta) -> timedelta:
    """A link lifetime from '72h', '2s', seconds or a timedelta; 1 s .. 7 days."""
    from .units import parse_duration

    td = expires if isinstance(expires, timedelta) else parse_duration(expires)
    if not timedelta(seconds=1) <= td <= MAX_LIFETIME:
        raise ValueError(f"--expires must be between 1s and 7d (the longest a cloud link can "
                         f"live), not {expires}")
    return timedelta(seconds=int(td.total_seconds()))


def bundle_name(file_id: str, recipient: str) -> str:
    return f"{file_id[:12]}-{recipient}{SUFFIX}"


def create_bundle(v, ref: str, recipient: str, expires: str | timedelta = DEFAULT_EXPIRES, *,
                  with_name: bool = False, out: Path | None = None, overwrite: bool = False,
                  via: str = "command") -> ShareResult:
    """Write a share bundle of one committed file for one configured recipient.

    Every outcome is in the audit log: "share" on success, "share-refused" when access
    control says no (unknown recipient, unknown or unfinished file, bad expiry), and
    "share-failed" when the stores could not provide what a bundle needs.
    """
    from .restore import private_container

    def refuse(reason: str, fid: str | None = None) -> ShareRefused:
        _audit(v, "share-refused", fid, recipient=recipient, reason=reason, via=via)
        return ShareRefused(f"share refused: {reason}")

    rows = [r for r in v.db.find(ref) if r.state != FileState.FAILED]
    fid = rows[0].file_id if len(rows) == 1 else None
    rcpt = v.cfg.recipient(recipient)
    if rcpt is None:
        known = ", ".join(r.name for r in v.cfg.recipients) or "none configured"
        raise refuse(f"recipient {recipient!r} is not in the config's recipients "
                     f"(known: {known}); add its name, public_key and role first", fid)
    try:
        rpk = decode_public(rcpt.public_key, f"recipients[{rcpt.name}].public_key")
    except IdentityError as exc:
        raise refuse(str(exc), fid) from None
    try:
        life = lifetime(expires)
    except ValueError as exc:
        raise refuse(str(exc), fid) from None
    if len(rows) != 1:
        # The reference may be a file name: it is never written to the audit log.
        raise refuse("no protected file matches that id or name" if not rows else
                     f"{len(rows)} files match that name; give the file id")
    f = rows[0]
    if f.state not in PROTECTED:
        raise refuse(f"file {f.file_id} is not protected yet (state {f.state})", f.file_id)
    if f.scheme != "se2":
        raise refuse(f"file {f.file_id} uses scheme {f.scheme}; only se2 files can be shared",
                     f.file_id)

    def fail(reason: str) -> ShareError:
        _audit(v, "share-failed", f.file_id, recipient=recipient, reason=reason, via=via)
        return ShareError(f"cannot share file {f.file_id}: {reason}")

    now = int(time.time())
    links, problems = _links(v, f, life)
    need = f.k if f.public_mode == "erasure" else 1
    if len(links) < need:
        raise fail(f"only {len(links)} of the {need} public objects needed could be linked "
                   f"({'; '.join(problems) or 'none recorded'})")
    share_key = os.urandom(se2.KEY_LEN)
    dest = out if out is not None else Path.cwd() / bundle_name(f.file_id, recipient)
    if dest.is_dir():
        dest = dest / bundle_name(f.file_id, recipient)
    if dest.exists() and not overwrite:
        raise ShareError(f"{dest} exists; choose another --out or pass --force")
    with tempfile.TemporaryDirectory(prefix=".share-", dir=v.root / "work") as tmpd:
        try:
            prf_path = private_container(v, f, Path(tmpd))
        except DispersiondError as exc:
            raise fail(str(exc)) from None
        with open(prf_path, "rb") as fh:
            old_head = fh.read(se2.PRF_HEADER_LEN)
            try:
                new_head = se2.rewrap(old_head, v.key, share_key)
            except (WrongKey, IntegrityError) as exc:
                raise fail(f"its private container cannot be unwrapped: {exc}") from None
            h = digests.new(f.digest_alg)
            h.update(new_head)
            prf_len = len(new_head)
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
                prf_len += len(block)
            if prf_len != f.container_len:
                raise fail("its private container has the wrong length")
            payload = {
                "v": PAYLOAD_VERSION, "scheme": f.scheme, "file": f.file_id,
                "share_key": share_key.hex(), "size": f.size, "digest_alg": f.digest_alg,
                "digest": f.digest, "puf_len": f.puf_len, "prf_len": prf_len,
                "prf_digest": h.hexdigest(), "public": _public_params(f), "objects": links,
                "created": now, "expires": now + int(life.total_seconds()),
            }
            if with_name:
                payload["name"] = f.name
            sealed = seal(dumps(payload).encode(), rpk)
            dest.parent.mkdir(parents=True, exist_ok=True)
            bh = hashlib.sha256()
            with atomic_output(dest, overwrite=overwrite, mode=0o600) as w:
                for part in (sealed, new_head):
                    w.write(part)
                    bh.update(part)
                fh.seek(se2.PRF_HEADER_LEN)
                for block in iter(lambda: fh.read(1 << 20), b""):
                    w.write(block)
                    bh.update(block)
    res = ShareResult(dest, f.file_id, recipient, payload["expires"], len(links), bh.hexdigest())
    _audit(v, "share", f.file_id, recipient=recipient, role=rcpt.role,
           expires=_iso(res.expires), links=len(links), with_name=with_name, via=via,
           bundle_sha256=res.bundle_sha256)
    event(logging.INFO, "share bundle written", file_id=f.file_id, recipient=recipient,
          links=len(links))
    return res


def _audit(v, event_name: str, file_id: str | None, **detail) -> None:
    """Append to the audit log and have the next manifest backup carry the new head, so
    that entries cut off the end of the log are caught against the trusted store."""
    v.audit(event_name, file_id, **detail)
    v.db.mark_manifest_dirty()


def _public_params(f) -> dict:
    if f.public_mode == "erasure":
        return {"mode": "erasure", "k": f.k, "n": f.n, "block": f.block}
    return {"mode": "replicate"}


def _links(v, f, life: timedelta) -> tuple[list[dict], list[str]]:
    """A read link for every public object that is there now; problems for the others."""
    from backends import NotFound, StoreError

    links, problems = [], []
    for obj in v.db.objects(f.file_id, role="public", states=("uploaded",)):
        try:
            store = v.store(obj.store)
            info = store.stat(obj.name)
            if info.size != obj.object_size:
                problems.append(f"{obj.store}: object has the wrong size (run verify/repair)")
                continue
            url = store.presign(obj.name, life)
        except NotFound:
            v.db.set_object_state(obj.id, "missing")
            problems.append(f"{obj.store}: object missing (run repair)")
            continue
        except (StoreError, KeyError, ValueError) as exc:
            problems.append(f"{obj.store}: {exc}")
            continue
        links.append({"shard": obj.shard, "url": url, "offset": obj.offset,
                      "length": obj.length, "size": obj.object_size, "digest": obj.digest})
    return links, problems


def apply_grants(v, file_id: str, errors: list[str] | None = None) -> list[Path]:
    """Write a bundle of a newly committed file for every standing grant in the config.

    Bundles go to each grant's outbox folder (created mode 0700) as
    `<file id>-<recipient>.dspshare`, replacing an earlier bundle of the same file for
    the same recipient (so calling this again after a crash is harmless). A grant that
    fails is logged and audited ("share-failed" / "share-refused") and does not stop the
    others; its message is appended to `errors` when given. Returns the paths written.
    """
    from backends import StoreError

    written: list[Path] = []
    for g in v.cfg.grants:
        outbox = v.cfg.path(g.outbox)
        try:
            outbox.mkdir(parents=True, exist_ok=True, mode=0o700)
            res = create_bundle(v, file_id, g.recipient, g.expires, with_name=g.with_name,
                                out=outbox / bundle_name(file_id, g.recipient), overwrite=True,
                                via="grant")
        except ShareError as exc:
            _note(errors, f"grant for {g.recipient}: {exc}")
            continue
        except (DispersiondError, StoreError, OSError) as exc:
            _audit(v, "share-failed", file_id, recipient=g.recipient, via="grant",
                   reason=type(exc).__name__)
            _note(errors, f"grant for {g.recipient}: {exc}")
            continue
        written.append(res.path)
    return written


def _note(errors: list[str] | None, msg: str) -> None:
    log.warning("%s", msg)
    if errors is not None:
        errors.append(msg)


# ------------------------------------------------------------------ recipient side

@dataclass
class Opened:
    path: Path
    size: int
    digest_alg: str
    digest: str
    file_id: str
    name: str | None
    expires: float
    fetched: int

    def as_dict(self) -> dict:
        return {"path": str(self.path), "size": self.size, "digest_alg": self.digest_alg,
                "digest": self.digest,
                "file_id": self.file_id, "name": self.name, "expires": _iso(self.expires),
                "objects_fetched": self.fetched}


def _open_file(bundle: Path) -> BinaryIO:
    try:
        return open(bundle, "rb")
    except OSError as exc:
        raise ShareError(f"cannot read bundle {bundle}: {exc.strerror}") from None


def open_bundle(bundle: Path, identity: Identity, out: Path, *, force: bool = False,
                enforce_expiry: bool = True, timeout: float = 60.0,
                progress: Callable[[int], None] | None = None) -> Opened:
    """Rebuild the shared file at `out`; every byte is verified before it becomes visible.

    `out` may be a folder when the bundle carries the file's name. `enforce_expiry=False`
    skips the local check of the bundle's expiry and leaves it to the stores alone (for
    tests that show which stores enforce it).
    """
    out = Path(out)
    with _open_file(bundle) as fb:
        p = unseal(fb, identity)
        if enforce_expiry and time.time() >= p["expires"]:
            raise LinkExpired(f"this bundle's links expired at {_iso(p['expires'])}: ask the "
                              "sender for a new share")
        if out.is_dir():
            if not p.get("name"):
                raise ShareError(f"{out} is a folder and the bundle carries no file name "
                                 "(shared without --with-name): give a file path with --out")
            out = out / _safe_name(p["name"])
        if out.exists() and not force:
            raise ShareError(f"{out} exists; choose another --out or pass --force")
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".open-share-", dir=out.parent) as tmpd:
            tmp = Path(tmpd)
            prf = tmp / "prf"
            _copy_prf(fb, prf, p)
            puf, fetched = _public_fragment(p, tmp, timeout, progress)
            key = bytes.fromhex(p["share_key"])
            with atomic_output(out, overwrite=force, mode=0o600) as fo:
                w = HashingWriter(fo, p["digest_alg"])
                try:
                    with open(puf, "rb") as pu, open(prf, "rb") as pr:
                        codec.decode_stream("se2", key, pu, p["puf_len"], pr, p["prf_len"], w)
                except FragmentMismatch:
                    raise ObjectMismatch("the public objects this bundle links to belong to a "
                                         "different file than its private container: the "
                                         "bundle was made wrongly; ask the sender for a new "
                                         "share") from None
                except (WrongKey, IntegrityError) as exc:
                    raise ObjectTampered(f"the shared file failed authentication while "
                                         f"decoding ({exc})") from None
                if w.n != p["size"] or w.hexdigest() != p["digest"]:
                    raise ObjectTampered("the rebuilt file does not match the original's "
                                         "digest recorded in the bundle")
    return Opened(out, w.n, p["digest_alg"], w.hexdigest(), p["file"], p.get("name"),
                  p["expires"], fetched)


def _safe_name(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if base in ("", ".", ".."):
        raise ShareError("the bundle's file name is not usable here: give a file path with --out")
    return base


def _copy_prf(fb: BinaryIO, dest: Path, p: dict) -> None:
    """The re-wrapped private container that follows the sealed part, checked exactly."""
    h = digests.new(p["digest_alg"])
    n = 0
    with open(dest, "wb") as fo:
        while n < p["prf_len"]:
            block = fb.read(min(1 << 20, p["prf_len"] - n))
            if not block:
                break
            h.update(block)
            fo.write(block)
            n += len(block)
    if n < p["prf_len"]:
        raise BundleTampered(f"the bundle is truncated (private part {n} of {p['prf_len']} "
                             "bytes)")
    if fb.read(1):
        raise BundleTampered("the bundle has unexpected bytes at its end (altered)")
    if h.hexdigest() != p["prf_digest"]:
        raise BundleTampered("the bundle's private part does not match its digest (altered)")


def _where(url: str) -> str:
    """Where a link points, without its signature (safe to print)."""
    u = urlsplit(url)
    return "a local store" if u.scheme == "file" else (u.netloc or "?")


class _LinkFailure(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # expired | gone | tampered | refused | unavailable


def _fetch(o: dict, alg: str, label: str, dest: Path, expires: int, timeout: float,
           progress: Callable[[int], None] | None) -> None:
    """Download one object through its link, checking length and digest as it comes."""
    url, where = o["url"], f"{label} on {_where(o['url'])}"
    if urlsplit(url).scheme not in ("https", "http", "file"):
        raise _LinkFailure("refused", f"{where}: unsupported link type")
    h = digests.new(alg)
    n = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as fo:
            while True:
                block = resp.read(1 << 20)
                if not block:
                    break
                n += len(block)
                if n > o["size"]:
                    raise _LinkFailure("tampered", f"{where}: object is longer than the "
                                                   f"{o['size']} bytes the bundle gives")
                h.update(block)
                fo.write(block)
                if progress:
                    progress(len(block))
    except urllib.error.HTTPError as exc:
        body = exc.read(4096).decode(errors="replace") if exc.fp else ""
        exc.close()
        expired = time.time() >= expires or "expir" in body.lower()
        if exc.code == 404:
            raise _LinkFailure("gone", f"{where}: object not found (HTTP 404)") from None
        if exc.code in (400, 401, 403) and expired:
            raise _LinkFailure("expired", f"{where}: link expired (HTTP {exc.code})") from None
        if exc.code in (401, 403):
            raise _LinkFailure("refused", f"{where}: link refused (HTTP {exc.code})") from None
        raise _LinkFailure("unavailable", f"{where}: HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, FileNotFoundError):
            raise _LinkFailure("gone", f"{where}: object not found") from None
        raise _LinkFailure("unavailable", f"{where}: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise _LinkFailure("unavailable", f"{where}: {type(exc).__name__}: {exc}") from None
    if n != o["size"] or h.hexdigest() != o["digest"]:
        raise _LinkFailure("tampered", f"{where}: object does not match the digest in the "
                                       "bundle (altered or replaced on the store)")


def _public_fragment(p: dict, tmp: Path, timeout: float,
                     progress: Callable[[int], None] | None) -> tuple[Path, int]:
    """A verified public fragment: one intact replica, or rebuilt from any k shards."""
    pub = p["public"]
    need = pub["k"] if pub["mode"] == "erasure" else 1
    good: dict[int, tuple[Path, dict]] = {}
    failures: list[_LinkFailure] = []
    for i, o in enumerate(sorted(p["objects"], key=lambda o: o["shard"] or 0)):
        if len(good) == need:
            break
        key = o["shard"] if pub["mode"] == "erasure" else i
        if key in good:
            continue
        path = tmp / f"obj-{i}"
        label = f"shard {key}" if pub["mode"] == "erasure" else f"copy {i + 1}"
        try:
            _fetch(o, p["digest_alg"], label, path, p["expires"], timeout, progress)
        except _LinkFailure as exc:
            failures.append(exc)
            continue
        good[key] = (path, o)
    if len(good) < need:
        raise _explain(failures, len(good), need)
    puf = tmp / "puf"
    if pub["mode"] != "erasure":
        path, o = next(iter(good.values()))
        _extract(path, o, puf)
        return puf, len(good)
    readers = {}
    try:
        for shard, (path, o) in good.items():
            part = tmp / f"shard-{shard}"
            _extract(path, o, part)
            readers[shard] = open(part, "rb")
        with open(puf, "wb") as fo:
            try:
                decode_shards(p["puf_len"], pub["k"], pub["n"], pub["block"], readers, fo)
            except ValueError as exc:
                raise ObjectTampered(f"the shards do not fit the bundle's sizes ({exc})") from None
    finally:
        for r in readers.values():
            r.close()
    return puf, len(good)


def _extract(path: Path, o: dict, dest: Path) -> None:
    """The fragment bytes [offset, offset + length) of a downloaded object (drops padding)."""
    if o["offset"] == 0:
        os.replace(path, dest)
        os.truncate(dest, o["length"])
        return
    with open(path, "rb") as src, open(dest, "wb") as fo:
        src.seek(o["offset"])
        left = o["length"]
        while left:
            block = src.read(min(left, 1 << 20))
            fo.write(block)
            left -= len(block)


def _explain(failures: list[_LinkFailure], got: int, need: int) -> ShareError:
    kinds = {f.kind for f in failures}
    detail = "; ".join(str(f) for f in failures)
    if "expired" in kinds:
        return LinkExpired(f"the bundle's links have expired ({detail}): ask the sender for a "
                           "new share")
    if "tampered" in kinds:
        return ObjectTampered(f"only {got} of the {need} public objects needed are intact "
                              f"({detail})")
    if kinds == {"gone"}:
        return ObjectGone(f"the shared file's public objects are gone from the stores "
                          f"({detail}): the sender re-keyed or erased the file after making "
                          "this bundle, which revokes it; ask for a new share")
    return ObjectUnavailable(f"only {got} of the {need} public objects needed could be "
                             f"fetched ({detail}); try again later")
