"""Prometheus metrics: the `metrics:` settings, the counting stores, and a real daemon's
textfile and endpoint scraped and parsed in the text format."""
from __future__ import annotations

import io
import os
import socket
import stat
import urllib.request

import pytest
from daemonctl import DaemonProc, daemon_config, drop, edit_config, wait_until
from prometheus_client.parser import text_string_to_metric_families

from backends import AlreadyExists, NotFound, StoreError, open_store
from dispersiond.config import parse_config
from dispersiond.errors import ConfigError
from dispersiond.metrics import Snapshot, render, verify_succeeded
from dispersiond.traffic import CountingStore, StoreTraffic, Traffic

BASE = {"state_dir": "state", "key": {"file": "k"}, "stores": [
    {"name": "a", "type": "local", "path": "a", "trust": "untrusted"},
    {"name": "v", "type": "local", "path": "v", "trust": "trusted"}],
    "public": {"stores": ["a"]}, "private": {"min_trust": "trusted", "stores": ["v"]}}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a scrape, keyed by (name, sorted labels)."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def one(scrape: dict, name: str, **labels: str) -> float:
    return scrape[(name, tuple(sorted(labels.items())))]


# --- settings

@pytest.mark.parametrize("metrics, expect", [
    ({"listen": "0.0.0.0:9464"}, "not a loopback address"),
    ({"listen": "192.168.1.5:9464"}, "not a loopback address"),
    ({"listen": "example.org:9464"}, "not a loopback address"),
    ({"listen": "127.0.0.1"}, "must be HOST:PORT"),
    ({"listen": "127.0.0.1:70000"}, "between 1 and 65535"),
    ({"textfile": "/var/lib/x/metrics.txt"}, "must end in .prom"),
    ({"textfile": "m.prom", "interval": "0.2s"}, "at least 1s"),
    ({"interval": "10s"}, "give 'textfile'"),
    ({"listen": "127.0.0.1:9464", "port": 1}, "unknown setting"),
])
def test_bad_metrics_settings_are_refused_with_the_reason(metrics, expect):
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, "metrics": metrics})
    assert "metrics" in str(err.value) and expect in str(err.value), str(err.value)


@pytest.mark.parametrize("listen", ["127.0.0.1:9464", "localhost:9464", "[::1]:9464",
                                    "127.0.0.53:1"])
def test_loopback_listen_addresses_are_taken(listen):
    cfg = parse_config({**BASE, "metrics": {"listen": listen}})
    assert cfg.metrics.address()[1] == int(listen.rsplit(":", 1)[1])


def test_a_remote_listen_address_needs_to_be_allowed_explicitly():
    cfg = parse_config({**BASE, "metrics": {"listen": "0.0.0.0:9464", "allow_remote": True}})
    assert cfg.metrics.address() == ("0.0.0.0", 9464)


def test_example_and_device_configs_have_a_valid_metrics_section():
    from dsp import ROOT

    from dispersiond.config import load_config

    for path in (ROOT / "config" / "dispersiond.example.yaml",
                 ROOT / "deploy" / "dispersiond.yaml"):
        cfg = load_config(path)
        assert cfg.metrics is not None and cfg.metrics.textfile.endswith(".prom"), path
    assert "# listen: 127.0.0.1:" in (ROOT / "config" / "dispersiond.example.yaml").read_text()


# --- counting stores

def test_counting_store_counts_bytes_requests_and_only_real_errors(tmp_path):
    traffic = Traffic()
    s = CountingStore(open_store("local", "a", path=str(tmp_path / "a")), traffic)
    s.put("x", io.BytesIO(b"a" * 1000), 1000)
    assert s.get_bytes("x") == b"a" * 1000
    assert s.get_bytes("x", 10, 5) == b"a" * 5
    assert list(s.list()) == ["x"]
    with pytest.raises(NotFound):
        s.stat("missing")
    s.delete("x")
    t = traffic.snapshot()["a"]
    assert (t.sent_bytes, t.received_bytes, t.errors) == (1000, 1005, 0)
    assert t.requests == {"put": 1, "get": 2, "list": 1, "stat": 1, "delete": 1}

    (tmp_path / "a" / "sub").write_bytes(b"")  # a file where a folder of objects must go
    with pytest.raises(StoreError) as err:
        s.put("sub/y", io.BytesIO(b"b"), 1)
    assert not isinstance(err.value, (NotFound, AlreadyExists))
    assert traffic.snapshot()["a"].errors == 1


# --- the text format, from a snapshot

def test_snapshot_renders_every_metric_a_clinic_alerts_on():
    now = 1_700_000_000.0
    snap = Snapshot(
        now=now, stores=["a", "v"], counts={"done": 7, "committed": 2, "failed": 1},
        oldest_pending_since=now - 90, store_status=[
            {"store": "a", "last_ok": now - 5, "last_error": "x", "error_at": now - 1}],
        daemon={"state": "running", "started": now - 100, "intake": "running",
                "uploads": "open", "waiting_in_inbox": 3,
                "stores": {"a": {"failures": 2}, "v": {"failures": 0}}},
        traffic={"a": StoreTraffic(4096, 10, {"put": 3, "get": 1}, 2)},
        last_verify={"at": now - 3600, "problems": 1, "unrestorable": 0},
        last_backup=now - 60)
    m = samples(render(snap).decode())
    assert one(m, "dispersiond_up") == 1
    assert one(m, "dispersiond_files", state="done") == 7
    assert one(m, "dispersiond_files", state="claimed") == 0
    assert one(m, "dispersiond_files", state="failed") == 1
    assert one(m, "dispersiond_oldest_pending_age_seconds") == 90
    assert one(m, "dispersiond_inbox_waiting_files") == 3
    assert one(m, "dispersiond_store_sent_bytes_total", store="a") == 4096
    assert one(m, "dispersiond_store_received_bytes_total", store="a") == 10
    assert one(m, "dispersiond_store_requests_total", store="a", op="put") == 3
    assert one(m, "dispersiond_store_errors_total", store="a") == 2
    assert one(m, "dispersiond_store_errors_total", store="v") == 0
    assert one(m, "dispersiond_store_failing", store="a") == 1
    assert one(m, "dispersiond_store_failing", store="v") == 0
    assert one(m, "dispersiond_store_consecutive_failures", store="a") == 2
    assert one(m, "dispersiond_store_last_success_timestamp_seconds", store="a") == now - 5
    assert one(m, "dispersiond_last_verify_success_timestamp_seconds") == now - 3600
    assert one(m, "dispersiond_last_verify_problems") == 1
    assert one(m, "dispersiond_last_manifest_backup_timestamp_seconds") == now - 60


def test_a_stopped_daemon_reads_down_and_nothing_pending_is_age_zero():
    m = samples(render(Snapshot(now=5.0, stores=["a"], daemon={"state": "stopped"})).decode())
    assert one(m, "dispersiond_up") == 0
    assert one(m, "dispersiond_oldest_pending_age_seconds") == 0
    assert ("dispersiond_last_verify_success_timestamp_seconds", ()) not in m


@pytest.mark.parametrize("res, ok", [
    (None, False), ({"at": 1.0, "problems": 0}, True), ({"at": 1.0, "problems": 3}, True),
    ({"at": 1.0, "skipped": "store(s) a unavailable"}, False),
    ({"at": 1.0, "interrupted": True}, False), ({"at": 1.0, "error": "boom"}, False)])
def test_only_a_verify_that_ran_to_its_end_counts_as_the_last_success(res, ok):
    assert verify_succeeded(res) is ok


# --- a real daemon

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_daemon_writes_the_textfile_and_serves_the_same_metrics(tmp_path):
    cfg = daemon_config(tmp_path)
    port = free_port()
    (tmp_path / "metrics").mkdir()
    prom = tmp_path / "metrics" / "dispersiond.prom"
    edit_config(cfg, metrics={"textfile": str(prom), "interval": "1s",
                              "listen": f"127.0.0.1:{port}"})
    names = [f"patient-{i}.dcm" for i in range(3)]
    d = DaemonProc(cfg, tmp_path / "daemon.log").start()
    try:
        for i, name in enumerate(names):
            drop(tmp_path / "inbox", name, os.urandom(20_000 + i))

        def scraped_done() -> dict | None:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                              timeout=5).read().decode()
            except OSError:
                return None
            m = samples(text)
            backed_up = ("dispersiond_last_manifest_backup_timestamp_seconds", ()) in m
            return m if backed_up and m.get(("dispersiond_files", (("state", "done"),))) == 3 \
                else None

        # The status document the daemon writes every 2 s may lag the database a little.
        m = wait_until(scraped_done, 60, "3 files done and a backup in the scraped metrics", d)
        assert one(m, "dispersiond_up") == 1
        for store in ("cloud-a", "cloud-b", "cloud-c", "vault"):
            assert one(m, "dispersiond_store_sent_bytes_total", store=store) > 0
            assert one(m, "dispersiond_store_requests_total", store=store, op="put") >= 1
            assert one(m, "dispersiond_store_errors_total", store=store) == 0
            assert one(m, "dispersiond_store_failing", store=store) == 0
        assert one(m, "dispersiond_last_manifest_backup_timestamp_seconds") > 0
        assert one(m, "dispersiond_oldest_pending_age_seconds") == 0

        def textfile_done() -> dict | None:
            mm = samples(prom.read_text()) if prom.exists() else {}
            return mm if mm.get(("dispersiond_files", (("state", "done"),))) == 3 else None

        wait_until(textfile_done, 10, "the textfile to say 3 done", d)
        assert stat.S_IMODE(prom.stat().st_mode) == 0o644  # node_exporter's user reads it
        assert [p.name for p in prom.parent.iterdir()] == ["dispersiond.prom"]  # no temp left
        text = prom.read_text()
        assert not any(n in text or n.split(".")[0] in text for n in names)
        code, _ = d.terminate()
        assert code == 0
    finally:
        d.kill()
    final = samples(prom.read_text())
    assert one(final, "dispersiond_up") == 0  # written once more on the way out
    assert one(final, "dispersiond_files", state="done") == 3


def test_an_unwritable_textfile_folder_refuses_to_start(tmp_path):
    import subprocess
    import sys

    from dsp import ROOT

    cfg = daemon_config(tmp_path)
    edit_config(cfg, metrics={"textfile": str(tmp_path / "nowhere" / "d.prom")})
    res = subprocess.run([sys.executable, "-m", "dispersiond", "-c", str(cfg), "run"],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 78, res.stderr
    assert "metrics.textfile" in res.stderr and "ReadWritePaths" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_a_taken_port_refuses_to_start_with_the_reason(tmp_path):
    import subprocess
    import sys

    from dsp import ROOT

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg = daemon_config(tmp_path)
        edit_config(cfg, metrics={"listen": f"127.0.0.1:{busy.getsockname()[1]}"})
        res = subprocess.run([sys.executable, "-m", "dispersiond", "-c", str(cfg), "run"],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 78, res.stderr
    assert "metrics.listen: cannot listen" in res.stderr and "pick a free port" in res.stderr
