"""Which ranges of one pack to fetch when several of its members are wanted at once (bulk
restore, recover): each member's aligned covering range (§8.4), merged with the next one
when the bytes between them cost less than another request. Pure."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .reader import covering_range

#: Wanted ranges at most this far apart are fetched as one: on a link of ~100 MB/s, 2 MiB
#: take about as long as the round trip of one more request to a cloud store.
MERGE_GAP = 2 << 20


@dataclass(frozen=True)
class Span:
    """One ranged read of a pack, and the members (by their index in the request) it serves."""

    start: int
    length: int
    members: tuple[int, ...]

    @property
    def end(self) -> int:
        return self.start + self.length


def plan_spans(members: Sequence[tuple[int, int]], size: int, gap: int = MERGE_GAP,
               align: int = 1 << 16) -> list[Span]:
    """The reads that cover `members` ((offset, length) each) of a `size`-byte pack, in
    pack order: whole aligned blocks, so a store that logs Range headers still learns no
    member's boundaries. An empty member needs no read and is in no span."""
    ranges = sorted((covering_range(off, ln, size, align), i)
                    for i, (off, ln) in enumerate(members) if ln)
    spans: list[Span] = []
    for (start, n), i in ranges:
        last = spans[-1] if spans else None
        if last is not None and start <= last.end + gap:
            end = max(last.end, start + n)
            spans[-1] = Span(last.start, end - last.start, last.members + (i,))
        else:
            spans.append(Span(start, n, (i,)))
    return spans
