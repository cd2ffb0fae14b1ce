"""Consent requests on the device (paper Fig. 5): receive, list, approve, deny.

A request is accepted only when its signature verifies and the key that made it is the
`request_key` of a configured recipient whose `public_key` it also names; anything else
is refused and audited without looking at which records exist. The owner sees who asks
and what, and decides each one; both decisions are audited. An approval writes the
bundles (a doctor's as stored, through links; anyone else's one de-identified inline
bundle); a denial writes nothing, so the requester learns nothing either way about
which records the device holds until the owner agrees.
"""
from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..identity import IdentityError, decode_public
from ..state import dumps
from .errors import ShareError, ShareRefused
from .export import _audit, select, write_inline
from .issue import DEFAULT_EXPIRES, bundle_name, create_bundle, lifetime
from .request_format import Request, RequestInvalid, parse
from .roles import recipient_key, request_key


@dataclass(frozen=True)
class Received:
    id: str
    recipient: str
    request: Request


def _today() -> str:
    return dt.datetime.now(dt.timezone.utc).date().isoformat()


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).replace(microsecond=0).isoformat()


def receive(v, data: bytes) -> Received:
    """Verify a request file against the configured recipients and store it as pending."""
    def refuse(reason: str, **detail) -> ShareRefused:
        _audit(v, "request-refused", None, reason=reason, **detail)
        return ShareRefused(f"consent request refused: {reason}")

    try:
        req = parse(data)
    except RequestInvalid as exc:
        _audit(v, "request-refused", None, reason=str(exc).removeprefix(
            "consent request refused: "))
        raise
    rcpt = next((r for r in v.cfg.recipients if request_key(r) == req.signer), None)
    if rcpt is None:
        raise refuse(f"it is signed by a key (fingerprint {req.fingerprint}) that is not the "
                     "request_key of any configured recipient: add the recipient (name, role, "
                     "public_key, request_key from their keygen) first", signer=req.fingerprint)
    try:
        same = recipient_key(rcpt) == decode_public(req.body["public_key"])
    except (ShareRefused, IdentityError):
        same = False
    if not same:
        raise refuse(f"it names a public key that is not {rcpt.name}'s in the config",
                     recipient=rcpt.name, signer=req.fingerprint)
    if req.body["valid_until"] < _today():
        raise refuse(f"it lapsed on {req.body['valid_until']}", recipient=rcpt.name,
                     request=req.id)
    if not v.db.add_request(req.id, req.body["nonce"], rcpt.name, time.time(),
                            req.raw_body.decode()):
        raise refuse("it was received before (same request or nonce): a replay is not a new "
                     "request", recipient=rcpt.name, request=req.id)
    _audit(v, "request-received", None, request=req.id, recipient=rcpt.name, role=rcpt.role,
           signer=req.fingerprint, scope=req.describe_scope(),
           valid_until=req.body["valid_until"])
    return Received(req.id, rcpt.name, req)


def describe(v, row) -> dict:
    """What the owner needs to decide: who asks (as configured), what, why, until when."""
    body = json.loads(row["body"])
    rcpt = v.cfg.recipient(row["recipient"])
    return {"id": row["id"], "recipient": row["recipient"],
            "role": rcpt.role if rcpt else None, "requester": body["requester"],
            "records": body["records"], "purpose": body["purpose"],
            "valid_until": body["valid_until"], "received": _iso(row["received"]),
            "state": row["state"], "decided": _iso(row["decided"]),
            "gets": ("records as stored" if rcpt and rcpt.identified
                     else "de-identified copies")}


def pending(v, everything: bool = False) -> list[dict]:
    states = ("pending", "approved", "denied") if everything else ("pending",)
    return [describe(v, r) for r in v.db.request_rows(states)]


def _pending_row(v, rid: str):
    row = v.db.request_row(rid)
    if row is None:
        raise ShareError(f"no consent request {rid!r}: see 'dispersiond requests'")
    if row["state"] != "pending":
        raise ShareError(f"request {row['id']} was already {row['state']} at "
                         f"{_iso(row['decided'])}")
    return row


def approve(v, rid: str, out: Path | None = None,
            expires: str = DEFAULT_EXPIRES) -> dict:
    """Make the bundle(s) a pending request asked for, then record the approval."""
    row = _pending_row(v, rid)
    rid = row["id"]
    body = json.loads(row["body"])
    rcpt = v.cfg.recipient(row["recipient"])
    if rcpt is None:
        raise ShareRefused(f"share refused: {row['recipient']} is no longer in the config's "
                           "recipients; deny the request or add them back")
    if body["valid_until"] < _today():
        raise ShareRefused(f"share refused: request {rid} lapsed on {body['valid_until']}; "
                           "deny it")
    life = lifetime(expires)
    scope = body["records"]
    files = select(v, ids=scope.get("ids"), kind=scope.get("kind"),
                   since=scope.get("since"), until=scope.get("until"))
    dest = out if out is not None else v.cfg.state_path / "outbox" / rcpt.name
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths: list[str] = []
    skipped: list[dict] = []
    if rcpt.identified:
        for f in files:
            if scope.get("kind"):
                from .export import kind_by_name

                if kind_by_name(f.name) not in (None, scope["kind"]):
                    continue
            try:
                res = create_bundle(v, f.file_id, rcpt.name, life,
                                    out=dest / bundle_name(f.file_id, rcpt.name),
                                    overwrite=True, via="request")
            except ShareError as exc:
                skipped.append({"file_id": f.file_id, "reason": str(exc)})
                continue
            paths.append(str(res.path))
    elif files:
        try:
            res = write_inline(v, rcpt, files, dest / f"request-{rid}-{rcpt.name}.dspshare",
                               kind=scope.get("kind"), request=rid, purpose=body["purpose"],
                               use_until=body["valid_until"], overwrite=True, via="request")
        except ShareRefused as exc:
            if not str(exc).startswith("share refused: no record"):
                raise
        else:
            paths.append(str(res.path))
            skipped = res.skipped
    records = len(paths) if rcpt.identified else (res.records if paths else 0)
    outcome = {"bundles": paths, "skipped": skipped, "records": records}
    if not v.db.decide_request(rid, "approved", time.time(), dumps(outcome)):
        raise ShareError(f"request {rid} was decided meanwhile")
    _audit(v, "request-approved", None, request=rid, recipient=rcpt.name, role=rcpt.role,
           bundles=len(paths), records=records)
    return {"id": rid, "recipient": rcpt.name, "bundles": paths, "skipped": skipped,
            "records": records}


def deny(v, rid: str, note: str | None = None) -> dict:
    """Record a denial. Nothing is written for the requester: they learn nothing."""
    row = _pending_row(v, rid)
    if not v.db.decide_request(row["id"], "denied", time.time(), dumps({"note": note})):
        raise ShareError(f"request {row['id']} was decided meanwhile")
    _audit(v, "request-denied", None, request=row["id"], recipient=row["recipient"],
           **({"note": note} if note else {}))
    return {"id": row["id"], "recipient": row["recipient"], "state": "denied"}
