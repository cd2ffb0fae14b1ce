"""Opening a bundle (the recipient's side; needs only the bundle and an identity file).

Order (docs/FORMAT.md section 6.5): the sealed part and its signature, the sender
against the recipient's pins, the expiry, the private part against its digest, then
the public objects through the links (any k of n, by the one restorer), decoding, and
the original's digest; only then is the output renamed into place.
"""
from __future__ import annotations

import datetime as dt
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable

from .. import codec, digests
from ..errors import CodecError, FragmentMismatch
from ..fsutil import atomic_output
from ..identity import Identity
from ..placement import HashingWriter
from ..layout import Layout
from ..ops.restore import ShardsDoNotFit, rebuild_public
from . import bundle
from .errors import BundleTampered, LinkExpired, ObjectMismatch, ObjectTampered, ShareError
from .links import LinkSource
from .senders import Sender, decide, pins

if TYPE_CHECKING:
    from .unpack import OpenedInline


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).replace(microsecond=0).isoformat()


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
    sender: Sender | None = None

    def as_dict(self) -> dict:
        return {"path": str(self.path), "size": self.size, "digest_alg": self.digest_alg,
                "digest": self.digest,
                "file_id": self.file_id, "name": self.name, "expires": _iso(self.expires),
                "objects_fetched": self.fetched,
                "sender": self.sender.as_dict() if self.sender else None}


def _open_file(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except (OSError, ValueError) as exc:
        raise ShareError(f"cannot read bundle {path}: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None


def open_bundle(path: Path, identity: Identity, out: Path, *, force: bool = False,
                enforce_expiry: bool = True, timeout: float = 60.0,
                progress: Callable[[int], None] | None = None,
                senders: dict[bytes, str] | None = None, accept_unknown_sender: bool = False,
                accept_unsigned: bool = False) -> "Opened | OpenedInline":
    """Rebuild the shared file at `out`; every byte is verified before it becomes visible.

    `senders` (key -> name) are the devices trusted to send; by default the known-senders
    file next to the identity. A bundle from anyone else, or an unsigned (version 1) one,
    is refused unless accepted explicitly. `out` may be a folder when the bundle carries
    the file's name. `enforce_expiry=False` skips the local check of the bundle's expiry
    and leaves it to the stores alone (for tests that show which stores enforce it).
    An inline bundle (payload version 3: de-identified shares, exports) carries its
    records and opens as unpack.OpenedInline.
    """
    out = Path(out)
    if "\0" in str(out):
        raise ShareError("the output path contains a NUL byte: give a plain file name")
    known = pins(identity) if senders is None else senders
    with _open_file(path) as fb:
        sealed = bundle.read(fb, identity)
        sender = decide(sealed, known, accept_unknown=accept_unknown_sender,
                        accept_unsigned=accept_unsigned)
        p = sealed.payload
        if p["v"] == 3:
            from .unpack import open_inline

            return open_inline(fb, p, out, sender, force=force)
        if enforce_expiry and time.time() >= p["expires"]:
            raise LinkExpired(f"this bundle's links expired at {_iso(p['expires'])}: ask the "
                              "sender for a new share")
        if out.is_dir():
            if not p.get("name"):
                raise ShareError(f"{out} is a folder and the bundle carries no file name "
                                 "(shared without --with-name): give a file path with --out")
            out = out / p["name"]  # one plain name: the payload check refuses '/', '..', NUL
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
                except (CodecError, ValueError) as exc:
                    raise ObjectTampered(f"the shared file failed authentication while "
                                         f"decoding ({str(exc).splitlines()[0]})") from None
                if w.n != p["size"] or w.hexdigest() != p["digest"]:
                    raise ObjectTampered("the rebuilt file does not match the original's "
                                         "digest recorded in the bundle")
    return Opened(out, w.n, p["digest_alg"], w.hexdigest(), p["file"], p.get("name"),
                  p["expires"], fetched, sender)


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


def _public_fragment(p: dict, tmp: Path, timeout: float,
                     progress: Callable[[int], None] | None) -> tuple[Path, int]:
    """A verified public fragment: one intact replica, or rebuilt from any k shards."""
    layout = Layout.of_payload(p)
    source = LinkSource(p, timeout, progress)
    try:
        got = rebuild_public(source, layout, tmp)
    except ShardsDoNotFit as exc:
        raise ObjectTampered(f"the shards do not fit the bundle's sizes ({exc})") from None
    if isinstance(got, int):
        raise source.explain(got, layout.need)
    return got
