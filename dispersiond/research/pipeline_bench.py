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
"""
from __future__ import annotations

import os
import re
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

SHAPES = [(1000, 16 << 10), (1, 256 << 20)]
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


_REQUEST = re.compile(rb'"(GET|PUT|POST|HEAD|DELETE) ')
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


def _daemon_config(root: Path, server: S3Server, pub: str, prv: str, setup: Setup) -> Path:
    s3 = {"type": "s3", "endpoint_url": server.endpoint, "region": "us-east-1",
          "addressing_style": "path", "access_key_id_env": _KEY_ENV,
          "secret_access_key_env": _SECRET_ENV}
    root.mkdir(parents=True)
    key = root / "master.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    cfg = {"version": 1, "state_dir": str(root / "state"), "inbox": str(root / "inbox"),
           "key": {"file": str(key)}, "trust_levels": ["untrusted", "trusted"],
           "stores": [{"name": "cloud", "trust": "untrusted", "bucket": pub, **s3},
                      {"name": "vault", "trust": "trusted", "bucket": prv, **s3}],
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


def _pipeline(server: S3Server, files: list[Path], root: Path, pub: str, prv: str,
              setup: Setup) -> tuple[float, int]:
    """Seconds from drop to the last file done, and S3 requests in that span."""
    cfg = _daemon_config(root, server, pub, prv, setup)
    nice = setup.nice
    sock_path = root / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(60)
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), _KEY_ENV: "bench",
           _SECRET_ENV: "bench", "AWS_EC2_METADATA_DISABLED": "true"}
    with open(root / "daemon.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dispersiond", "-c", str(cfg), "run"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, preexec_fn=(lambda: os.nice(nice)) if nice else None)
    try:
        while b"READY=1" not in sock.recv(4096):
            pass
        time.sleep(1.0)  # start-up backup and stale-backup sweep are not part of the run
        before = server.requests()
        inbox = root / "inbox"
        t0 = time.perf_counter()
        for p in files:  # a second name: the daemon deletes its copy, the source stays
            os.link(p, inbox / p.name)
        db = root / "state" / "state.db"
        while peek_done(db) < len(files):
            if proc.poll() is not None:
                raise DispersiondError(f"the daemon exited ({proc.returncode}); see "
                                       f"{root / 'daemon.log'}")
            time.sleep(0.01)
        took = time.perf_counter() - t0
        requests = server.requests() - before
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        sock.close()
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
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = main(["-c", str(cfg), "put", "--json", *map(str, files)])
    took = time.perf_counter() - t0
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


def bench_shape(server: S3Server, work: Path, n: int, size: int, runs: int,
                setup: Setup = Setup()) -> dict[str, Any]:
    c = server.client()
    raw_t, pipe_t, raw_req, pipe_req, stored = [], [], [], [], []
    total = 0
    for r in range(runs):
        src = _make_files(work / f"src-{r}", n, size, setup.content)
        total = sum(p.stat().st_size for p in src)
        bucket, pub, prv = (f"{what}-{n}-{size}-{r}" for what in ("raw", "pub", "prv"))
        for b in (bucket, pub, prv):
            c.create_bucket(Bucket=b)

        def raw() -> None:
            before = server.requests()
            raw_t.append(_raw_upload(server, src, bucket, setup.link))
            raw_req.append(server.requests() - before)
            _empty(c, bucket)  # the server holds objects in memory: each side starts level

        def pipe() -> None:
            side = _put if setup.mode == "put" else _pipeline
            took, req = side(server, src, work / f"daemon-{r}", pub, prv, setup)
            pipe_t.append(took)
            pipe_req.append(req)
            stored.append(sum(_stored(c, b) for b in (pub, prv)))
            for b in (pub, prv):
                _empty(c, b)

        # Alternate which side goes first, so neither always meets the warmer server.
        for side in ((raw, pipe) if r % 2 == 0 else (pipe, raw)):
            side()
        shutil.rmtree(work / f"src-{r}", ignore_errors=True)
        shutil.rmtree(work / f"daemon-{r}", ignore_errors=True)
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
    }


def run(shapes: list[tuple[int, int]], runs: int, setup: Setup = Setup(),
        on_shape: Callable[[dict[str, Any]], None] = lambda result: None
        ) -> list[dict[str, Any]]:
    """Every (files, size) shape on one local S3 server; `on_shape` sees each result as it
    lands, so a long run shows progress."""
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    results = []
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
