"""What a de-identification returns or raises: the shared vocabulary of the format modules."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..errors import DispersiondError


class DeidRefused(DispersiondError):
    """A file cannot be de-identified under the policy; the message says why and what to do.

    Messages name the format, the rule and the setting, never a value from the file.
    """


@dataclass(frozen=True)
class DeidResult:
    """The de-identified bytes and what was done to make them.

    `report` counts actions (e.g. {"removed": 12, "pseudonymised": 3}); it never holds a
    removed value, so it can go to the audit log as it is.
    """

    data: bytes
    kind: str
    warnings: tuple[str, ...] = ()
    report: dict[str, int] = field(default_factory=dict)


class Tally:
    """Counts per action and collects warnings while one file is processed."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.warnings: list[str] = []

    def add(self, action: str, n: int = 1) -> None:
        self.counts[action] += n

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def result(self, data: bytes, kind: str) -> DeidResult:
        return DeidResult(data=data, kind=kind, warnings=tuple(self.warnings),
                          report=dict(sorted(self.counts.items())))
