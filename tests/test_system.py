"""The service under a real systemd: a Debian 12 container booted with systemd-nspawn,
the project installed the way a clinic would (deploy/install.sh, offline, from wheels
built here), and the unit's promises checked for real from inside it.

One container for the module: the rootfs is built once with mmdebstrap and cached
(keyed by its recipe) under $XDG_CACHE_HOME/dispersiond-test/; each run boots an
overlay of it, so the cache stays pristine. Needs root, systemd-nspawn and mmdebstrap
(scripts/setup.sh installs them as root); without them every test here fails with
the reason, never skips. What the container cannot check (MemoryMax=, TasksMax=,
IPAddressDeny=) is said in deploy/README.md.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
RECIPE = {"suite": "bookworm", "variant": "minbase", "recipe": 1,
          "include": ["systemd", "systemd-sysv", "dbus", "python3", "python3-venv",
                      "bash-completion"]}
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dispersiond-test"
CONF = "/etc/dispersiond/dispersiond.yaml"
DATA = "/var/lib/dispersiond"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PORT = 9464
#: Timings measured here, printed at the end of the module (pytest -s shows them).
TIMINGS: dict[str, float] = {}


def fail(msg: str) -> None:
    pytest.fail(msg, pytrace=False)


# --------------------------------------------------------------------------- host side

def host_tools() -> None:
    """systemd-nspawn and mmdebstrap, installed from Debian's packages if missing."""
    if os.geteuid() != 0:
        fail("the system test boots a container with systemd-nspawn and needs root "
             "(CI runs as root); run the suite as root")
    if not (shutil.which("systemd-nspawn") and shutil.which("mmdebstrap")):
        if shutil.which("apt-get"):
            for cmd in (["apt-get", "update", "-qq"],
                        ["apt-get", "install", "-y", "-qq", "systemd-container", "mmdebstrap"]):
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                                     env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
                if res.returncode:
                    fail(f"cannot install systemd-container and mmdebstrap ({' '.join(cmd)}: "
                         f"{res.stderr.strip()[-300:]})")
    for tool in ("systemd-nspawn", "mmdebstrap", "nsenter"):
        if not shutil.which(tool):
            fail(f"{tool} not found: apt-get install systemd-container mmdebstrap util-linux")


def rootfs() -> Path:
    """The cached container root, built once per recipe (a few minutes cold)."""
    key = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:16]
    path = CACHE / f"rootfs-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"rootfs-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel run waits for the one building it
        if (path / ".dispersiond-recipe").exists():
            return path
        build = CACHE / f".build-{key}-{os.getpid()}"
        shutil.rmtree(build, ignore_errors=True)
        t0 = time.monotonic()
        res = subprocess.run(["mmdebstrap", "--quiet", f"--variant={RECIPE['variant']}",
                              "--include=" + ",".join(RECIPE["include"]), RECIPE["suite"],
                              str(build)], capture_output=True, text=True, timeout=1500)
        if res.returncode:
            shutil.rmtree(build, ignore_errors=True)
            fail(f"mmdebstrap could not build the container root (exit {res.returncode}): "
                 f"{res.stderr.strip()[-500:]}")
        (build / ".dispersiond-recipe").write_text(json.dumps(RECIPE, sort_keys=True))
        os.rename(build, path)
        TIMINGS["rootfs build (cold)"] = time.monotonic() - t0
    return path


def wheelhouse(dest: Path) -> Path:
    """The project's wheel and its dependencies' (the host's Python is 3.11, as Debian 12's)."""
    if sys.version_info[:2] != (3, 11):
        fail(f"the container's Python is 3.11; wheels built by Python "
             f"{sys.version_info[0]}.{sys.version_info[1]} would not install there")
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "-w", str(dest),
                          str(ROOT)], capture_output=True, text=True, timeout=900)
    if res.returncode:
        fail(f"cannot build the wheelhouse: {res.stderr.strip()[-500:]}")
    TIMINGS["wheelhouse"] = time.monotonic() - t0
    return dest


def _cgroup_roots() -> list[Path]:
    base = Path("/sys/fs/cgroup")
    if (base / "cgroup.procs").exists():  # a pure cgroup v2 host
        return [base]
    return [base / h for h in ("systemd", "unified") if (base / h / "cgroup.procs").exists()]


class Machine:
    """A booted container; commands run in it with nsenter (see deploy/README.md)."""

    def __init__(self, lower: Path, tmp: Path) -> None:
        self.name = f"dsp-{uuid.uuid4().hex[:8]}"
        self.tmp = tmp
        self.root = tmp / "merged"
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None
        self.cgroups = [r / self.name for r in _cgroup_roots()]
        self.mounted = False
        for d in ("upper", "work", "merged"):
            (tmp / d).mkdir()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={lower},upperdir={tmp / 'upper'},workdir={tmp / 'work'}",
                        str(self.root)], check=True, capture_output=True, timeout=30)
        self.mounted = True

    def boot(self) -> None:
        for cg in self.cgroups:
            cg.mkdir()
        cgroups = self.cgroups

        def own_cgroup() -> None:  # nspawn --keep-unit nests under its caller's cgroup
            for cg in cgroups:
                (cg / "cgroup.procs").write_text(str(os.getpid()))

        self.console = open(self.tmp / "console.log", "wb")
        env = {**os.environ, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-q", "-D", str(self.root), "--boot", f"--machine={self.name}",
             "--register=no", "--keep-unit", "--console=read-only", "--private-network"],
            stdin=subprocess.DEVNULL, stdout=self.console, stderr=subprocess.STDOUT, env=env,
            preexec_fn=own_cgroup)  # noqa: PLW1509 - must run between fork and exec
        deadline = time.monotonic() + 60
        while self.leader is None:
            self.leader = self._child(self.proc.pid)
            self._alive_or_fail(deadline, "the container's PID 1 to start")
        while subprocess.run(["nsenter", "-t", str(self.leader), "-a", "test", "-S",
                              "/run/systemd/private"], capture_output=True).returncode:
            self._alive_or_fail(deadline, "systemd in the container to listen")
        state = self.sh("systemctl is-system-running --wait", check=False, timeout=60)
        if state.stdout.strip() not in ("running", "degraded"):
            fail(f"the container did not boot: {state.stdout.strip()}; "
                 f"{self.sh('systemctl --failed --no-legend', check=False).stdout}")
        TIMINGS["boot"] = time.monotonic() - t0

    def _alive_or_fail(self, deadline: float, what: str) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            fail(f"systemd-nspawn exited ({self.proc.returncode}) before {what}: "
                 f"{(self.tmp / 'console.log').read_text(errors='replace')[-800:]}")
        if time.monotonic() > deadline:
            fail(f"timed out waiting for {what}")
        time.sleep(0.05)

    @staticmethod
    def _child(ppid: int) -> int | None:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == ppid:
                return int(stat.parent.name)
        return None

    def sh(self, script: str, check: bool = True, timeout: float = 120,
           input: str | None = None) -> subprocess.CompletedProcess:
        """Run a shell script as root inside (not in the service's sandbox: see probe)."""
        res = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "env", "-i",
                              f"PATH={PATH}", "LANG=C.UTF-8", "/bin/bash", "-c", script],
                             capture_output=True, text=True, timeout=timeout, input=input)
        if check and res.returncode:
            raise AssertionError(f"in the container, `{script}` exited {res.returncode}:\n"
                                 f"{res.stdout[-2000:]}\n{res.stderr[-2000:]}\n{self.journal_tail()}")
        return res

    def show(self, *props: str, unit: str = "dispersiond") -> dict[str, str]:
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, since: float = 0.0, unit: str = "dispersiond") -> list[dict[str, Any]]:
        out = self.sh(f"journalctl -u {unit} -o json --no-pager", check=False).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return [e for e in entries if int(e["__REALTIME_TIMESTAMP"]) >= since * 1e6]

    def journal_tail(self, n: int = 30) -> str:
        if self.leader is None:
            return ""
        res = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "journalctl", "-u",
                              "dispersiond", "-n", str(n), "--no-pager"],
                             capture_output=True, text=True, timeout=30)
        return res.stdout

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def close(self) -> None:
        """Power off, and remove what nspawn leaves behind, whatever state it is in."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(Exception):
                    self.sh("systemctl poweroff --no-block", check=False, timeout=20)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.send_signal(signal.SIGKILL)
                    self.proc.wait(timeout=30)
        finally:
            for cg in self.cgroups:
                _remove_cgroup(cg)
            if self.mounted:
                subprocess.run(["umount", "-l", str(self.root)], capture_output=True, timeout=30)
            shutil.rmtree(Path("/run/systemd/nspawn/propagate") / self.name, ignore_errors=True)
            shutil.rmtree(self.tmp / "upper", ignore_errors=True)
            shutil.rmtree(self.tmp / "work", ignore_errors=True)


def _remove_cgroup(cg: Path) -> None:
    if not cg.exists():
        return
    for procs in cg.rglob("cgroup.procs"):  # anything left: killed, not leaked
        with contextlib.suppress(OSError, ValueError):
            for pid in procs.read_text().split():
                os.kill(int(pid), signal.SIGKILL)
    for d in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            d.rmdir()
    with contextlib.suppress(OSError):
        cg.rmdir()


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    host_tools()
    lower = rootfs()
    wheels = wheelhouse(tmp_path_factory.mktemp("wheels"))
    m = Machine(lower, tmp_path_factory.mktemp("machine"))
    try:
        m.boot()
        # What a clinic copies to the device: the deploy/ folder and a wheelhouse.
        shutil.copytree(wheels, m.root / "root/dist/wheels")
        shutil.copytree(ROOT / "deploy", m.root / "root/dist/deploy")
        yield m
    finally:
        m.close()
        print("\nsystem test timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                     TIMINGS.items()))


# --------------------------------------------------------------------------- helpers

def op(m: Machine, args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`dispersiond ARGS` as an operator runs it: as the service's user."""
    return m.sh(f"runuser -u dispersiond -- dispersiond -c {CONF} {args}", check=check)


def status(m: Machine) -> dict[str, Any]:
    return json.loads(op(m, "status --json").stdout)


def wait_for(pred, timeout: float, what: str, m: Machine, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n"
                                 f"{m.journal_tail()}")
        time.sleep(every)


def drop(m: Machine, name: str, data: bytes) -> None:
    """A producer's way: write NAME.part in the inbox, then rename (group dispersiond)."""
    inbox = m.root / DATA.lstrip("/") / "inbox"
    tmp = inbox / f"{name}.part"
    tmp.write_bytes(data)
    os.chmod(tmp, 0o640)
    os.chown(tmp, 0, _gid(m, "dispersiond"))
    os.rename(tmp, inbox / name)


def _gid(m: Machine, group: str) -> int:
    for line in (m.root / "etc/group").read_text().splitlines():
        parts = line.split(":")
        if parts[0] == group:
            return int(parts[2])
    raise AssertionError(f"no group {group} in the container")


def records(tag: str, sizes: list[int]) -> dict[str, bytes]:
    return {f"patient-{tag}-{i:03d}.dcm": os.urandom(n) for i, n in enumerate(sizes)}


def wait_done(m: Machine, total: int, timeout: float = 90) -> dict[str, Any]:
    return wait_for(lambda: (lambda s: s if s["files"]["done"] >= total else None)(status(m)),
                    timeout, f"{total} files done", m)


def restore_all(m: Machine, files: dict[str, bytes]) -> None:
    """`dispersiond restore NAME` for each, then compare every byte."""
    m.sh("rm -rf /tmp/restored && runuser -u dispersiond -- mkdir -p /tmp/restored")
    for name, data in files.items():
        out = op(m, f"restore {shlex.quote(name)} --to /tmp/restored/").stdout
        assert "restored" in out and "verified" in out, out
        got = m.sh(f"sha256sum /tmp/restored/{shlex.quote(name)}").stdout.split()[0]
        assert got == hashlib.sha256(data).hexdigest(), name


def scrape(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def device_config() -> str:
    """The installed device config as a clinic would edit it: quicker intake for the test,
    metrics on the loopback endpoint too."""
    raw = yaml.safe_load((ROOT / "deploy" / "dispersiond.yaml").read_text())
    raw["stable_seconds"] = 1
    raw["schedule"]["manifest_backup"] = "5s"
    raw["metrics"] = {**raw["metrics"], "interval": "2s", "listen": f"127.0.0.1:{PORT}"}
    return yaml.safe_dump(raw, sort_keys=False)


ALL: dict[str, bytes] = {}  # every record dropped so far: each must restore at the end


# --------------------------------------------------------------------------- the tests

def test_install_offline_and_enable_reaches_active_after_ready(box: Machine):
    m = box
    # Offline for real: the container has no network (--private-network), no index.
    offline = m.sh("python3 -c 'import socket; socket.create_connection((\"1.1.1.1\", 443), "
                   "timeout=2)'", check=False)
    assert offline.returncode != 0 and "unreachable" in offline.stderr, offline.stderr
    t0 = time.monotonic()
    res = m.sh("WHEELHOUSE=/root/dist/wheels bash /root/dist/deploy/install.sh", timeout=600)
    TIMINGS["install.sh"] = time.monotonic() - t0
    assert "master key" in res.stdout
    # The clinic edits its config; running install.sh again never touches it or the key.
    key = (m.root / "etc/dispersiond/master.key").read_bytes()
    m.write(CONF, device_config(), 0o640)
    os.chown(m.root / CONF.lstrip("/"), 0, _gid(m, "dispersiond"))
    m.sh("SKIP_VENV=1 bash /root/dist/deploy/install.sh")
    assert (m.root / "etc/dispersiond/master.key").read_bytes() == key
    assert "interval: 2s" in (m.root / CONF.lstrip("/")).read_text()

    t0 = time.monotonic()
    m.sh("systemctl enable --now dispersiond")
    TIMINGS["enable --now until active"] = time.monotonic() - t0
    p = m.show("Type", "ActiveState", "SubState", "StatusText", "NotifyAccess", "MainPID",
               "UnitFileState", "WatchdogUSec")
    assert (p["Type"], p["ActiveState"], p["SubState"]) == ("notify", "active", "running"), p
    assert p["UnitFileState"] == "enabled" and p["WatchdogUSec"] == "1min", p
    assert re.fullmatch(r"\d+ in the pipeline, \d+ done.*", p["StatusText"]), p
    out = m.sh("systemctl status dispersiond --no-pager", check=False).stdout
    assert re.search(r'Status: "\d+ in the pipeline, \d+ done', out), out
    ready = [e for e in m.journal() if e.get("MESSAGE", "").startswith("daemon started")]
    assert ready and ready[-1]["PRIORITY"] == "6", ready
    assert ready[-1]["SYSLOG_IDENTIFIER"] == "dispersiond" and "PID" in ready[-1], ready


def test_version_and_bash_completion_are_installed(box: Machine):
    m = box
    assert m.sh("dispersiond --version").stdout.strip() == "dispersiond 0.1.0"
    assert (m.root / "usr/share/bash-completion/completions/dispersiond").is_file()
    # What bash does on TAB: source the completion, call its function for "dispersiond res".
    script = ("source /usr/share/bash-completion/bash_completion; "
              "source /usr/share/bash-completion/completions/dispersiond; "
              "COMP_WORDS=(dispersiond res); COMP_CWORD=1; COMP_LINE='dispersiond res'; "
              "COMP_POINT=${#COMP_LINE}; COMP_TYPE=9; "
              "fn=$(complete -p dispersiond | sed -E 's/.* -F ([^ ]+) .*/\\1/'); "
              "$fn dispersiond res dispersiond; printf '%s\\n' \"${COMPREPLY[@]}\"")
    words = m.sh(script).stdout.split()
    assert "restore" in words and "repair" not in words and "put" not in words, words


def test_records_are_protected_and_restore_bit_exact(box: Machine):
    m = box
    files = records("a", [0, 1, 4096, 300_000, 17 << 20])  # 17 MiB: sent while encoded
    since = time.time()
    t0 = time.monotonic()
    for name, data in files.items():
        drop(m, name, data)
    wait_done(m, len(files))
    TIMINGS[f"{len(files)} records until done"] = time.monotonic() - t0
    ALL.update(files)
    restore_all(m, files)
    # Nothing leaked: no name in a store's object names or bytes, nor in the journal.
    stores = m.root / DATA.lstrip("/") / "stores"
    names = [p.name for p in stores.rglob("*")]
    blob = b"".join(p.read_bytes() for p in stores.rglob("*") if p.is_file()
                    and p.stat().st_size < (1 << 20))
    journal = json.dumps(m.journal(since))
    for name in files:
        stem = name.rsplit(".", 1)[0]
        assert not any(stem in n for n in names) and stem.encode() not in blob, name
        assert stem not in journal, name
    done = [e for e in m.journal(since) if e["MESSAGE"].startswith("file done")]
    assert len(done) == len(files) and all(len(e["FILE_ID"]) == 32 for e in done), done
    assert all("SIZE" not in e for e in m.journal(since)), "a file's size reached the journal"


def test_metrics_textfile_and_endpoint_parse(box: Machine):
    m = box
    prom = m.root / DATA.lstrip("/") / "metrics" / "dispersiond.prom"
    st = prom.stat()
    assert st.st_mode & 0o777 == 0o644, oct(st.st_mode)  # node_exporter's user reads it
    wait_for(lambda: scrape(prom.read_text()).get(("dispersiond_files", (("state", "done"),)))
             == len(ALL), 15, "the textfile to catch up", m)
    text = m.sh(f"python3 -c 'import urllib.request; print(urllib.request.urlopen("
                f"\"http://127.0.0.1:{PORT}/metrics\", timeout=5).read().decode())'").stdout
    for got in (scrape(prom.read_text()), scrape(text)):
        assert got[("dispersiond_up", ())] == 1
        assert got[("dispersiond_files", (("state", "done"),))] == len(ALL)
        for store in ("cloud-a", "cloud-b", "cloud-c", "vault"):
            assert got[("dispersiond_store_sent_bytes_total", (("store", store),))] > 0
            assert got[("dispersiond_store_errors_total", (("store", store),))] == 0
        assert got[("dispersiond_last_manifest_backup_timestamp_seconds", ())] > time.time() - 600
    for name in ALL:
        assert name.rsplit(".", 1)[0] not in text


def test_sigkill_is_restarted_and_nothing_is_lost(box: Machine):
    m = box
    before = m.show("MainPID", "NRestarts")
    files = records("b", [10_000 + i for i in range(8)] + [3 << 20])
    for name, data in files.items():
        drop(m, name, data)
    time.sleep(1.2)  # stable: the daemon is claiming and encoding them now
    t0 = time.monotonic()
    m.sh("systemctl kill --kill-whom=main --signal=SIGKILL dispersiond")
    wait_for(lambda: (lambda p: p["ActiveState"] == "active" and p["MainPID"] not in
                      ("0", before["MainPID"]))(m.show("ActiveState", "MainPID")),
             30, "the restart after SIGKILL", m, every=0.05)
    TIMINGS["SIGKILL until active again"] = time.monotonic() - t0
    after = m.show("NRestarts", "ExecMainStatus")
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, (before, after)
    ALL.update(files)
    wait_done(m, len(ALL))
    restore_all(m, files)


def test_a_hung_main_loop_is_killed_by_the_watchdog_and_restarted(box: Machine):
    m = box
    dropin = "/etc/systemd/system/dispersiond.service.d/test-hang.conf"
    # TEST-ONLY: the daemon stops its main loop 2 s after start; a 3 s watchdog for speed.
    m.write(dropin, "[Service]\nEnvironment=DISPERSIOND_TEST_HANG_AFTER=2\nWatchdogSec=3s\n")
    m.sh("systemctl daemon-reload && systemctl restart dispersiond")
    n0 = int(m.show("NRestarts")["NRestarts"])
    since = time.time()
    t0 = time.monotonic()
    wait_for(lambda: any("watchdog" in e["MESSAGE"].lower() and "timeout" in e["MESSAGE"].lower()
                         for e in m.journal(since)), 30, "the watchdog to fire", m)
    TIMINGS["start until watchdog kill (hang after 2 s, WatchdogSec=3s)"] = time.monotonic() - t0
    m.sh(f"rm {dropin} && systemctl daemon-reload")
    wait_for(lambda: int(m.show("NRestarts")["NRestarts"]) > n0 and
             m.show("ActiveState")["ActiveState"] == "active", 30, "the restart", m)
    text = " ".join(e["MESSAGE"] for e in m.journal(since))
    assert "hanging on purpose" in text and "Failed with result 'watchdog'" in text, text
    m.sh("systemctl restart dispersiond")  # now without the switch
    time.sleep(4)  # longer than the test's watchdog: the real one (60 s) keeps it up
    assert m.show("ActiveState")["ActiveState"] == "active"


PROBE = r'''
import errno, json, os, socket
res = {"uid": os.getuid()}
def attempt(name, fn):
    try:
        fn()
        res[name] = "ok"
    except OSError as exc:
        res[name] = errno.errorcode.get(exc.errno, str(exc.errno))
for path in ("/usr/probe", "/etc/probe", "/opt/dispersiond/probe", "/var/probe",
             "/var/lib/dispersiond/probe", "/tmp/probe"):
    attempt("write " + path, lambda p=path: (open(p, "w").close(), os.unlink(p)))
attempt("read /root/secret.txt", lambda: open("/root/secret.txt").read())
attempt("read /home/alice/notes.txt", lambda: open("/home/alice/notes.txt").read())
attempt("list /home", lambda: os.listdir("/home"))
for fam, kind in (("AF_NETLINK", socket.SOCK_RAW), ("AF_PACKET", socket.SOCK_RAW),
                  ("AF_INET", socket.SOCK_STREAM), ("AF_UNIX", socket.SOCK_DGRAM)):
    attempt("socket " + fam, lambda f=fam, k=kind: socket.socket(getattr(socket, f), k).close())
with open("/proc/self/status") as f:
    for line in f:
        key, _, value = line.partition(":")
        if key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"):
            res[key] = value.strip()
with open("/var/lib/dispersiond/probe.json", "w") as f:
    json.dump(res, f)
'''


def test_the_sandbox_holds_from_inside_the_service(box: Machine):
    m = box
    m.sh("mkdir -p /home/alice && echo private > /home/alice/notes.txt && "
         "chmod 0644 /home/alice/notes.txt && echo secret > /root/secret.txt && "
         "chmod 0644 /root/secret.txt")
    m.write("/usr/local/lib/dispersiond-test/probe.py", PROBE)
    dropin = "/etc/systemd/system/dispersiond.service.d/test-probe.conf"
    # Runs in the unit's own execution context: its user, namespaces, filters, capabilities.
    m.write(dropin, "[Service]\nExecStartPost=/opt/dispersiond/venv/bin/python "
                    "/usr/local/lib/dispersiond-test/probe.py\n")
    try:
        m.sh("systemctl daemon-reload && systemctl restart dispersiond")
        res = json.loads((m.root / DATA.lstrip("/") / "probe.json").read_text())
    finally:
        m.sh(f"rm -f {dropin} {DATA}/probe.json && systemctl daemon-reload")
    uid = int(m.sh("id -u dispersiond").stdout)
    assert res["uid"] == uid != 0, res
    for path in ("/usr/probe", "/etc/probe", "/opt/dispersiond/probe", "/var/probe"):
        assert res[f"write {path}"] == "EROFS", (path, res)  # ProtectSystem=strict
    assert res["write /var/lib/dispersiond/probe"] == "ok", res  # ReadWritePaths=
    assert res["write /tmp/probe"] == "ok", res  # PrivateTmp=: its own /tmp
    for what in ("read /root/secret.txt", "read /home/alice/notes.txt", "list /home"):
        assert res[what] in ("EACCES", "ENOENT"), (what, res)  # ProtectHome=yes
    assert res["socket AF_NETLINK"] == res["socket AF_PACKET"] == "EAFNOSUPPORT", res
    assert res["socket AF_INET"] == res["socket AF_UNIX"] == "ok", res
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(res[cap], 16) == 0, (cap, res)
    assert res["NoNewPrivs"] == "1" and res["Seccomp"] == "2", res
    # The state is the service's alone: another user reads none of it.
    listing = m.sh(f"find {DATA}/state /etc/dispersiond/master.key -perm /o=rwx,g=rwx "
                   "-printf '%m %p\\n'").stdout
    assert listing == "", listing
    denied = m.sh(f"runuser -u nobody -- cat {DATA}/state/state.db", check=False)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
    assert m.sh(f"stat -c %a {DATA}/state {DATA}/state/state.db").stdout.split() == \
        ["700", "600"]


def test_stop_is_quick_clean_and_exits_0(box: Machine):
    m = box
    big = records("c", [24 << 20])
    drop(m, *next(iter(big.items())))
    ALL.update(big)
    time.sleep(1.5)  # something is in flight when the stop comes
    since = time.time()
    limit = int(m.show("TimeoutStopUSec")["TimeoutStopUSec"].removesuffix("s"))
    t0 = time.monotonic()
    m.sh("systemctl stop dispersiond", timeout=limit + 30)
    took = time.monotonic() - t0
    TIMINGS["systemctl stop"] = took
    p = m.show("ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    assert took < limit, took
    assert (p["ActiveState"], p["Result"], p["ExecMainStatus"]) == ("inactive", "success", "0"), p
    errors = [e["MESSAGE"] for e in m.journal(since) if int(e.get("PRIORITY", 6)) <= 3]
    assert errors == [], errors
    prom = (m.root / DATA.lstrip("/") / "metrics" / "dispersiond.prom").read_text()
    assert scrape(prom)[("dispersiond_up", ())] == 0  # written once more on the way out
    m.sh("systemctl start dispersiond")
    wait_done(m, len(ALL), timeout=120)  # what the stop interrupted resumes
    restore_all(m, big)


def test_a_broken_config_fails_with_one_clear_line_and_no_restart_loop(box: Machine):
    m = box
    good = (m.root / CONF.lstrip("/")).read_text()
    m.sh("systemctl stop dispersiond")
    (m.root / CONF.lstrip("/")).write_text(good.replace("stable_seconds: 1", "stable_secs: 1"))
    since = time.time()
    n0 = int(m.show("NRestarts")["NRestarts"])
    try:
        res = m.sh("systemctl start dispersiond", check=False)
        assert res.returncode != 0
        restart_sec = float(m.show("RestartUSec")["RestartUSec"].removesuffix("s"))
        time.sleep(restart_sec + 1)  # a restart would have happened by now
        p = m.show("ActiveState", "Result", "ExecMainStatus", "NRestarts")
        assert (p["ActiveState"], p["Result"], p["ExecMainStatus"]) == \
            ("failed", "exit-code", "78"), p
        assert int(p["NRestarts"]) == n0, p  # RestartPreventExitStatus=78
        own = [e for e in m.journal(since) if e.get("SYSLOG_IDENTIFIER") == "dispersiond"]
        assert len(own) == 1, [e["MESSAGE"] for e in own]
        line = own[0]
        assert line["PRIORITY"] == "3", line  # SyslogLevel=err
        assert "configuration error, not starting" in line["MESSAGE"] and \
            "stable_secs: unknown setting" in line["MESSAGE"], line["MESSAGE"]
        out = m.sh("systemctl status dispersiond --no-pager", check=False).stdout
        assert "status=78/CONFIG" in out, out
    finally:
        (m.root / CONF.lstrip("/")).write_text(good)
        m.sh("systemctl reset-failed dispersiond; systemctl start dispersiond")
    assert m.show("ActiveState")["ActiveState"] == "active"


def test_security_exposure_score(box: Machine):
    out = box.sh("systemd-analyze security dispersiond --no-pager").stdout
    score = float(re.search(r"Overall exposure level for dispersiond.service: ([\d.]+)",
                            out).group(1))
    TIMINGS["systemd-analyze security exposure"] = score
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert f"exposure {score}" in readme, f"deploy/README.md must record the score {score}"
    assert score <= 1.2, out


def test_nothing_was_lost_or_quarantined_on_the_way(box: Machine):
    st = status(box)
    assert st["files"]["failed"] == 0 and st["files"]["done"] == len(ALL), st["files"]
    rep = json.loads(op(box, "verify --json").stdout)  # exit 0: every object there
    assert rep["files"] == len(ALL) and rep["ok"] == rep["objects"] > 0, rep
    assert rep["problems"] == [] and rep["unrestorable"] == [], rep
