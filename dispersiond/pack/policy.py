"""Pack settings with their defaults and bounds. Not yet a section of the daemon's config:
the wiring adds it there as `pack:`; until then `load_policy` gives the same one-line errors."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ..errors import ConfigError
from ..units import parse_duration, parse_size

MiB = 1 << 20


class PackPolicy(BaseModel):
    """Sizes accept 1MiB-style text or bytes; durations 5s-style text or seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: int = 1 * MiB        # a file whose fragments are smaller is packed
    pack_size: int = 16 * MiB       # a pack is flushed when its members reach this
    max_wait: float = 5.0           # seconds a packed record may wait for its flush
    prune_dead_fraction: float = 0.3
    sweep_grace: float = 24 * 3600.0  # seconds an unreferenced pack is kept before deletion

    @field_validator("threshold", "pack_size", mode="before")
    @classmethod
    def _size(cls, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise ValueError("must be a size such as 1MiB or a number of bytes")
        return parse_size(v)

    @field_validator("max_wait", "sweep_grace", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise ValueError("must be a duration such as 5s, 30m, 24h or a number of seconds")
        return parse_duration(v).total_seconds()

    @model_validator(mode="after")
    def _bounds(self) -> "PackPolicy":
        if not 1 <= self.threshold <= self.pack_size:
            raise ValueError(f"threshold must be at least 1 byte and at most pack_size "
                             f"({self.pack_size} bytes); got {self.threshold}")
        if not 64 * 1024 <= self.pack_size <= 1 << 30:
            raise ValueError(f"pack_size must be between 64KiB and 1GiB; got {self.pack_size}")
        if not 0 < self.max_wait <= 3600:
            raise ValueError(f"max_wait must be more than 0 s and at most 1h; got {self.max_wait}")
        if not 0 < self.prune_dead_fraction <= 1:
            raise ValueError("prune_dead_fraction must be more than 0 and at most 1; "
                             f"got {self.prune_dead_fraction}")
        if self.sweep_grace < 3600:
            raise ValueError("sweep_grace must be at least 1h (a pack is unreferenced until its "
                             f"members commit); got {self.sweep_grace} s")
        return self


def load_policy(raw: Any, where: str = "pack") -> PackPolicy:
    """A PackPolicy from a config mapping, or a ConfigError with one line per problem."""
    if raw is None:
        return PackPolicy()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping of settings")
    try:
        return PackPolicy.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join([where, *map(str, err["loc"])])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown setting (known: " + ", ".join(PackPolicy.model_fields) + ")"
            lines.append(f"{key}: {msg}")
        raise ConfigError("; ".join(lines)) from None
