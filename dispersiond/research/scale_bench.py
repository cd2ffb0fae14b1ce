"""The manifest at scale: what one more record costs a device that already protects N.

For each N, an archive of N synthetic done files (two public replicas and a private
container each, as `replicate` mode makes them) is written straight into a fresh state
database through the state package, and a checkpoint backup is put on a local private
store. Then one more record arrives: the bytes that backup uploads and its time are
measured, and a blank device recovers the state from checkpoint + delta (the manifest
part of recover: list, authenticate, check, replay, load; no private container is
fetched, the synthetic ones do not exist).
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import yaml

SIZES = (10**3, 10**4, 10**5)
LARGE = 10**6  # opt-in: a few minutes and ~2 GB of memory for the checkpoint


def _config(root: Path) -> Path:
    key = root / "master.key"
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    stores = [{"name": n, "type": "local", "trust": t, "path": str(root / n)}
              for n, t in (("cloud-a", "untrusted"), ("cloud-b", "untrusted"),
                           ("vault", "trusted"))]
    cfg = {"version": 1, "state_dir": str(root / "state"), "key": {"file": str(key)},
           "trust_levels": ["untrusted", "trusted"], "stores": stores,
           "public": {"mode": "replicate", "stores": ["cloud-a", "cloud-b"]},
           "private": {"min_trust": "trusted", "stores": ["vault"]}}
    path = root / "dispersiond.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _record(i: int) -> tuple[dict, list[dict]]:
    """One synthetic done file: what a 64 KiB lab result protected in replicate mode
    leaves in the state (random digests and names, as real ones are)."""
    h = lambda: os.urandom(32).hex()  # noqa: E731
    fields = {"file_id": os.urandom(16).hex(), "name": f"lab-{i:07d}.hl7", "size": 65536,
              "digest": h(), "digest_alg": "blake3", "mtime": 1.7e9 + i, "scheme": "se2",
              "head_len": 0, "chunk_log2": 16, "puf_len": 57344, "container_len": 8412,
              "container_digest": h(), "key_id": "ab" * 8, "public_mode": "replicate",
              "k": None, "n": None, "block": None, "created": 1.7e9 + i}
    objects = [{"role": role, "shard": None, "store": store, "name": os.urandom(16).hex(),
                "offset": 0, "length": size, "object_size": size, "digest": h()}
               for role, store, size in (("public", "cloud-a", 57344),
                                         ("public", "cloud-b", 57344),
                                         ("private", "vault", 8412))]
    return fields, objects


def _stored(root: Path) -> dict[str, int]:
    d = root / "vault" / "manifest"
    return {p.name: p.stat().st_size for p in d.iterdir()} if d.exists() else {}


def bench_size(n: int, work: Path, runs: int = 5, batch: int = 50_000) -> dict:
    """`runs` more records, one backup each: the median bytes and time of those."""
    from ..config import load_config
    from ..ops import recover as rec
    from ..ops.backup import backup_manifest
    from ..archive import open_archive
    from .. import manifest
    from ..errors import DispersiondError

    root = work / f"n{n}"
    root.mkdir(parents=True)
    cfg = load_config(_config(root))
    with open_archive(cfg) as v:
        t0 = time.perf_counter()
        for start in range(0, n, batch):
            v.db.add_done_files([_record(i) for i in range(start, min(n, start + batch))])
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        backup_manifest(v, force=True)
        checkpoint_time = time.perf_counter() - t0
        checkpoint_bytes = sum(_stored(root).values())
        sizes, times, kinds = [], [], set()
        for i in range(runs):
            before = _stored(root)
            v.db.add_done_files([_record(n + i)])  # one more record arrives
            v.db.mark_manifest_dirty()
            t0 = time.perf_counter()
            if backup_manifest(v) != 1:
                raise DispersiondError("the benchmark's backup did not land on its store")
            times.append(time.perf_counter() - t0)
            sizes.append(sum(s for k, s in _stored(root).items() if k not in before))
            tip = v.db.chain_tip()
            kinds.add("delta" if tip and tip.base != tip.seq else "checkpoint")
    # a blank device: the same config and key, an empty state directory
    (root / "state").rename(root / "state.old")
    with open_archive(cfg) as v:
        t0 = time.perf_counter()
        found, _ = rec.survey(v)
        choice = rec.choose(found, list(cfg.private.stores))
        state = manifest.replay([f.doc for f in choice.chain])
        v.db.load_recovered(manifest.rows_of(state), list(state.audit.values()),
                            state.audit_head, state.seq, rec._tip(choice.chain, state), {})
        recover_time = time.perf_counter() - t0
        recovered = len(state.files)
    per_generation = max(1, min(manifest.CHECKPOINT_EVERY, int(
        manifest.CHECKPOINT_FRACTION * checkpoint_bytes / max(1, statistics.median(sizes)))))
    return {"records": n, "build_s": round(build, 2), "checkpoint_bytes": checkpoint_bytes,
            "deltas_per_checkpoint": per_generation,
            "amortised_bytes": round(statistics.median(sizes) + checkpoint_bytes / per_generation),
            "checkpoint_s": round(checkpoint_time, 3), "one_more_kind": "+".join(sorted(kinds)),
            "one_more_bytes": statistics.median(sizes),
            "one_more_backup_ms": round(statistics.median(times) * 1e3, 2),
            "recover_s": round(recover_time, 3), "recovered": recovered,
            "chain": [f.seq for f in choice.chain]}


def run(sizes: tuple[int, ...], work: Path, runs: int = 5, on_size=lambda r: None) -> list[dict]:
    out = []
    for n in sizes:
        r = bench_size(n, work, runs)
        on_size(r)
        out.append(r)
    return out
