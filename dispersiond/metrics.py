"""Prometheus metrics of the daemon, as a node_exporter textfile and/or a loopback endpoint.

What a clinic alerts on: files per state, how long the oldest pending file has waited,
bytes, requests and errors per store, whether a store is failing, and when the last
verify and manifest backup succeeded. Values come from the state database (through
StateDB's methods), the daemon's status document and the per-store traffic counters;
no file id, name or size of a single file is ever a label or a value.

`families()` is pure (a snapshot in, metric families out); `Exporter` is the shell that
takes snapshots, writes the textfile atomically on its schedule and serves scrapes.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from . import __version__
from .config import Config, Metrics
from .errors import ConfigError
from .fsutil import atomic_output
from .logs import log
from .state import STATES, StateDB
from .traffic import TRAFFIC, StoreTraffic, Traffic

#: Meta keys holding the last successes, so they survive a restart of the daemon.
LAST_VERIFY = "metrics:last_verify"
LAST_BACKUP = "metrics:last_manifest_backup"


@dataclass
class Snapshot:
    """Everything the metrics are made of, taken at one instant."""

    now: float
    stores: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    oldest_pending_since: float | None = None
    store_status: list[dict] = field(default_factory=list)
    daemon: dict[str, Any] | None = None
    traffic: dict[str, StoreTraffic] = field(default_factory=dict)
    last_verify: dict[str, Any] | None = None  # the last verify that ran to its end
    last_backup: float | None = None


def verify_succeeded(res: dict[str, Any] | None) -> bool:
    """A verify that ran over everything (findings or not): skipped, interrupted and
    failed runs say nothing about the data."""
    return bool(res) and not any(res.get(k) for k in ("skipped", "interrupted", "error")) \
        and "at" in res


def families(snap: Snapshot) -> list[Metric]:
    d = snap.daemon or {}
    out: list[Metric] = []

    def gauge(name: str, doc: str, value: float | None, labels: dict[str, str] | None = None,
              family: GaugeMetricFamily | None = None) -> GaugeMetricFamily:
        fam = family or GaugeMetricFamily(name, doc, labels=list(labels or {}))
        if value is not None:
            fam.add_metric(list((labels or {}).values()), float(value))
        if family is None:
            out.append(fam)
        return fam

    info = GaugeMetricFamily("dispersiond_build_info", "Version of the running dispersiond.",
                             labels=["version"])
    info.add_metric([__version__], 1)
    out.append(info)
    gauge("dispersiond_up", "1 while the daemon runs its pipeline, 0 once it stopped.",
          1 if d.get("state") == "running" else 0)
    if d.get("started"):
        gauge("dispersiond_start_time_seconds", "When the daemon started (Unix time).",
              d["started"])
    files = GaugeMetricFamily("dispersiond_files", "Files per pipeline state (failed: "
                              "quarantined).", labels=["state"])
    for state in STATES:
        files.add_metric([state], snap.counts.get(state, 0))
    out.append(files)
    age = 0.0 if snap.oldest_pending_since is None else max(0.0, snap.now -
                                                             snap.oldest_pending_since)
    gauge("dispersiond_oldest_pending_age_seconds", "Age of the oldest file not yet done "
          "(0 when none is pending).", age)
    gauge("dispersiond_inbox_waiting_files", "Files seen in the inbox, not yet stable.",
          d.get("waiting_in_inbox", 0))
    gauge("dispersiond_intake_paused", "1 while intake is paused (disk full).",
          1 if d.get("intake") == "paused" else 0)
    gauge("dispersiond_uploads_held", "1 while uploads wait for the upload window.",
          1 if d.get("uploads") == "held" else 0)

    status = {r["store"]: r for r in snap.store_status}
    live = d.get("stores") or {}
    counters = {
        "sent": CounterMetricFamily("dispersiond_store_sent_bytes", "Bytes sent to the store.",
                                    labels=["store"]),
        "received": CounterMetricFamily("dispersiond_store_received_bytes",
                                        "Bytes read from the store.", labels=["store"]),
        "requests": CounterMetricFamily("dispersiond_store_requests", "Requests to the store.",
                                        labels=["store", "op"]),
        "errors": CounterMetricFamily("dispersiond_store_errors", "Requests the store failed "
                                      "(not found and already exists are answers, not errors).",
                                      labels=["store"]),
    }
    failing = GaugeMetricFamily("dispersiond_store_failing", "1 while the store's last answer "
                                "was an error (it is backing off).", labels=["store"])
    failures = GaugeMetricFamily("dispersiond_store_consecutive_failures",
                                 "Failures since the store last answered.", labels=["store"])
    last_ok = GaugeMetricFamily("dispersiond_store_last_success_timestamp_seconds",
                                "When the store last confirmed an upload (Unix time).",
                                labels=["store"])
    for name in snap.stores:
        t = snap.traffic.get(name) or StoreTraffic()
        counters["sent"].add_metric([name], t.sent_bytes)
        counters["received"].add_metric([name], t.received_bytes)
        for op in sorted(t.requests or {}):
            counters["requests"].add_metric([name, op], t.requests[op])
        counters["errors"].add_metric([name], t.errors)
        row, now_live = status.get(name) or {}, live.get(name) or {}
        n_fail = int(now_live.get("failures") or 0)
        stale_error = (row.get("error_at") or 0) > (row.get("last_ok") or 0)
        failing.add_metric([name], 1 if n_fail or (stale_error and not d) else 0)
        failures.add_metric([name], n_fail)
        if row.get("last_ok"):
            last_ok.add_metric([name], row["last_ok"])
    out += [*counters.values(), failing, failures, last_ok]

    if snap.last_verify:
        gauge("dispersiond_last_verify_success_timestamp_seconds",
              "When the last complete verify started (Unix time).", snap.last_verify["at"])
        gauge("dispersiond_last_verify_problems", "Objects the last complete verify found "
              "missing or corrupt (run 'dispersiond repair').",
              snap.last_verify.get("problems", 0))
        gauge("dispersiond_last_verify_unrestorable_files", "Files the last complete verify "
              "found unrestorable.", snap.last_verify.get("unrestorable", 0))
    if snap.last_backup:
        gauge("dispersiond_last_manifest_backup_timestamp_seconds",
              "When a manifest backup last landed on a private store (Unix time).",
              snap.last_backup)
    return out


def render(snap: Snapshot) -> bytes:
    """The Prometheus text format of one snapshot."""
    return generate_latest(_Fixed(families(snap)))


class _Fixed(Collector):
    def __init__(self, fams: Iterable[Metric]) -> None:
        self.fams = list(fams)

    def collect(self) -> Iterator[Metric]:
        return iter(self.fams)


class Exporter(Collector):
    """The daemon's metrics: `update()` from the status writes, textfile and endpoint."""

    def __init__(self, cfg: Config, db: StateDB, traffic: Traffic = TRAFFIC) -> None:
        self.mcfg: Metrics | None = cfg.metrics
        self.stores = [s.name for s in cfg.stores]
        self.db, self.traffic = db, traffic
        self.daemon: dict[str, Any] | None = None
        self.written_at = 0.0  # monotonic
        self.write_failed = False
        self.server = None
        self.textfile: Path | None = None
        if self.mcfg is None:
            return
        if self.mcfg.textfile:
            self.textfile = cfg.path(self.mcfg.textfile)
            folder = self.textfile.parent
            if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
                raise ConfigError(f"metrics.textfile: the daemon's user cannot write to {folder} "
                                  "(create it, give the daemon's user write access, and list it "
                                  "in ReadWritePaths= of the unit)")
        if self.mcfg.listen:
            self._listen(*self.mcfg.address())

    def _listen(self, host: str, port: int) -> None:
        from prometheus_client.exposition import start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        try:
            self.server, _ = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise ConfigError(f"metrics.listen: cannot listen on {host}:{port} "
                              f"({exc.strerror or exc}); pick a free port") from None

    @property
    def enabled(self) -> bool:
        return self.mcfg is not None

    def snapshot(self) -> Snapshot:
        return Snapshot(now=time.time(), stores=self.stores, counts=self.db.counts(),
                        oldest_pending_since=self.db.oldest_pending_since(),
                        store_status=self.db.store_status(), daemon=self.daemon,
                        traffic=self.traffic.snapshot(),
                        last_verify=_json_meta(self.db, LAST_VERIFY),
                        last_backup=_json_meta(self.db, LAST_BACKUP))

    def collect(self) -> Iterator[Metric]:  # a scrape of the endpoint
        return iter(families(self.snapshot()))

    def update(self, doc: dict[str, Any], final: bool = False) -> None:
        """Called with each status document the daemon writes; rewrites the textfile when
        its interval has passed (and once more on the way out)."""
        if self.mcfg is None:
            return
        self.daemon = doc
        self._remember(doc)
        now = time.monotonic()
        if self.textfile and (final or now - self.written_at >= self.mcfg.seconds()):
            self.written_at = now
            self.write()
        if final and self.server is not None:
            self.server.shutdown()
            self.server = None

    def _remember(self, doc: dict[str, Any]) -> None:
        """Last successes, kept in the database so a restart does not forget them."""
        verify = doc.get("last_verify")
        if verify_succeeded(verify):
            old = _json_meta(self.db, LAST_VERIFY) or {}
            if verify["at"] > old.get("at", 0):
                keep = {k: verify.get(k) for k in ("at", "problems", "unrestorable")}
                self.db.set_meta(LAST_VERIFY, json.dumps(keep))
        backup = doc.get("last_manifest_backup")
        if backup and backup > (_json_meta(self.db, LAST_BACKUP) or 0):
            self.db.set_meta(LAST_BACKUP, json.dumps(backup))

    def write(self) -> None:
        """The textfile, replaced atomically (node_exporter never reads half of it), mode
        0644 so node_exporter's user can read it: it holds counts, never a file's name."""
        assert self.textfile is not None
        try:
            with atomic_output(self.textfile, mode=0o644) as f:
                f.write(render(self.snapshot()))
            if self.write_failed:
                log.info("metrics textfile written again")
            self.write_failed = False
        except OSError as exc:
            if not self.write_failed:
                log.warning("cannot write the metrics textfile %s (%s); retrying at the next "
                            "interval", self.textfile, exc.strerror or exc)
            self.write_failed = True


def _json_meta(db: StateDB, key: str) -> Any:
    raw = db.get_meta(key)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


__all__ = ["Exporter", "Snapshot", "families", "render", "verify_succeeded"]
