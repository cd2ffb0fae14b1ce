"""`dispersiond bench pipeline --stores local`: the same drop-to-done run as `bench
pipeline`, with both of the daemon's stores local folders, so no network and no S3
server share the machine: what is left is the device's own work per record (intake,
encode, the local stores' writes and fsyncs, commit, backup, after-policy).

The baseline is the same backend's `put` of each file's bytes into one folder (8
threads, one object per file, each fsynced as the local store does), in the same run.
Besides the wall clock it reports the daemon's CPU time (user + system) per file, which
a machine shared with other work moves far less.
"""
from __future__ import annotations

import shutil
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from backends import open_store

from . import pipeline_bench as pb


def _raw_put(folder: Path, files: list[Path]) -> float:
    import time

    with open_store("local", "raw", path=str(folder)) as store:
        def put(p: Path) -> None:
            with open(p, "rb") as f:
                store.put(p.name, f, p.stat().st_size)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(pb.WORKERS) as ex:
            list(ex.map(put, files))
        return time.perf_counter() - t0


def _stored(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def bench_shape(work: Path, n: int, size: int, runs: int,
                setup: pb.Setup = pb.Setup()) -> dict[str, Any]:
    raw_t: list[float] = []
    pipe_t: list[float] = []
    stored: list[int] = []
    cpu: list[float] = []
    total = 0
    for r in range(runs):
        src = pb._make_files(work / f"src-{r}", n, size, setup.content)
        total = sum(p.stat().st_size for p in src)
        dirs = work / f"stores-{r}"

        def raw() -> None:
            raw_t.append(_raw_put(dirs / "raw", src))

        def pipe() -> None:
            took, _ = pb._pipeline(None, src, work / f"daemon-{r}", "pub", "prv", setup,
                                   stores=lambda b: {"type": "local", "path": str(dirs / b)},
                                   cpu=cpu)
            pipe_t.append(took)
            stored.append(_stored(dirs / "pub") + _stored(dirs / "prv"))

        for side in ((raw, pipe) if r % 2 == 0 else (pipe, raw)):
            side()
        for sub in (f"src-{r}", f"daemon-{r}", f"stores-{r}"):
            shutil.rmtree(work / sub, ignore_errors=True)
    raw, pipe = statistics.median(raw_t), statistics.median(pipe_t)
    return {
        "stores": "local", "files": n, "size": size, "runs": runs, "link": None,
        "daemon_nice": setup.nice, "digest": setup.digest, "content": setup.content,
        "compression": setup.compression, "bytes": total,
        "stored_bytes": statistics.median(stored),
        "stored_vs_raw": round(statistics.median(stored) / total, 3) if total else None,
        "raw": {"seconds": round(raw, 3), "files_per_s": round(n / raw, 1),
                "mb_per_s": round(total / raw / 1e6, 1)},
        "pipeline": {"seconds": round(pipe, 3), "files_per_s": round(n / pipe, 1),
                     "mb_per_s": round(total / pipe / 1e6, 1),
                     "ms_per_file": round(pipe / n * 1e3, 2),
                     "cpu_ms_per_file": round(statistics.median(cpu) / n * 1e3, 2)},
        "pipeline_vs_raw": round(pipe / raw, 2),
        "all_seconds": {"raw": [round(x, 3) for x in raw_t],
                        "pipeline": [round(x, 3) for x in pipe_t],
                        "pipeline_cpu": [round(x, 3) for x in cpu]},
    }


def run(shapes: list[tuple[int, int]], runs: int, setup: pb.Setup = pb.Setup(),
        on_shape=lambda result: None) -> list[dict[str, Any]]:
    import tempfile

    results = []
    with tempfile.TemporaryDirectory(prefix="dispersiond-bench-local-") as tmp:
        for n, s in shapes:
            results.append(bench_shape(Path(tmp) / f"{n}x{s}", n, s, runs, setup))
            on_shape(results[-1])
    return results
