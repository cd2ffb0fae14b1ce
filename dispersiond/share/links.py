"""Reading a bundle's public objects through its links: the HTTP (and file://) client,
as an `ObjectSource` for the one k-of-n restorer in dispersiond/ops/restore.py.

Each object is read up to the size the bundle gives and checked for length and
digest as it arrives; a failure is kept with its kind so that, when too few objects
are intact, the recipient learns the one reason that matters (expired, altered, gone
or unavailable).
"""
from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from .. import digests
from ..ops.restore import Piece
from .errors import LinkExpired, ObjectGone, ObjectTampered, ObjectUnavailable, ShareError


def where(url: str) -> str:
    """Where a link points, without its signature (safe to print)."""
    try:
        u = urlsplit(url)
        return "a local store" if u.scheme == "file" else (u.hostname or "?")
    except ValueError:
        return "?"


class LinkFailure(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # expired | gone | tampered | refused | unavailable


def fetch(o: dict, alg: str, label: str, dest: Path, expires: int, timeout: float,
          progress: Callable[[int], None] | None) -> None:
    """Download one object through its link, checking length and digest as it comes."""
    url, at = o["url"], f"{label} on {where(o['url'])}"
    if not url.startswith(("https://", "http://", "file://")):
        raise LinkFailure("refused", f"{at}: unsupported link type")
    h = digests.new(alg)
    n = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as fo:
            while True:
                block = resp.read(min(1 << 20, o["size"] - n + 1))
                if not block:
                    break
                n += len(block)
                if n > o["size"]:
                    raise LinkFailure("tampered", f"{at}: object is longer than the "
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
            raise LinkFailure("gone", f"{at}: object not found (HTTP 404)") from None
        if exc.code in (400, 401, 403) and expired:
            raise LinkFailure("expired", f"{at}: link expired (HTTP {exc.code})") from None
        if exc.code in (401, 403):
            raise LinkFailure("refused", f"{at}: link refused (HTTP {exc.code})") from None
        raise LinkFailure("unavailable", f"{at}: HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, FileNotFoundError):
            raise LinkFailure("gone", f"{at}: object not found") from None
        reason = getattr(exc.reason, "strerror", None) or exc.reason
        raise LinkFailure("unavailable", f"{at}: {reason}") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "strerror", None) or (str(exc).splitlines() or ["?"])[0][:200]
        raise LinkFailure("unavailable", f"{at}: {type(exc).__name__}: {reason}") from None
    if n != o["size"] or h.hexdigest() != o["digest"]:
        raise LinkFailure("tampered", f"{at}: object does not match the digest in the "
                                      "bundle (altered or replaced on the store)")


class LinkSource:
    """The public objects a bundle links to."""

    def __init__(self, p: dict, timeout: float,
                 progress: Callable[[int], None] | None = None) -> None:
        self.p, self.timeout, self.progress = p, timeout, progress
        self.failures: list[LinkFailure] = []

    def pieces(self) -> list[Piece]:
        objs = sorted(self.p["objects"], key=lambda o: o["shard"] or 0)
        erasure = self.p["public"]["mode"] == "erasure"
        return [Piece(o["shard"], o["offset"], o["length"],
                      (o, f"shard {o['shard']}" if erasure else f"copy {i + 1}"))
                for i, o in enumerate(objs)]

    def fetch(self, piece: Piece, dest: Path) -> bool:
        o, label = piece.handle
        try:
            fetch(o, self.p["digest_alg"], label, dest, self.p["expires"], self.timeout,
                  self.progress)
        except LinkFailure as exc:
            self.failures.append(exc)
            return False
        return True

    def explain(self, got: int, need: int) -> ShareError:
        """Why fewer than `need` objects were intact, in the order that matters most."""
        kinds = {f.kind for f in self.failures}
        detail = "; ".join(str(f) for f in self.failures)
        if "expired" in kinds:
            return LinkExpired(f"the bundle's links have expired ({detail}): ask the sender "
                               "for a new share")
        if "tampered" in kinds:
            return ObjectTampered(f"only {got} of the {need} public objects needed are intact "
                                  f"({detail})")
        if kinds == {"gone"}:
            return ObjectGone(f"the shared file's public objects are gone from the stores "
                              f"({detail}): the sender re-keyed or erased the file after "
                              "making this bundle, which revokes it; ask for a new share")
        return ObjectUnavailable(f"only {got} of the {need} public objects needed could be "
                                 f"fetched ({detail}); try again later")
