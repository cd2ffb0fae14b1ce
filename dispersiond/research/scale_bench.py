"""The manifest at scale: what one more record costs a device that already protects N.

For each N, an archive of N synthetic done files (two public replicas and a private
container each, as `replicate` mode makes them) is written straight into a fresh state
database through the state package, and a first checkpoint is put on a local private
store. Then records arrive one at a time, a backup each, over whole generations (a
checkpoint and the deltas on it): what each record costs in uploaded bytes and backup
time, checkpoints included, and a blank device recovers the state from the newest
checkpoint (root + segments) + deltas (the manifest part of recover: list,
authenticate, check, replay, load; no private container is fetched, the synthetic
ones do not exist).
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import yaml

SIZES = (10**3, 10**4, 10**5)
LARGE = 10**6  # opt-in: a quarter of an hour, most of it the first checkpoint and recover


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
    return {p.name: p.stat().st_size for p in os.scandir(d)} if d.exists() else {}


#: Records added one at a time (one backup each) over whole generations, at least.
MEASURED = 300
CAP = 5000  # records: a rule that never checkpoints ends the measure here


def _one_more(v, root: Path, i: int) -> tuple[int, float, bool]:
    """One record arrives and is backed up: (bytes uploaded, seconds, a checkpoint?)."""
    from ..errors import DispersiondError
    from ..ops.backup import backup_manifest

    before = _stored(root)
    v.db.add_done_files([_record(i)])
    v.db.mark_manifest_dirty()
    t0 = time.perf_counter()
    if backup_manifest(v) != 1:
        raise DispersiondError("the benchmark's backup did not land on its store")
    took = time.perf_counter() - t0
    tip = v.db.chain_tip()
    return (sum(sz for k, sz in _stored(root).items() if k not in before), took,
            bool(tip and tip.base == tip.seq))


def bench_size(n: int, work: Path, runs: int = 5, batch: int = 50_000,
               measured: int = MEASURED) -> dict:
    """N records, a first (whole) checkpoint; then records one at a time, one backup
    each: until a checkpoint lands (warm-up), then over whole generations of at least
    `measured` records (so every delta's share of its checkpoint is counted). `runs`:
    recover is timed once; the per-backup figures are medians over the measure."""
    from ..config import load_config
    from ..ops import recover as rec
    from ..ops.backup import backup_manifest
    from ..archive import open_archive
    from .. import manifest

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
        first_s = time.perf_counter() - t0
        first_bytes = sum(_stored(root).values())
        i = n
        while i < n + CAP:  # warm-up: up to the first checkpoint on the new records
            i += 1
            if _one_more(v, root, i)[2]:
                break
        rows: list[tuple[int, float, bool]] = []
        while len(rows) < CAP and (len(rows) < measured or not rows[-1][2]):
            i += 1
            rows.append(_one_more(v, root, i))
        root_bytes = v.db.chain_tip().base_bytes
    deltas = [r for r in rows if not r[2]]
    checkpoints = [r for r in rows if r[2]]
    # a blank device: the same config and key, an empty state directory
    (root / "state").rename(root / "state.old")
    with open_archive(cfg) as v:
        t0 = time.perf_counter()
        found, _ = rec.survey(v)
        choice = rec.choose(found, list(cfg.private.stores))
        state = manifest.replay(choice.docs())
        v.db.load_recovered(manifest.rows_of(state), list(state.audit.values()),
                            state.audit_head, state.seq, rec._tip(choice.chain, state), {},
                            rec.segment_state(v, choice, found))
        recover_time = time.perf_counter() - t0
        recovered = len(state.files)
    med = lambda xs: statistics.median(xs) if xs else 0  # noqa: E731
    return {"records": n, "build_s": round(build, 2), "first_checkpoint_bytes": first_bytes,
            "first_checkpoint_s": round(first_s, 3), "root_bytes": root_bytes,
            "measured_records": len(rows), "checkpoints": len(checkpoints),
            "records_per_checkpoint": round(len(rows) / max(1, len(checkpoints)), 1),
            "delta_bytes": med([r[0] for r in deltas]),
            "delta_ms": round(med([r[1] for r in deltas]) * 1e3, 2),
            "checkpoint_bytes": med([r[0] for r in checkpoints]),
            "checkpoint_ms": round(med([r[1] for r in checkpoints]) * 1e3, 2),
            "amortised_bytes": round(sum(r[0] for r in rows) / len(rows)),
            "amortised_ms": round(sum(r[1] for r in rows) / len(rows) * 1e3, 2),
            "recover_s": round(recover_time, 3), "recovered": recovered,
            "recover_objects": len(found), "chain": [f.seq for f in choice.chain],
            "recover_segments": len(choice.segments)}


def run(sizes: tuple[int, ...], work: Path, runs: int = 5, on_size=lambda r: None) -> list[dict]:
    out = []
    for n in sizes:
        r = bench_size(n, work, runs)
        on_size(r)
        out.append(r)
    return out
