"""The YAML configuration: stores, trust levels, placement policies, keys, schedules.

Validated with pydantic so that every mistake is reported with its key path and
what is allowed; unknown keys are rejected (a typo must not silently fall back
to a default). Credentials never live here: only the names of environment
variables, or the SDKs' own credential chains.
"""
from __future__ import annotations

import os
import re
from datetime import time as dtime
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError,
                      field_validator, model_validator)

from .codec import compress
from .deid.policy import DeidPolicy, DicomPolicy
from .errors import ConfigError
from .pack.policy import PackPolicy
from .units import parse_duration as _parse_duration
from .units import parse_size as _parse_size

NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"


def parse_duration(value: Any) -> timedelta:
    """A duration setting; one out of range is a ValueError (a setting's error, not a crash)."""
    try:
        return _parse_duration(value)
    except (OverflowError, TypeError):
        raise ValueError(f"not a duration this build can hold: {str(value)[:40]!r} "
                         "(examples: 90s, 30m, 72h, 7d)") from None


def parse_size(value: Any) -> int:
    """A size setting; one out of range is a ValueError."""
    try:
        return _parse_size(value)
    except (OverflowError, TypeError):
        raise ValueError(f"not a size this build can hold: {str(value)[:40]!r} "
                         "(examples: 512KiB, 64MiB, 1GiB)") from None
_SECRET_SETTINGS = {"secret_access_key", "access_key_id", "session_token", "account_key",
                    "sas_token", "connection_string", "password", "private_key", "credentials",
                    "signing_key"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class StoreConfig(BaseModel):
    """One bucket, container or directory.

    Besides name/type/trust/prefix, every setting is handed to the store type's
    backend (backends/<type>.py) and checked against it at load time: e.g. `path`
    (local), `bucket`/`endpoint_url`/`region` (s3), `bucket`/`endpoint`/`project`
    (gcs), `container`/`connection_string_env`/`account_url` (azure). Settings
    ending in `_env` name an environment variable; the secret stays there.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    name: Annotated[str, Field(pattern=NAME)]
    type: Literal["local", "s3", "gcs", "azure"]
    trust: str
    prefix: str = ""

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if v and (v.startswith("/") or ".." in v.split("/") or not v.endswith("/")):
            raise ValueError("prefix must be relative and end with '/' (e.g. 'dispersiond/')")
        return v

    @model_validator(mode="after")
    def _settings(self) -> "StoreConfig":
        import inspect

        from backends import KINDS

        extra = dict(self.model_extra or {})
        for key, value in extra.items():
            if key.endswith("_env") and not (isinstance(value, str) and re.fullmatch(
                    r"[A-Za-z_][A-Za-z0-9_]*", value)):
                raise ValueError(f"'{key}' must be the NAME of an environment variable, "
                                 "not a credential")
            if key in _SECRET_SETTINGS:
                raise ValueError(f"'{key}': credentials never go in the config; use "
                                 f"'{key}_env' with the name of an environment variable")
        module, cls_name = KINDS[self.type]
        import importlib

        cls = getattr(importlib.import_module(f"backends.{module}"), cls_name)
        try:
            inspect.signature(cls).bind("x", **self.backend_settings())
        except TypeError as exc:
            allowed = [p for p in inspect.signature(cls).parameters if p != "name"]
            raise ValueError(f"{exc}; settings a {self.type} store takes: "
                             f"{', '.join(allowed)}") from None
        return self

    def backend_settings(self) -> dict[str, Any]:
        """Settings handed to the backend factory; '8MiB'-style sizes become integers."""
        out = {}
        for key, value in (self.model_extra or {}).items():
            if key.endswith("_size") and isinstance(value, str):
                value = parse_size(value)
            out[key] = value
        return out


class PublicPolicy(_Strict):
    """Where public fragments go: whole copies, or k-of-n erasure-coded shards."""

    mode: Literal["replicate", "erasure"] = "replicate"
    stores: list[str] = Field(min_length=1)
    copies: int | None = Field(default=None, ge=1)
    k: int | None = Field(default=None, ge=1)
    pad: Literal["none", "padme"] = "padme"

    @model_validator(mode="after")
    def _shape(self) -> "PublicPolicy":
        if len(set(self.stores)) != len(self.stores):
            raise ValueError("a store is listed twice")
        if self.mode == "replicate":
            if self.k is not None:
                raise ValueError("'k' is for mode: erasure")
            if self.copies is not None and self.copies > len(self.stores):
                raise ValueError(f"copies={self.copies} but only {len(self.stores)} stores listed")
        else:
            if self.copies is not None:
                raise ValueError("'copies' is for mode: replicate")
            if self.k is None:
                raise ValueError("mode: erasure needs 'k' (any k of the listed stores rebuild a file)")
            if not 1 <= self.k <= len(self.stores):
                raise ValueError(f"k={self.k} must be between 1 and the number of stores "
                                 f"({len(self.stores)})")
            if len(self.stores) > 256:
                raise ValueError("erasure coding supports at most 256 stores")
        return self

    @property
    def n(self) -> int:
        if self.mode == "erasure":
            return len(self.stores)
        return self.copies or len(self.stores)


class PrivatePolicy(_Strict):
    """Where private containers are backed up (the device always keeps its own copy)."""

    min_trust: str
    stores: list[str] = Field(min_length=1)


class KeyConfig(_Strict):
    """The master key: a raw 32-byte file, or a passphrase from the environment (Argon2id)."""

    file: str | None = None
    passphrase_env: str | None = None
    # Passphrase derivation (written by `dispersiond init --passphrase`; not secret).
    kdf: Literal["argon2id", "scrypt"] = "argon2id"
    salt: str | None = None

    @model_validator(mode="after")
    def _one(self) -> "KeyConfig":
        if (self.file is None) == (self.passphrase_env is None):
            raise ValueError("give exactly one of 'file' or 'passphrase_env'")
        if self.passphrase_env is not None and not (self.salt and re.fullmatch(
                r"[0-9a-f]{32,128}", self.salt)):
            raise ValueError("passphrase_env needs 'salt' (hex, written by 'dispersiond init "
                             "--passphrase')")
        return self


class Schedule(_Strict):
    rescan: str = "60s"
    verify: str | None = "24h"
    prune: str | None = "24h"  # repack dead bytes out of packs, sweep unreferenced packs
    manifest_backup: str = "15m"
    upload_window: str | None = None  # "01:00-05:00", local time
    bandwidth_limit: str | int | None = None  # bytes per second, e.g. "2MB"
    retry_base: str = "5s"
    retry_max: str = "15m"

    @field_validator("rescan", "manifest_backup", "retry_base", "retry_max")
    @classmethod
    def _dur(cls, v: str) -> str:
        parse_duration(v)
        return v

    @field_validator("verify", "prune")
    @classmethod
    def _opt_dur(cls, v: str | None) -> str | None:
        if v is not None:
            parse_duration(v)
        return v

    @field_validator("upload_window")
    @classmethod
    def _window(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"\d\d:\d\d-\d\d:\d\d", v):
            raise ValueError("upload_window must look like 01:00-05:00")
        if v is not None:
            a, b = v.split("-")
            dtime.fromisoformat(a), dtime.fromisoformat(b)
        return v

    @field_validator("bandwidth_limit")
    @classmethod
    def _bw(cls, v):
        if v is not None:
            parse_size(v)
        return v

    def seconds(self, field: str) -> float | None:
        value = getattr(self, field)
        return None if value is None else parse_duration(value).total_seconds()

    def window(self) -> tuple[dtime, dtime] | None:
        if not self.upload_window:
            return None
        a, b = self.upload_window.split("-")
        return dtime.fromisoformat(a), dtime.fromisoformat(b)

    def bandwidth(self) -> int | None:
        return None if self.bandwidth_limit is None else parse_size(self.bandwidth_limit)


class Metrics(_Strict):
    """Prometheus metrics: a node_exporter textfile, a loopback HTTP endpoint, or both."""

    textfile: str | None = None  # e.g. /var/lib/dispersiond/metrics/dispersiond.prom
    interval: str = "60s"        # how often the textfile is rewritten
    listen: str | None = None    # "127.0.0.1:9464"
    # The endpoint has no authentication: only a loopback address unless this says so.
    allow_remote: bool = False

    @field_validator("interval")
    @classmethod
    def _interval(cls, v: str) -> str:
        if parse_duration(v).total_seconds() < 1:
            raise ValueError("interval must be at least 1s")
        return v

    @field_validator("textfile")
    @classmethod
    def _textfile(cls, v: str | None) -> str | None:
        if v is not None and not v.endswith(".prom"):
            raise ValueError("textfile must end in .prom (node_exporter reads only those)")
        return v

    @model_validator(mode="after")
    def _where(self) -> "Metrics":
        if self.textfile is None and self.listen is None:
            raise ValueError("give 'textfile' (a .prom file for node_exporter) and/or "
                             "'listen' (e.g. 127.0.0.1:9464), or leave 'metrics' out")
        if self.listen is not None:
            host, _ = self.address()
            if not self.allow_remote and not _loopback(host):
                raise ValueError(f"listen: {host} is not a loopback address and the endpoint "
                                 "has no authentication; use 127.0.0.1 (scrape through a "
                                 "proxy), or set allow_remote: true")
        return self

    def address(self) -> tuple[str, int]:
        """(host, port) of `listen`; '[::1]:9464' for IPv6."""
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})",
                         self.listen or "")
        if not m:
            raise ValueError(f"listen: {self.listen!r} must be HOST:PORT, e.g. 127.0.0.1:9464")
        host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        if not 1 <= int(port) <= 65535:
            raise ValueError(f"listen: port {port} is not between 1 and 65535")
        return host, int(port)

    def seconds(self) -> float:
        return parse_duration(self.interval).total_seconds()


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


Role = Literal["doctor", "institute", "authority", "other"]


class Recipient(_Strict):
    """Someone a file may be shared with (paper sections 3.1 and 4.2).

    The role decides what a share hands over (docs/SECURITY.md, "What each role gets"):
    `doctor`, the responsible doctor, gets the record as stored; `institute`, `authority`
    and `other` get a de-identified derivative under `deid` (or the role's defaults), and
    an identified share to them takes `--identified --reason TEXT`, which is audited.
    `request_key` (dspsig1..., printed by the recipient's `keygen`) lets the recipient
    send signed consent requests; without it their requests are refused.
    """

    name: Annotated[str, Field(pattern=NAME)]
    public_key: str
    role: Role = "other"
    request_key: str | None = None
    deid: DeidPolicy | None = None

    @model_validator(mode="after")
    def _role_policy(self) -> "Recipient":
        if self.role == "doctor" and self.deid is not None:
            raise ValueError("a doctor gets records as stored: 'deid' applies only to "
                             "institute, authority and other recipients")
        return self

    @property
    def identified(self) -> bool:
        """Whether this recipient's role gets the record as stored."""
        return self.role == "doctor"

    def policy(self) -> DeidPolicy:
        """The de-identification policy: the entry's own, or its role's default."""
        return self.deid if self.deid is not None else role_policy(self.role)


def role_policy(role: str) -> DeidPolicy:
    """Per-role defaults. The health authority follows an outbreak over time, so its DICOM
    dates are shifted per patient (intervals kept) rather than removed; every other
    default is the strictest the format allows."""
    if role == "authority":
        return DeidPolicy(dicom=DicomPolicy(retain_modified_dates=True))
    return DeidPolicy()


class Grant(_Strict):
    """A standing grant: every newly protected file is shared with `recipient`."""

    recipient: str
    outbox: str
    expires: str = "72h"
    with_name: bool = False

    @field_validator("expires")
    @classmethod
    def _expires(cls, v: str) -> str:
        parse_duration(v)
        return v


class Config(_Strict):
    version: Literal[1] = 1
    state_dir: str
    inbox: str | None = None
    key: KeyConfig
    # Stored files always use se2; paper-v1 exists for `se`, `bench` and `analyze` only.
    scheme: Literal["se2"] = "se2"
    # What new files' digests are made with (see docs/FORMAT.md §3); sha256 for sites
    # that require a FIPS 180-4 hash. Files keep the algorithm they were protected with.
    digest: Literal["blake3", "sha256"] = "blake3"
    trust_levels: list[str] = Field(default_factory=lambda: ["untrusted", "trusted"], min_length=2)
    stores: list[StoreConfig] = Field(min_length=1)
    public: PublicPolicy
    private: PrivatePolicy
    dicom_header: bool = True
    # Compression before selective encryption (docs/FORMAT.md 2.4): off, auto (zstd level 3
    # when a quick trial says it pays) or zstd:LEVEL (1..19). One encode feeds every store,
    # so it is a setting of the file, not of a store.
    compression: str = "auto"
    # Small files' fragments go into pack objects (docs/FORMAT.md section 8): the size
    # below which a fragment is packed, the pack size, the longest a record waits for its
    # pack's flush, prune's dead share and the sweep's grace.
    pack: PackPolicy = PackPolicy()
    after: Literal["keep", "delete", "move"] = "keep"
    after_move_to: str | None = None
    stable_seconds: float = Field(default=5.0, ge=0)
    quarantine_dir: str | None = None
    min_free_space: str | int = "64MiB"
    upload_workers: int = Field(default=4, ge=1, le=64)
    #: Part buffers of all uploads together (backends/budget.py): each upload always has
    #: one part in flight; more only while all parts fit in this.
    upload_memory: str | int = "32MiB"
    schedule: Schedule = Schedule()
    recipients: list[Recipient] = Field(default_factory=list)
    grants: list[Grant] = Field(default_factory=list)
    metrics: Metrics | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        if len(set(self.trust_levels)) != len(self.trust_levels):
            raise ValueError("trust_levels: a level is listed twice")
        names = [s.name for s in self.stores]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"stores: name {sorted(dup)[0]!r} is used twice")
        for s in self.stores:
            if s.trust not in self.trust_levels:
                raise ValueError(f"stores: {s.name!r} has trust {s.trust!r}; allowed: "
                                 f"{', '.join(self.trust_levels)}")
        for policy, refs in (("public", self.public.stores), ("private", self.private.stores)):
            for ref in refs:
                if ref not in names:
                    raise ValueError(f"{policy}.stores: no store named {ref!r} (defined: "
                                     f"{', '.join(names)})")
        if self.private.min_trust not in self.trust_levels:
            raise ValueError(f"private.min_trust {self.private.min_trust!r} is not a trust level "
                             f"({', '.join(self.trust_levels)})")
        floor = self.trust_levels.index(self.private.min_trust)
        if floor == 0:
            raise ValueError(f"private.min_trust {self.private.min_trust!r} is the lowest trust "
                             "level: private containers must never go to untrusted stores")
        for ref in self.private.stores:
            store = self.store(ref)
            if self.trust_levels.index(store.trust) < floor:
                raise ValueError(
                    f"private.stores: {ref!r} has trust {store.trust!r}, below private.min_trust "
                    f"{self.private.min_trust!r}: a private container must not go there")
        if set(self.public.stores) & set(self.private.stores):
            raise ValueError("a store is both a public and a private store: keep them apart")
        if self.after == "move" and not self.after_move_to:
            raise ValueError("after: move needs 'after_move_to'")
        try:
            compress.Policy.parse(self.compression)
        except ValueError as exc:
            raise ValueError(f"compression: {exc}") from None
        rnames = [r.name for r in self.recipients]
        for g in self.grants:
            if g.recipient not in rnames:
                raise ValueError(f"grants: recipient {g.recipient!r} is not in recipients")
        return self

    @field_validator("min_free_space")
    @classmethod
    def _free(cls, v: str | int) -> str | int:
        parse_size(v)
        return v

    @field_validator("upload_memory")
    @classmethod
    def _upload_memory(cls, v: str | int) -> str | int:
        if parse_size(v) < 0:
            raise ValueError("upload_memory must not be negative")
        return v

    def store(self, name: str) -> StoreConfig:
        for s in self.stores:
            if s.name == name:
                return s
        raise KeyError(name)

    def recipient(self, name: str) -> Recipient | None:
        return next((r for r in self.recipients if r.name == name), None)

    # The config file's folder: relative paths in the file are resolved against it.
    _base: Path = PrivateAttr(default=Path("."))

    def path(self, value: str) -> Path:
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else self._base / p

    @property
    def state_path(self) -> Path:
        return self.path(self.state_dir)


DEFAULT_PATHS = ("./dispersiond.yaml", "/etc/dispersiond/dispersiond.yaml")


def find_config(explicit: str | None) -> Path:
    """The config file to use: -c, then $DISPERSIOND_CONFIG, then the default places."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("DISPERSIOND_CONFIG")
    if env:
        return Path(env)
    for candidate in DEFAULT_PATHS:
        if Path(candidate).exists():
            return Path(candidate)
    raise ConfigError("no configuration file: pass -c CONFIG, set DISPERSIOND_CONFIG, or "
                      "create one with 'dispersiond init'")


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate a config file; every problem becomes one actionable ConfigError
    of one line (it is what a unit's journal and a terminal show)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc} (check the path "
                          "and that this user may read it)") from None
    return parse_config(_parse_yaml(data, path), base=path.resolve().parent, source=str(path))


def _parse_yaml(data: bytes, path: Path) -> dict:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {path} is not UTF-8 text (byte {exc.start} is "
                          f"0x{data[exc.start]:02x}): give the YAML config file, saved as "
                          "UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = _one_line(exc.problem or exc.context or "syntax error")
        raise ConfigError(f"config {path} is not valid YAML{where}: {what} (fix it; see "
                          "config/dispersiond.example.yaml)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {_one_line(str(exc))}") from None
    except RecursionError:
        raise ConfigError(f"config {path} is not valid YAML: nested too deeply") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping of settings (key: value lines), "
                          f"not {type(raw).__name__ if raw is not None else 'empty'}")
    return raw


def _one_line(text: str, limit: int = 300) -> str:
    """Whitespace runs (newlines too) as one space, cut to `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def parse_config(raw: dict, base: Path = Path("."), source: str = "config") -> Config:
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            where = _name_path(raw, err["loc"]) or where
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown setting (check the spelling; see config/dispersiond.example.yaml)"
            problems.append(f"{_one_line(where, 80)}: {_one_line(msg)}")
        shown = problems[:5] + ([f"and {len(problems) - 5} more"] if len(problems) > 5 else [])
        raise ConfigError(f"{source} is invalid: " + "; ".join(shown)) from None
    cfg._base = base
    return cfg


def _name_path(raw: Any, loc: tuple) -> str:
    """Key path with list items named by their 'name' (stores[aws].bucket), when possible."""
    parts, node = [], raw
    for p in loc:
        if isinstance(p, int) and isinstance(node, list) and p < len(node):
            item = node[p]
            label = item.get("name") if isinstance(item, dict) else None
            parts[-1:] = [f"{parts[-1]}[{label or p}]"] if parts else [f"[{p}]"]
            node = item
        else:
            parts.append(str(p))
            node = node.get(p) if isinstance(node, dict) else None
    return ".".join(parts)
