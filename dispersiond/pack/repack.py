"""What prune does with one pack, decided from the pack's members and the live set alone."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Literal, Sequence

from .members import PackMember


@dataclass(frozen=True)
class RepackPlan:
    """`keep` is copied, in pack order, into a new pack before the old one is trashed."""

    action: Literal["keep", "repack", "delete"]
    keep: tuple[PackMember, ...]
    drop: tuple[PackMember, ...]
    dead_fraction: float


def plan_repack(members: Sequence[PackMember], live: Collection[bytes],
                dead_fraction: float = 0.3) -> RepackPlan:
    """Dead share by bytes (by count for a pack of only empty members); a pack with no live
    member is deleted, one whose dead share reaches `dead_fraction` is repacked."""
    live = set(live)
    keep = tuple(m for m in members if m.ref in live)
    drop = tuple(m for m in members if m.ref not in live)
    total = sum(m.length for m in members)
    if total:
        share = sum(m.length for m in drop) / total
    else:
        share = len(drop) / len(members) if members else 1.0
    if not keep:
        return RepackPlan("delete", keep, drop, share)
    if drop and share >= dead_fraction:
        return RepackPlan("repack", keep, drop, share)
    return RepackPlan("keep", keep, drop, share)
