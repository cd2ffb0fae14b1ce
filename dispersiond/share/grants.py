"""Standing grants: a bundle of every newly committed file for each grant in the config."""
from __future__ import annotations

from pathlib import Path

from ..errors import DispersiondError
from ..logs import log
from .errors import ShareError
from .issue import _audit, bundle_name, create_bundle


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

