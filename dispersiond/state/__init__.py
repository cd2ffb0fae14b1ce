"""The local state database (SQLite, WAL): files, where their objects live, audit log,
and the records that make every step crash-safe. Every SQL statement of dispersiond
lives in this package; the rest calls named methods.

Rooms: schema (tables, migrations), model (FileState and its transitions, rows), db
(connection, transactions, meta), and one module per area of queries.
"""
from __future__ import annotations

import json
from typing import Any

from .audit_rows import AuditMixin
from .backups import BackupsMixin, ChainTip
from .containers import ContainersMixin
from .db import Conn
from .files import FINISHABLE, FilesMixin
from .model import (PROTECTED, STATES, TRANSITIONS, FileRow, FileState, IllegalTransition,
                    ObjectRow, ObjectState, PackRow, check_transition)
from .objects import ObjectsMixin
from .packs import PACK_PLAN, PacksMixin, PlacedMember
from .prune_rows import MovedMember, PruneMixin
from .peek import peek, peek_counts, peek_done, peek_planned, read_status
from .recovery import RecoveryMixin
from .rekey_rows import RekeyMixin
from .request_rows import RequestsMixin
from .share_copies import ShareCopiesMixin, ShareCopy
from .schema import SCHEMA_VERSION
from .segments import SegmentLanding, SegmentRow, SegmentsMixin
from .stores import StoresMixin
from .trash import TrashMixin


class StateDB(FilesMixin, ObjectsMixin, TrashMixin, BackupsMixin, RekeyMixin, AuditMixin,
              StoresMixin, RecoveryMixin, RequestsMixin, PacksMixin, PruneMixin,
              ShareCopiesMixin, SegmentsMixin, ContainersMixin):
    """A thread-safe handle on the state database (one connection, one lock)."""


def dumps(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces): what hashes and backups are made of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


__all__ = ["FINISHABLE", "PROTECTED", "SCHEMA_VERSION", "STATES", "TRANSITIONS", "ChainTip", "Conn",
           "FileRow", "FileState", "IllegalTransition", "MovedMember", "ObjectRow", "ObjectState",
           "PACK_PLAN", "PackRow", "PlacedMember", "SegmentLanding", "SegmentRow", "ShareCopy", "StateDB",
           "check_transition", "dumps", "peek", "peek_counts", "peek_done", "peek_planned",
           "read_status"]
