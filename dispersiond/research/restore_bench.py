"""Bulk restore against a plain download: `restore --all` of N records from a local S3
server, next to a concurrent boto3 download of the same public objects from the same
server in the same run (the floor any restore has to pay).

Run: `python -m dispersiond.research.restore_bench [N] [SIZE_BYTES] [RUNS] [JOBS]`.
The records are protected once (`put`, replicate mode, one public bucket); each run
then times `restore --all --jobs JOBS` (in this process, through the CLI's entry point:
config, archive, every digest checked, decode, fsync, rename) and the baseline (list
the bucket, GET every object, write it to a file), alternating which goes first.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
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


def _download(server: S3Server, bucket: str, dest: Path, workers: int) -> float:
    c = server.client()
    dest.mkdir()
    t0 = time.perf_counter()
    keys = [o["Key"] for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", ())]

    def get(key: str) -> None:
        body = c.get_object(Bucket=bucket, Key=key)["Body"].read()
        with open(dest / key, "wb") as f:
            f.write(body)

    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(get, keys))
    return time.perf_counter() - t0


def bench(n: int, size: int, runs: int, jobs: int) -> dict[str, Any]:
    os.environ.update({"AWS_EC2_METADATA_DISABLED": "true", _KEY_ENV: "bench",
                       _SECRET_ENV: "bench"})
    with tempfile.TemporaryDirectory(prefix="dispersiond-restore-bench-") as tmp:
        work = Path(tmp)
        server = S3Server(work)
        try:
            c = server.client()
            for b in ("pub", "prv"):
                c.create_bucket(Bucket=b)
            cfg = str(_daemon_config(work / "device", server, "pub", "prv", Setup()))
            src = _make_files(work / "src", n, size)
            _cli("-c", cfg, "put", "--json", *map(str, src))
            raw_t, bulk_t, raw_req, bulk_req = [], [], [], []
            for r in range(runs):
                def raw() -> None:
                    before = server.requests()
                    raw_t.append(_download(server, "pub", work / f"raw-{r}", jobs))
                    raw_req.append(server.requests() - before)

                def bulk() -> None:
                    out = work / f"out-{r}"
                    out.mkdir()
                    before = server.requests()
                    t0 = time.perf_counter()
                    res = json.loads(_cli("-c", cfg, "restore", "--all", "--to", str(out),
                                          "--jobs", str(jobs), "--json"))
                    bulk_t.append(time.perf_counter() - t0)
                    bulk_req.append(server.requests() - before)
                    if res["restored"] != n:
                        raise SystemExit(f"restored {res['restored']} of {n}")
                    for p in src[:: max(1, n // 50)]:  # spot check, bit-exact
                        if (out / p.name).read_bytes() != p.read_bytes():
                            raise SystemExit(f"{p.name} differs after restore")

                for side in ((raw, bulk) if r % 2 == 0 else (bulk, raw)):
                    side()
                shutil.rmtree(work / f"raw-{r}")
                shutil.rmtree(work / f"out-{r}")
        finally:
            server.stop()
    raw_m, bulk_m = statistics.median(raw_t), statistics.median(bulk_t)
    return {"files": n, "size": size, "runs": runs, "jobs": jobs,
            "raw_download": {"seconds": round(raw_m, 3), "files_per_s": round(n / raw_m, 1),
                             "requests": statistics.median(raw_req)},
            "restore_all": {"seconds": round(bulk_m, 3), "files_per_s": round(n / bulk_m, 1),
                            "requests": statistics.median(bulk_req)},
            "restore_vs_raw": round(bulk_m / raw_m, 2),
            "all_seconds": {"raw_download": [round(x, 3) for x in raw_t],
                            "restore_all": [round(x, 3) for x in bulk_t]}}


if __name__ == "__main__":
    a = [int(x) for x in sys.argv[1:]]
    print(json.dumps(bench(*(a + [1000, 16 << 10, 3, 8][len(a):])), indent=1))
