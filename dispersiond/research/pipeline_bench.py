"""`dispersiond bench pipeline`: files through the real daemon to a local S3 server, next to
a plain concurrent boto3 upload of the same bytes to the same server in the same run.
With mode "put" the other side is `dispersiond put` of the same files instead of the daemon.

The daemon runs as `dispersiond run` in a subprocess with a fresh state directory per run;
the clock starts when the files appear in its inbox (linked in at once) and stops when
the last one is `done`: encoded, public and private objects uploaded, committed, a
manifest backup landed and the original deleted. `put` runs through the CLI's entry
point in this process (config, archive, every step to `done`; no interpreter start-up), its
clock around that one call. The baseline is what any uploader does
at the least: each file's bytes in one object (multipart with `upload_workers` threads
for large ones). Requests are counted from the S3 server's own request log.

The trickle (`trickle`) drops one record every `interval` instead of all at once, and
reports each record's latency, drop to done (the daemon's own time of `done` in its state),
against a plain put of each record as it arrives. Peak RSS is the daemon process's
VmHWM, read just before it is stopped.
"""
from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from .. import digests
from ..errors import DispersiondError
from ..state import peek_done
from ..state.peek import peek_done_times

SHAPES = [(1000, 16 << 10), (10000, 2 << 10), (1, 256 << 20)]
#: Issue #14's trickle: one record (of TRICKLE_SIZE) every 200 ms for a minute.
TRICKLE = (0.2, 60.0)
TRICKLE_SIZE = 16 << 10
WORKERS = 8
#: The niceness deploy/dispersiond.service gives the daemon (Nice=): it is measured as it
#: runs. --nice 0 measures it at normal priority (no difference we could measure).
DAEMON_NICE = 10


@dataclass(frozen=True)
class Setup:
    """What a run can vary: an uplink cap for both sides, the daemon's niceness and the
    hash its digests are made with."""

    link: int | None = None
    nice: int = DAEMON_NICE
    digest: str = digests.DEFAULT
    #: "random" (incompressible) or "fhir" (generated FHIR R4 Bundles of about `size`)
    content: str = "random"
    compression: str = "auto"
    #: "daemon" (files dropped into `dispersiond run`'s inbox) or "put" (`dispersiond put`)
    mode: str = "daemon"


# werkzeug colours some status lines (206 for a ranged GET, 4xx) with ANSI escapes
_REQUEST = re.compile(rb'"(?:\x1b\[[0-9;]*m)*(GET|PUT|POST|HEAD|DELETE) ')
_KEY_ENV, _SECRET_ENV = "DISPERSIOND_BENCH_S3_KEY", "DISPERSIOND_BENCH_S3_SECRET"


class S3Server:
    """A moto S3 server subprocess on 127.0.0.1 with its request log in a file."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = workdir / "s3.log"
        self.endpoint = f"http://127.0.0.1:{self.port}"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise DispersiondError("the local S3 server (moto) did not start; is "
                                           "moto[server] installed?") from None
                time.sleep(0.05)

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="bench", aws_secret_access_key="bench",
                            config=Config(max_pool_connections=64,
                                          s3={"addressing_style": "path"}))

    def requests(self) -> int:
        """Requests the server has logged so far."""
        time.sleep(0.2)  # the server logs a request after answering it
        return len(_REQUEST.findall(self.log.read_bytes()))

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


def _make_files(folder: Path, n: int, size: int, content: str = "random") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    if content == "fhir":
        from .compress_bench import fhir_records

        for i, record in enumerate(fhir_records(n, seed=len(folder.name), target=size)):
            p = folder / f"record-{i:05d}.json"
            p.write_bytes(record)
            out.append(p)
        return out
    block = os.urandom(min(size, 1 << 20) or 1)
    for i in range(n):
        p = folder / f"file-{i:05d}.bin"
        with open(p, "wb") as f:
            left = size
            f.write(os.urandom(min(size, 64)))  # files differ from each other
            left -= min(size, 64)
            while left > 0:
                chunk = block[: min(left, len(block))]
                f.write(chunk)
                left -= len(chunk)
        out.append(p)
    return out


class _LinkReader:
    """A file whose reads pass the same token bucket as the daemon's uploads (--link)."""

    def __init__(self, f, throttle) -> None:
        self.f, self.throttle = f, throttle

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.throttle.take(len(data))
        return data

    def seek(self, *args: int) -> int:
        return self.f.seek(*args)

    def tell(self) -> int:
        return self.f.tell()


def _raw_upload(server: S3Server, files: list[Path], bucket: str, link: int | None) -> float:
    from boto3.s3.transfer import TransferConfig

    from ..ops.upload import Throttle

    c = server.client()
    tc = TransferConfig(max_concurrency=WORKERS, multipart_chunksize=8 << 20,
                        multipart_threshold=8 << 20)
    throttle = Throttle(link)
    t0 = time.perf_counter()
    if len(files) == 1:
        with open(files[0], "rb") as f:
            c.upload_fileobj(_LinkReader(f, throttle) if link else f, bucket, files[0].name,
                             Config=tc)
    else:
        def put(p: Path) -> None:
            body = p.read_bytes()
            throttle.take(len(body))
            c.put_object(Bucket=bucket, Key=p.name, Body=body)

        with ThreadPoolExecutor(WORKERS) as ex:
            list(ex.map(put, files))
    return time.perf_counter() - t0


def _daemon_config(root: Path, server: S3Server | None, pub: str, prv: str, setup: Setup,
                   stores: Callable[[str], dict] | None = None) -> Path:
    """The daemon's config: its two stores on `server` (buckets `pub` and `prv`), or
    what `stores` makes of those names (local folders: bench pipeline --stores local)."""
    def s3(bucket: str) -> dict:
        assert server is not None
        return {"type": "s3", "endpoint_url": server.endpoint, "region": "us-east-1",
                "addressing_style": "path", "access_key_id_env": _KEY_ENV,
                "secret_access_key_env": _SECRET_ENV, "bucket": bucket}

    store = stores or s3
    root.mkdir(parents=True)
    key = root / "master.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    cfg = {"version": 1, "state_dir": str(root / "state"), "inbox": str(root / "inbox"),
           "key": {"file": str(key)}, "trust_levels": ["untrusted", "trusted"],
           "stores": [{"name": "cloud", "trust": "untrusted", **store(pub)},
                      {"name": "vault", "trust": "trusted", **store(prv)}],
           "public": {"mode": "replicate", "stores": ["cloud"]},
           "private": {"min_trust": "trusted", "stores": ["vault"]},
           "after": "delete", "stable_seconds": 0, "upload_workers": WORKERS,
           "digest": setup.digest, "compression": setup.compression,
           "schedule": {"rescan": "1s", "manifest_backup": "1h", "verify": None,
                        "bandwidth_limit": setup.link}}
    (root / "inbox").mkdir()
    path = root / "dispersiond.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _pipeline(server: S3Server | None, files: list[Path], root: Path, pub: str, prv: str,
              setup: Setup, stores: Callable[[str], dict] | None = None,
              cpu: list[float] | None = None) -> tuple[float, int]:
    """Seconds from drop to the last file done, and S3 requests in that span (0 without
    a server); the daemon's CPU seconds in that span are appended to `cpu` if given
    (what a loaded machine moves least)."""
    cfg = _daemon_config(root, server, pub, prv, setup, stores)
    proc, sock = _start_daemon(root, cfg, setup)
    try:
        time.sleep(1.0)  # start-up backup and stale-backup sweep are not part of the run
        before = server.requests() if server else 0
        inbox = root / "inbox"
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        for p in files:  # a second name: the daemon deletes its copy, the source stays
            os.link(p, inbox / p.name)
        db = root / "state" / "state.db"
        while peek_done(db) < len(files):
            if proc.poll() is not None:
                raise DispersiondError(f"the daemon exited ({proc.returncode}); see "
                                       f"{root / 'daemon.log'}")
            time.sleep(0.01)
        used = _less(cpu_seconds(proc.pid), cpu0)
        DAEMON_USED[root] = (peak_rss(proc.pid), used)
        took = time.perf_counter() - t0
        if cpu is not None and used is not None:
            cpu.append(used)
        requests = server.requests() - before if server else 0
    finally:
        _stop_daemon(proc, sock)
    return took, requests


def _put(server: S3Server, files: list[Path], root: Path, pub: str, prv: str,
         setup: Setup) -> tuple[float, int]:
    """Seconds of one `dispersiond put --json FILE...` to done, and S3 requests in it."""
    import contextlib
    import io
    import json

    from ..cli import main

    cfg = _daemon_config(root, server, pub, prv, setup)
    os.environ.update({_KEY_ENV: "bench", _SECRET_ENV: "bench"})
    out = io.StringIO()
    before = server.requests()
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = main(["-c", str(cfg), "put", "--json", *map(str, files)])
    took = time.perf_counter() - t0
    DAEMON_USED[root] = (None, _less(cpu_seconds(), cpu0))  # put runs in this process
    requests = server.requests() - before
    states = {f["state"] for f in json.loads(out.getvalue())["files"]} if not code else set()
    if code or states != {"done"}:
        raise DispersiondError(f"put exited {code} with states {sorted(states)}")
    return took, requests


def _stored(c, bucket: str) -> int:
    """Bytes the bucket holds (what the clouds bill)."""
    return sum(o["Size"] for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket)
               for o in page.get("Contents", ()))


def _empty(c, bucket: str) -> None:
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
        if keys:
            c.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


#: What the daemon used in a run, by the run's folder (noted by `_pipeline`): its peak
#: RSS in bytes and its CPU seconds from the drop to the last file done.
DAEMON_USED: dict[Path, tuple[int | None, float | None]] = {}


def peak_rss(pid: int) -> int | None:
    """A running process's peak resident set so far (VmHWM), in bytes; None without /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_seconds(pid: int | None = None) -> float | None:
    """CPU (user + system) a running process has used so far; this one's with None. On a
    shared, loaded machine the clock measures the others too; this does not."""
    if pid is None:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _less(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def bench_shape(server: S3Server, work: Path, n: int, size: int, runs: int,
                setup: Setup = Setup()) -> dict[str, Any]:
    c = server.client()
    raw_t, pipe_t, raw_req, pipe_req, stored = [], [], [], [], []
    peaks: list[int | None] = []
    raw_cpu: list[float] = []
    pipe_cpu: list[float | None] = []
    total = 0
    for r in range(runs):
        src = _make_files(work / f"src-{r}", n, size, setup.content)
        total = sum(p.stat().st_size for p in src)
        bucket, pub, prv = (f"{what}-{n}-{size}-{r}" for what in ("raw", "pub", "prv"))
        for b in (bucket, pub, prv):
            c.create_bucket(Bucket=b)

        def raw() -> None:
            before = server.requests()
            cpu0 = cpu_seconds()
            raw_t.append(_raw_upload(server, src, bucket, setup.link))
            raw_cpu.append(cpu_seconds() - cpu0)  # type: ignore[operator]
            raw_req.append(server.requests() - before)
            _empty(c, bucket)  # the server holds objects in memory: each side starts level

        def pipe() -> None:
            side = _put if setup.mode == "put" else _pipeline
            took, req = side(server, src, work / f"daemon-{r}", pub, prv, setup)
            pipe_t.append(took)
            pipe_req.append(req)
            rss, cpu = DAEMON_USED.pop(work / f"daemon-{r}", (None, None))
            peaks.append(rss)
            pipe_cpu.append(cpu)
            stored.append(sum(_stored(c, b) for b in (pub, prv)))
            for b in (pub, prv):
                _empty(c, b)

        # Alternate which side goes first, so neither always meets the warmer server.
        for side in ((raw, pipe) if r % 2 == 0 else (pipe, raw)):
            side()
        if total > KEEP_RUNS_BYTES:  # large: the disk space back now (a file or two)
            _remove_run(work, r)
    for r in range(runs):  # the rest once the shape is done (see KEEP_RUNS_BYTES)
        _remove_run(work, r)
    raw, pipe = statistics.median(raw_t), statistics.median(pipe_t)
    return {
        "mode": setup.mode, "files": n, "size": size, "runs": runs, "link": setup.link,
        "daemon_nice": setup.nice if setup.mode == "daemon" else None,
        "digest": setup.digest, "content": setup.content, "compression": setup.compression,
        "bytes": total, "stored_bytes": statistics.median(stored),
        "stored_vs_raw": round(statistics.median(stored) / total, 3) if total else None,
        "raw": {"seconds": round(raw, 3), "files_per_s": round(n / raw, 1),
                "mb_per_s": round(total / raw / 1e6, 1),
                "requests_per_file": round(statistics.median(raw_req) / n, 2)},
        "pipeline": {"seconds": round(pipe, 3), "files_per_s": round(n / pipe, 1),
                     "mb_per_s": round(total / pipe / 1e6, 1),
                     "requests_per_file": round(statistics.median(pipe_req) / n, 2)},
        "pipeline_vs_raw": round(pipe / raw, 2),
        "all_seconds": {"raw": [round(x, 3) for x in raw_t],
                        "pipeline": [round(x, 3) for x in pipe_t]},
        "daemon_peak_rss_mib": _mib(max((x for x in peaks if x is not None), default=None)),
        "cpu_seconds": {"raw": _median(raw_cpu), "pipeline": _median(pipe_cpu)},
    }


#: A run's folders (its source files, the daemon's state) up to this size are removed
#: once the shape is done, not before the next run: on ext4 without a journal a new
#: file's inode is sought past every inode freed in the last 5 to 300 s, so removing a
#: run's 3,000 files just before the next run made each of its creates cost up to 0.8 ms
#: of kernel time (perf: a third of the daemon's CPU in the allocator's
#: `recently_deleted`), a cost of the cleanup, not of the run. The boto3 side creates no
#: file. Measured on such a disk, the daemon's CPU for 1,000 x 16 KiB moved 1.3-2.0 s.
KEEP_RUNS_BYTES = 64 << 20


def _remove_run(work: Path, r: int) -> None:
    shutil.rmtree(work / f"src-{r}", ignore_errors=True)
    shutil.rmtree(work / f"daemon-{r}", ignore_errors=True)


def _median(xs: list[float | None]) -> float | None:
    """The median of what was measured, rounded; None when nothing was."""
    got = [x for x in xs if x is not None]
    return round(statistics.median(got), 2) if got else None


def _mib(n: int | None) -> float | None:
    return None if n is None else round(n / (1 << 20), 1)


def run(shapes: list[tuple[int, int]], runs: int, setup: Setup = Setup(),
        on_shape: Callable[[dict[str, Any]], None] = lambda result: None
        ) -> list[dict[str, Any]]:
    """Every (files, size) shape on one local S3 server; `on_shape` sees each result as it
    lands, so a long run shows progress."""
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    results: list[dict[str, Any]] = []
    if not shapes:
        return results
    with tempfile.TemporaryDirectory(prefix="dispersiond-bench-") as tmp:
        work = Path(tmp)
        server = S3Server(work)
        try:
            for n, s in shapes:
                results.append(bench_shape(server, work / f"{n}x{s}", n, s, runs, setup))
                on_shape(results[-1])
        finally:
            server.stop()
    return results


# ------------------------------------------------------------------ the trickle

def _sleep_until(t: float) -> None:
    wait = t - time.perf_counter()
    if wait > 0:
        time.sleep(wait)


def _trickle_raw(server: S3Server, files: list[Path], bucket: str, interval: float,
                 link: int | None) -> list[float]:
    """Each file put as it arrives (one every `interval`): seconds from arrival to stored."""
    from ..ops.upload import Throttle

    c = server.client()
    throttle = Throttle(link)
    latency = [0.0] * len(files)

    def put(i: int, p: Path, arrived: float) -> None:
        body = p.read_bytes()
        throttle.take(len(body))
        c.put_object(Bucket=bucket, Key=p.name, Body=body)
        latency[i] = time.perf_counter() - arrived

    t0 = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as ex:
        running = []
        for i, p in enumerate(files):
            _sleep_until(t0 + i * interval)
            running.append(ex.submit(put, i, p, time.perf_counter()))
        for fut in running:
            fut.result()
    return latency


def _start_daemon(root: Path, cfg: Path, setup: Setup) -> tuple[subprocess.Popen, socket.socket]:
    """`dispersiond run` in a subprocess at the setup's niceness, once it said READY=1."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(root / "notify.sock"))
    sock.settimeout(60)
    env = {**os.environ, "NOTIFY_SOCKET": str(root / "notify.sock"), _KEY_ENV: "bench",
           _SECRET_ENV: "bench", "AWS_EC2_METADATA_DISABLED": "true"}
    nice = setup.nice
    with open(root / "daemon.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dispersiond", "-c", str(cfg), "run"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, preexec_fn=(lambda: os.nice(nice)) if nice else None)
    try:
        while b"READY=1" not in sock.recv(4096):
            pass
    except BaseException:
        _stop_daemon(proc, sock)
        raise
    return proc, sock


def _stop_daemon(proc: subprocess.Popen, sock: socket.socket) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    sock.close()


def _trickle_pipeline(server: S3Server, files: list[Path], root: Path, pub: str, prv: str,
                      setup: Setup, interval: float
                      ) -> tuple[list[float], int, tuple[int | None, float | None]]:
    """Files dropped into the daemon's inbox one every `interval`: each one's seconds from
    the drop to `done` (as the daemon recorded it), S3 requests, and the daemon's peak RSS
    and CPU seconds in the run."""
    cfg = _daemon_config(root, server, pub, prv, setup)
    proc, sock = _start_daemon(root, cfg, setup)
    inbox, db = root / "inbox", root / "state" / "state.db"
    dropped: dict[str, float] = {}
    try:
        time.sleep(1.0)  # start-up backup and stale-backup sweep are not part of the run
        before = server.requests()
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        for i, p in enumerate(files):
            _sleep_until(t0 + i * interval)
            dropped[p.name] = time.time()
            os.link(p, inbox / p.name)
        while peek_done(db) < len(files):
            if proc.poll() is not None:
                raise DispersiondError(f"the daemon exited ({proc.returncode}); see "
                                       f"{root / 'daemon.log'}")
            time.sleep(0.05)
        requests = server.requests() - before
        used = (peak_rss(proc.pid), _less(cpu_seconds(proc.pid), cpu0))
        done = peek_done_times(db)
    finally:
        _stop_daemon(proc, sock)
    return [done[name] - at for name, at in dropped.items()], requests, used


def _latency(xs: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(xs) * 1000, 1),
            "max_ms": round(max(xs) * 1000, 1)}


def bench_trickle(server: S3Server, work: Path, interval: float, duration: float, size: int,
                  runs: int, setup: Setup = Setup()) -> dict[str, Any]:
    """One record every `interval` for `duration`, through the daemon and as plain puts."""
    from ..pack import PackPolicy

    n = max(1, int(round(duration / interval)))
    c = server.client()
    raw_lat: list[float] = []
    pipe_lat: list[float] = []
    raw_req, pipe_req, peaks, raw_cpu, pipe_cpu = [], [], [], [], []
    for r in range(runs):
        src = _make_files(work / f"trickle-src-{r}", n, size, setup.content)
        bucket, pub, prv = (f"{what}-trickle-{r}" for what in ("raw", "pub", "prv"))
        for b in (bucket, pub, prv):
            c.create_bucket(Bucket=b)

        def raw() -> None:
            before, cpu0 = server.requests(), cpu_seconds()
            raw_lat.extend(_trickle_raw(server, src, bucket, interval, setup.link))
            raw_cpu.append(cpu_seconds() - cpu0)  # type: ignore[operator]
            raw_req.append(server.requests() - before)
            _empty(c, bucket)

        def pipe() -> None:
            lat, req, (rss, cpu) = _trickle_pipeline(server, src, work / f"trickle-daemon-{r}",
                                                     pub, prv, setup, interval)
            pipe_lat.extend(lat)
            pipe_req.append(req)
            peaks.append(rss)
            pipe_cpu.append(cpu)
            for b in (pub, prv):
                _empty(c, b)

        for side in ((raw, pipe) if r % 2 == 0 else (pipe, raw)):
            side()
        shutil.rmtree(work / f"trickle-src-{r}", ignore_errors=True)
        shutil.rmtree(work / f"trickle-daemon-{r}", ignore_errors=True)
    max_wait = PackPolicy().max_wait  # the bench's daemon runs with the default pack policy
    return {
        "trickle": {"interval_s": interval, "duration_s": duration, "max_wait_s": max_wait,
                    "target_ms": (max_wait + 2) * 1000},
        "files": n, "size": size, "runs": runs, "link": setup.link, "daemon_nice": setup.nice,
        "digest": setup.digest, "content": setup.content, "compression": setup.compression,
        "raw": {"latency": _latency(raw_lat),
                "requests_per_file": round(statistics.median(raw_req) / n, 2)},
        "pipeline": {"latency": _latency(pipe_lat),
                     "requests_per_file": round(statistics.median(pipe_req) / n, 2)},
        "daemon_peak_rss_mib": _mib(max((x for x in peaks if x is not None), default=None)),
        "cpu_seconds": {"raw": _median(raw_cpu), "pipeline": _median(pipe_cpu)},
    }


def run_trickle(interval: float, duration: float, size: int, runs: int,
                setup: Setup = Setup()) -> dict[str, Any]:
    """The trickle on its own local S3 server."""
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    with tempfile.TemporaryDirectory(prefix="dispersiond-bench-") as tmp:
        server = S3Server(Path(tmp))
        try:
            return bench_trickle(server, Path(tmp), interval, duration, size, runs, setup)
        finally:
            server.stop()
