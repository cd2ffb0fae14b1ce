"""One shape for a file's layout: how it was encoded and placed, whatever carries it.

The state row (`FileRow`), the manifest entry, the share payload and a fresh encode
(`Staged`) all describe the same facts under their own keys; each converts to and
from `Layout` here, and nowhere else. The documents' keys never change (FORMAT.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Layout field -> state database column, where they differ.
_ROW = {"prf_len": "container_len", "prf_digest": "container_digest", "mode": "public_mode"}
#: Layout field -> manifest entry key, where they differ (the entry says public_mode).
_ENTRY = {"mode": "public_mode"}


@dataclass(frozen=True)
class Layout:
    """A protected file's encoding and placement: enough to fetch, rebuild and check it."""

    size: int
    digest: str | None  # of the original bytes
    digest_alg: str | None
    scheme: str
    head_len: int
    chunk_log2: int | None
    puf_len: int
    prf_len: int  # the private container's
    prf_digest: str | None
    key_id: str | None
    mode: str  # replicate | erasure
    k: int | None = None
    n: int | None = None
    block: int | None = None

    @property
    def need(self) -> int:
        """Public objects needed to rebuild the fragment."""
        return (self.k or 1) if self.mode == "erasure" else 1

    # --- the state row
    @classmethod
    def of_row(cls, f: Any) -> "Layout":
        return cls(**{k: getattr(f, _ROW.get(k, k)) for k in _fields()})

    def row_fields(self) -> dict[str, Any]:
        """Columns of `files` (for update_file / set_state)."""
        return {_ROW.get(k, k): getattr(self, k) for k in _fields()}

    # --- the manifest entry (docs/FORMAT.md section 5)
    @classmethod
    def of_entry(cls, e: dict) -> "Layout":
        return cls(**{k: e[_ENTRY.get(k, k)] for k in _fields()})

    def entry_fields(self) -> dict[str, Any]:
        return {_ENTRY.get(k, k): getattr(self, k) for k in _fields()}

    # --- the share payload (docs/FORMAT.md section 6.3)
    @classmethod
    def of_payload(cls, p: dict) -> "Layout":
        """From a checked payload (it carries no chunk size, key id or head length)."""
        pub = p["public"]
        erasure = pub["mode"] == "erasure"
        return cls(size=p["size"], digest=p["digest"], digest_alg=p["digest_alg"],
                   scheme=p["scheme"], head_len=0, chunk_log2=None, puf_len=p["puf_len"],
                   prf_len=p["prf_len"], prf_digest=p["prf_digest"], key_id=None,
                   mode=pub["mode"], k=pub["k"] if erasure else None,
                   n=pub["n"] if erasure else None, block=pub["block"] if erasure else None)

    def payload_fields(self) -> dict[str, Any]:
        pub: dict[str, Any] = {"mode": self.mode}
        if self.mode == "erasure":
            pub.update(k=self.k, n=self.n, block=self.block)
        return {"size": self.size, "digest": self.digest, "digest_alg": self.digest_alg,
                "scheme": self.scheme, "puf_len": self.puf_len, "prf_len": self.prf_len,
                "prf_digest": self.prf_digest, "public": pub}


def _fields() -> tuple[str, ...]:
    return tuple(Layout.__dataclass_fields__)
