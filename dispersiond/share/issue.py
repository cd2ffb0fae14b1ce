"""Issuing a share: one committed file, one configured recipient, one signed bundle.

Used by the `share` command and by the daemon's standing grants (grants.py). The
file's private container is re-wrapped under a fresh random share key; that key and
the file's description (sizes, erasure parameters, a time-limited read link, length
and digest for every public object, the original's digest) are sealed to the
recipient and signed by this device (bundle.py). The master key never leaves the
device: the bundle holds only the one file's secret, re-wrapped under the share key.
A link never points at a pack: a packed member is linked through a standalone copy
made for the bundle's lifetime (copies.py).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from .. import scratch
from .. import digests
from ..codec import se2
from ..errors import DispersiondError, IntegrityError, WrongKey
from ..fsutil import atomic_output
from ..identity import IdentityError, decode_public
from ..logs import event
from ..state import PROTECTED, FileState, dumps
from . import device
from .bundle import SUFFIX, seal_signed
from .errors import ShareError, ShareRefused
from .payload import MAX_LIFETIME, PAYLOAD_VERSION
from .roles import check_override

DEFAULT_EXPIRES = "72h"


@dataclass
class ShareResult:
    path: Path
    file_id: str
    recipient: str
    expires: float
    links: int
    bundle_sha256: str
    sender_fingerprint: str = ""

    def as_dict(self) -> dict:
        return {"path": str(self.path), "file_id": self.file_id, "recipient": self.recipient,
                "expires": _iso(self.expires), "links": self.links,
                "bundle_sha256": self.bundle_sha256, "sender_fingerprint": self.sender_fingerprint}


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).replace(microsecond=0).isoformat()


def lifetime(expires: str | int | float | timedelta) -> timedelta:
    """A link lifetime from '72h', '2s', seconds or a timedelta; 1 s .. 7 days."""
    from ..units import parse_duration

    td = expires if isinstance(expires, timedelta) else parse_duration(expires)
    if not timedelta(seconds=1) <= td <= MAX_LIFETIME:
        raise ValueError(f"--expires must be between 1s and 7d (the longest a cloud link can "
                         f"live), not {expires}")
    return timedelta(seconds=int(td.total_seconds()))


def bundle_name(file_id: str, recipient: str) -> str:
    return f"{file_id[:12]}-{recipient}{SUFFIX}"


def create_bundle(v, ref: str, recipient: str, expires: str | timedelta = DEFAULT_EXPIRES, *,
                  with_name: bool = False, out: Path | None = None, overwrite: bool = False,
                  via: str = "command", identified: bool = False,
                  reason: str | None = None) -> ShareResult:
    """Write a share bundle of one committed file for one configured recipient.

    The recipient's role decides what it holds: a doctor's (or an audited override's,
    `identified` with a `reason`) links to the stored record; anyone else's an inline,
    de-identified derivative (export.py), which never carries the file's name.

    Every outcome is in the audit log: "share" on success, "share-refused" when access
    control says no (unknown recipient, unknown or unfinished file, bad expiry), and
    "share-failed" when the stores could not provide what a bundle needs.
    """
    def refuse(reason: str, fid: str | None = None) -> ShareRefused:
        _audit(v, "share-refused", fid, recipient=recipient, reason=reason, via=via)
        return ShareRefused(f"share refused: {reason}")

    if out is not None and "\0" in str(out):
        raise ShareError("the bundle path (--out) contains a NUL byte: give a plain file name")
    rows = [r for r in v.db.find(ref) if r.state != FileState.FAILED] if "\0" not in ref else []
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

    try:
        override = check_override(rcpt, identified, reason)
    except ShareRefused as exc:
        raise refuse(str(exc).removeprefix("share refused: "), f.file_id) from None
    if not rcpt.identified and override is None:
        from .export import write_inline

        dest = out if out is not None else Path.cwd() / bundle_name(f.file_id, recipient)
        if dest.is_dir():
            dest = dest / bundle_name(f.file_id, recipient)
        return write_inline(v, rcpt, [f], dest, export=False, overwrite=overwrite, via=via)

    def fail(reason: str) -> ShareError:
        _audit(v, "share-failed", f.file_id, recipient=recipient, reason=reason, via=via)
        return ShareError(f"cannot share file {f.file_id}: {reason}")

    if with_name and not _sendable_name(f.name):
        raise refuse(f"file {f.file_id}: its name has characters a recipient's system cannot "
                     "take (control characters, slashes or bytes that are not UTF-8): share "
                     "it without --with-name",
                     f.file_id)
    dest = out if out is not None else Path.cwd() / bundle_name(f.file_id, recipient)
    if dest.is_dir():
        dest = dest / bundle_name(f.file_id, recipient)
    if dest.exists() and not overwrite:
        raise ShareError(f"{dest} exists; choose another --out or pass --force")
    copies: list[tuple[str, str]] = []  # made for this bundle: dropped if it is not written
    try:
        with scratch.folder(v.root / "work", "share") as tmpd:
            now = int(time.time())
            links, problems = _links(v, f, life, Path(tmpd), copies)
            need = f.k if f.public_mode == "erasure" else 1
            if len(links) < need:
                raise fail(f"only {len(links)} of the {need} public objects needed could be "
                           f"linked ({'; '.join(problems) or 'none recorded'})")
            payload, sha, signer = _write(v, f, dest, Path(tmpd), links, rpk, now, life,
                                          with_name, overwrite, fail)
    except BaseException:
        v.db.drop_share_copies(copies)
        raise
    res = ShareResult(dest, f.file_id, recipient, payload["expires"], len(links), sha,
                      signer.fingerprint)
    _audit(v, "share", f.file_id, recipient=recipient, role=rcpt.role,
           expires=_iso(res.expires), links=len(links), copies=len(copies),
           with_name=with_name, via=via,
           bundle_sha256=res.bundle_sha256, sender=signer.fingerprint,
           **({"override_reason": override} if override else {}))
    event(logging.INFO, "share bundle written", file_id=f.file_id, recipient=recipient,
          links=len(links))
    return res


def _sendable_name(name: str) -> bool:
    from .payload import BAD_NAME, MAX_NAME

    from ..display import is_text

    # Bytes that are not UTF-8 cannot go into the bundle's JSON as they are.
    return (is_text(name) and 0 < len(name.encode()) <= MAX_NAME
            and not BAD_NAME.search(name))


def _audit(v, event_name: str, file_id: str | None, **detail) -> None:
    """Append to the audit log and anchor it on the trusted store at once (a small
    delta backup), so that entries cut off the end of the log are caught against it."""
    from ..ops.backup import anchor

    v.audit(event_name, file_id, **detail)
    v.db.mark_manifest_dirty()
    anchor(v)


def _write(v, f, dest: Path, tmp: Path, links: list[dict], rpk: bytes, now: int,
           life: timedelta, with_name: bool, overwrite: bool, fail) -> tuple[dict, str, object]:
    """Re-wrap the private container under a fresh share key and write the signed bundle
    (§6.2) atomically at `dest`; returns (payload, the bundle's SHA-256, the signer)."""
    from ..ops.restore import private_container

    share_key = os.urandom(se2.KEY_LEN)
    try:
        container_path = private_container(v, f, tmp)  # a packed one: fetched, unmasked, checked
    except DispersiondError as exc:
        raise fail(str(exc)) from None
    with open(container_path, "rb") as fh:
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
        signer = device.load_or_create(v.root, v.key)
        sealed = seal_signed(dumps(payload).encode(), rpk, signer)
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
    return payload, bh.hexdigest(), signer


def _public_params(f) -> dict:
    if f.public_mode == "erasure":
        return {"mode": "erasure", "k": f.k, "n": f.n, "block": f.block}
    return {"mode": "replicate"}


def _links(v, f, life: timedelta, tmp: Path,
           copies: list[tuple[str, str]]) -> tuple[list[dict], list[str]]:
    """A read link for every public object that is there now (a packed member's through
    a standalone copy made for this bundle, appended to `copies`); problems for the others."""
    from backends import NotFound, StoreError

    from .copies import copy_member, standalone

    links, problems = [], []
    for obj in v.db.objects(f.file_id, role="public", states=("uploaded",)):
        try:
            store = v.store(obj.store)
            if obj.packed:
                target, url = copy_member(v, obj, life, tmp)
                copies.append((target.store, target.name))
            else:
                target = standalone(obj)
                info = store.stat(obj.name)
                if info.size != obj.object_size:
                    problems.append(f"{obj.store}: object has the wrong size (run verify/repair)")
                    continue
                url = store.presign(obj.name, life)
        except NotFound:
            if not obj.packed:  # a missing pack is marked by the fetch, with every member
                v.db.set_object_state(obj.id, "missing")
            problems.append(f"{obj.store}: object missing (run repair)")
            continue
        except IntegrityError as exc:  # a damaged member: the fetch marked it corrupt
            problems.append(f"{obj.store}: {exc}")
            continue
        except (StoreError, OSError, KeyError, ValueError) as exc:
            problems.append(f"{obj.store}: {exc}")
            continue
        links.append({"shard": obj.shard, "url": url, "offset": target.offset,
                      "length": target.length, "size": target.size, "digest": target.digest})
    return links, problems
