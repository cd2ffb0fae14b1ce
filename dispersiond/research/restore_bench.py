"""Restore against a plain download: `restore --all` of N records (or `restore ID` of one
large file) from a local S3 server, next to a concurrent boto3 download of the same
records stored one object per file on the same server in the same run (the floor a tool
that keeps one object per file pays).

Run: `python -m dispersiond.research.restore_bench [N] [SIZE_BYTES] [RUNS] [JOBS]`.
The records are protected once by one `put` (replicate mode, one public bucket, one
private bucket): one batch, so the small ones share packs, one per store per
`pack_size`. The originals are also uploaded, one object per file, to a third bucket.
Each run then times `restore --all --jobs JOBS` (N > 1) or `restore ID` (N = 1), in
this process, through the CLI's entry point (config, archive, its S3
client, every digest checked, decode, fsync, rename), and the baseline (list the bucket,
GET every object with JOBS threads, write it to a file) twice: with a client made
before the clock starts, and with a fresh boto3 session's client made inside it, as
any new process pays (the restore makes its own each time), in rotating order.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .pipeline_bench import _KEY_ENV, _SECRET_ENV, S3Server, Setup, _daemon_config, _make_files


def _cli(*argv: str) -> str:
    from ..cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    if code:
        raise SystemExit(f"dispersiond {argv[2]} exited {code}: {out.getvalue()[-500:]}")
    return out.getvalue()


def _protect(cfg: str, files: list[Path]) -> list[str]:
    """`put` of every file at once: one batch, the small fragments sharing packs."""
    res = json.loads(_cli("-c", cfg, "put", "--json", *map(str, files)))
    if res["errors"]:
        raise SystemExit(f"protecting the records failed: {res['errors'][0]}")
    return [f["file_id"] for f in res["files"]]


def _upload_raw(server: S3Server, bucket: str, files: list[Path], workers: int) -> None:
    c = server.client()
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(lambda p: c.upload_file(str(p), bucket, p.name), files))


def _fresh_client(server: S3Server):
    """A client from a new boto3 session: it loads botocore's models again, as a new
    process does (a client of the default session reuses those already loaded)."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=server.endpoint, region_name="us-east-1",
        aws_access_key_id="bench", aws_secret_access_key="bench",
        config=Config(max_pool_connections=64, s3={"addressing_style": "path"}))


def _download(server: S3Server, bucket: str, dest: Path, workers: int,
              fresh: bool = False) -> float:
    """Seconds to list `bucket` and GET every object into `dest`; with `fresh`, making
    the client is inside the clock."""
    dest.mkdir()
    c = None if fresh else server.client()
    t0 = time.perf_counter()
    if c is None:
        c = _fresh_client(server)
    keys = [o["Key"] for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", ())]

    def get(key: str) -> None:
        body = c.get_object(Bucket=bucket, Key=key)["Body"]
        with open(dest / key, "wb") as f:
            for chunk in body.iter_chunks(1 << 20):
                f.write(chunk)

    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(get, keys))
    return time.perf_counter() - t0


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bench(n: int, size: int, runs: int, jobs: int) -> dict[str, Any]:
    os.environ.update({"AWS_EC2_METADATA_DISABLED": "true", _KEY_ENV: "bench",
                       _SECRET_ENV: "bench"})
    with tempfile.TemporaryDirectory(prefix="dispersiond-restore-bench-") as tmp:
        work = Path(tmp)
        server = S3Server(work)
        try:
            c = server.client()
            for b in ("pub", "prv", "raw"):
                c.create_bucket(Bucket=b)
            cfg = str(_daemon_config(work / "device", server, "pub", "prv", Setup()))
            src = _make_files(work / "src", n, size)
            before = server.requests()
            ids = _protect(cfg, src)
            stored = server.requests() - before
            _upload_raw(server, "raw", src, jobs)
            raw_t, cold_t, bulk_t, raw_req, bulk_req, bulk_cpu, raw_cpu = ([] for _ in range(7))
            for r in range(runs):
                def raw() -> None:
                    before, cpu = server.requests(), _cpu()
                    raw_t.append(_download(server, "raw", work / f"raw-{r}", jobs))
                    raw_cpu.append(_cpu() - cpu)
                    raw_req.append(server.requests() - before)

                def cold() -> None:
                    cold_t.append(_download(server, "raw", work / f"cold-{r}", jobs, True))

                def ours() -> None:
                    out = work / f"out-{r}"
                    out.mkdir()
                    before, cpu = server.requests(), _cpu()
                    t0 = time.perf_counter()
                    if n == 1:
                        _cli("-c", cfg, "restore", ids[0], "--to", str(out), "--json")
                    else:
                        res = json.loads(_cli("-c", cfg, "restore", "--all", "--to", str(out),
                                              "--jobs", str(jobs), "--json"))
                        if res["restored"] != n:
                            raise SystemExit(f"restored {res['restored']} of {n}")
                    bulk_t.append(time.perf_counter() - t0)
                    bulk_cpu.append(_cpu() - cpu)
                    bulk_req.append(server.requests() - before)
                    for p in src[:: max(1, n // 50)]:  # spot check, bit-exact
                        if (out / p.name).read_bytes() != p.read_bytes():
                            raise SystemExit(f"{p.name} differs after restore")

                sides = [raw, cold, ours]
                for side in sides[r % 3:] + sides[:r % 3]:
                    side()
                for d in ("raw", "cold", "out"):
                    shutil.rmtree(work / f"{d}-{r}")
        finally:
            server.stop()
    raw_m, cold_m = statistics.median(raw_t), statistics.median(cold_t)
    bulk_m = statistics.median(bulk_t)
    return {"files": n, "size": size, "runs": runs, "jobs": jobs,
            "protect_requests": stored,
            "raw_download": {"seconds": round(raw_m, 3), "files_per_s": round(n / raw_m, 1),
                             "requests": statistics.median(raw_req),
                             "cpu_seconds": round(statistics.median(raw_cpu), 3),
                             "seconds_with_new_client": round(cold_m, 3)},
            "restore": {"seconds": round(bulk_m, 3), "files_per_s": round(n / bulk_m, 1),
                        "requests": statistics.median(bulk_req),
                        "cpu_seconds": round(statistics.median(bulk_cpu), 3)},
            "restore_vs_raw": round(bulk_m / raw_m, 2),
            "restore_vs_raw_with_new_client": round(bulk_m / cold_m, 2),
            "all_seconds": {"raw_download": [round(x, 3) for x in raw_t],
                            "raw_download_with_new_client": [round(x, 3) for x in cold_t],
                            "restore": [round(x, 3) for x in bulk_t]}}


if __name__ == "__main__":
    a = [int(x) for x in sys.argv[1:]]
    print(json.dumps(bench(*(a + [1000, 16 << 10, 3, 8][len(a):])), indent=1))
