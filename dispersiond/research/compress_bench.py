"""`dispersiond bench compress`: stored bytes and encode time with and without
compression, on record kinds a device sees, in one run; and how many padded sizes an
untrusted store sees for records of one kind.

The FHIR, HL7 and CSV records are generated (different patients and values, the shape
of the samples in dispersiond/samples); the DICOM files are the ones pydicom ships.
"""
from __future__ import annotations

import io
import json
import os
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import codec
from ..codec.headers import PROBE, head_len
from ..placement import padded

KEY = bytes(range(32))
_LOINC = [("8480-6", "Systolic blood pressure", "mm[Hg]", 95, 180),
          ("8462-4", "Diastolic blood pressure", "mm[Hg]", 55, 110),
          ("8867-4", "Heart rate", "/min", 45, 150), ("59408-5", "Oxygen saturation", "%", 85, 100),
          ("8310-5", "Body temperature", "Cel", 35, 41), ("29463-7", "Body weight", "kg", 3, 150),
          ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 60, 300),
          ("9279-1", "Respiratory rate", "/min", 8, 35)]
_GIVEN = ["Camille", "Marie", "Louis", "Jules", "Emma", "Noah", "Lina", "Hugo", "Chloé", "Adam",
          "Inès", "Léo", "Manon", "Gabriel", "Sarah", "Arthur"]
_FAMILY = ["Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand",
           "Leroy", "Moreau", "Simon", "Laurent", "Lefebvre", "Michel", "Garcia", "Fournier"]


def fhir_records(n: int, seed: int = 0, target: int = 16 << 10) -> list[bytes]:
    """n FHIR R4 collection Bundles of about `target` bytes: a Patient and vital-sign
    Observations, every value, name, date and id drawn at random."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        pid = str(uuid.UUID(int=rnd.getrandbits(128)))
        patient = {"resourceType": "Patient", "id": pid,
                   "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8",
                                   "value": " ".join(str(rnd.randint(10, 99)) for _ in range(6))}],
                   "name": [{"use": "official", "family": rnd.choice(_FAMILY),
                             "given": rnd.sample(_GIVEN, 2)}],
                   "gender": rnd.choice(["female", "male"]),
                   "birthDate": f"{rnd.randint(1930, 2024)}-{rnd.randint(1, 12):02d}-"
                                f"{rnd.randint(1, 28):02d}"}
        entries = [{"fullUrl": f"urn:uuid:{pid}", "resource": patient}]
        day = f"2026-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}"
        size = len(json.dumps(entries))
        k = 0
        while size < target:
            code, name, unit, lo, hi = rnd.choice(_LOINC)
            oid = str(uuid.UUID(int=rnd.getrandbits(128)))
            value = round(rnd.uniform(lo, hi), 1)
            obs = {"fullUrl": f"urn:uuid:{oid}", "resource": {
                "resourceType": "Observation", "id": oid, "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                    "observation-category",
                                          "code": "vital-signs", "display": "Vital Signs"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": code,
                                     "display": name}]},
                "subject": {"reference": f"urn:uuid:{pid}"},
                "effectiveDateTime": f"{day}T{rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:00Z",
                "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org",
                                  "code": unit}}}
            entries.append(obs)
            size += len(json.dumps(obs)) + 2
            k += 1
        bundle = {"resourceType": "Bundle", "id": f"bundle-{seed}-{i}", "type": "collection",
                  "timestamp": f"{day}T12:00:00Z", "entry": entries}
        out.append(json.dumps(bundle, indent=2, ensure_ascii=False).encode())
    return out


def hl7_messages(n: int, seed: int = 0) -> list[bytes]:
    """n HL7 v2 ORU^R01 messages (about 0.5 to 3 KB), values at random."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        segs = [f"MSH|^~\\&|BEDSIDE|WARD{rnd.randint(1, 9)}^CLINIC|EHR|CLINIC|2026{rnd.randint(1, 12):02d}"
                f"{rnd.randint(1, 28):02d}{rnd.randint(0, 23):02d}{rnd.randint(0, 59):02d}00||ORU^R01^ORU_R01|"
                f"MSG{rnd.randint(0, 10**6):06d}|P|2.5.1",
                f"PID|1||PAT{rnd.randint(0, 10**5):05d}^^^CLINIC^MR||{rnd.choice(_FAMILY).upper()}^"
                f"{rnd.choice(_GIVEN).upper()}||{rnd.randint(1930, 2024)}0101|{rnd.choice('FM')}"]
        for j in range(rnd.randint(4, 40)):
            code, name, unit, lo, hi = rnd.choice(_LOINC)
            segs.append(f"OBX|{j + 1}|NM|{code}^{name}^LN||{round(rnd.uniform(lo, hi), 1)}|{unit}|"
                        f"{lo}-{hi}|N|||F")
        out.append("\r".join(segs).encode() + b"\r")
    return out


def csv_tables(n: int, seed: int = 0, rows: int = 400) -> list[bytes]:
    """n trial tables in the shape of samples/vitals.csv, values at random."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        lines = ["timestamp,patient_id,heart_rate_bpm,systolic_mmhg,diastolic_mmhg,spo2_pct,temp_c"]
        pid = f"PAT{rnd.randint(0, 10**5):05d}"
        for r in range(rows):
            lines.append(f"2026-03-14T{r // 60 % 24:02d}:{r % 60:02d}:00Z,{pid},{rnd.randint(50, 130)},"
                         f"{rnd.randint(95, 180)},{rnd.randint(55, 110)},{rnd.randint(88, 100)},"
                         f"{rnd.uniform(35.5, 39.5):.1f}")
        out.append(("\n".join(lines) + "\n").encode())
    return out


def dicom_files(compressed: bool) -> list[bytes]:
    """pydicom's bundled test files: uncompressed (native) or JPEG/JPEG 2000/RLE ones."""
    import pydicom.data

    from ..codec.headers import head_says_compressed

    root = Path(pydicom.data.__file__).parent / "test_files"
    out = []
    for f in sorted(root.glob("*.dcm")):
        data = f.read_bytes()
        hl = head_len(data[:PROBE], len(data))
        if hl and head_says_compressed(data[:hl]) == compressed and len(data) > 4096:
            out.append(data)
    return out


def random_files(n: int, size: int = 1 << 20, seed: int = 0) -> list[bytes]:
    rnd = random.Random(seed)
    return [rnd.randbytes(size) for _ in range(n)]


class _Discard:
    def write(self, b) -> int:
        return len(b)


@dataclass
class Result:
    kind: str
    files: int
    raw: int
    stored: dict[str, int]  # policy -> one padded public object + one private container, summed
    seconds: dict[str, float]  # policy -> encode time for all files (median of runs)
    classes: dict[str, int]  # policy -> distinct padded public sizes
    compressed: dict[str, int]  # policy -> files stored compressed

    def to_dict(self) -> dict:
        return {"kind": self.kind, "files": self.files, "raw_bytes": self.raw,
                **{f"stored_{p}": v for p, v in self.stored.items()},
                **{f"ratio_{p}": round(v / self.raw, 4) for p, v in self.stored.items()},
                **{f"seconds_{p}": round(v, 4) for p, v in self.seconds.items()},
                **{f"mb_per_s_{p}": round(self.raw / v / 1e6, 1) for p, v in self.seconds.items()},
                **{f"size_classes_{p}": v for p, v in self.classes.items()},
                **{f"compressed_{p}": v for p, v in self.compressed.items()}}


def encode_all(files: list[bytes], policy: str, pad: str = "padme") -> tuple[int, set[int], int]:
    """Encode every file as the daemon does (head split, trial, digest); returns stored
    bytes, the set of padded public sizes, and how many were compressed."""
    stored, sizes, packed = 0, set(), 0
    for data in files:
        hl = head_len(data[:PROBE], len(data))
        enc = codec.encode_stream("se2", KEY, io.BytesIO(data), len(data), _Discard(),
                                  _Discard(), head_len=hl, compression=policy,
                                  digest_alg="blake3")
        p = padded(enc.puf_len, pad)
        stored += p + enc.prf_len
        sizes.add(p)
        packed += enc.codec != "none"
    return stored, sizes, packed


def measure(kind: str, files: list[bytes], policies=("off", "auto"), runs: int = 3) -> Result:
    """Both policies on the same files, interleaved run by run (drift hits both alike);
    the time is this process's CPU time (other jobs on the machine do not add to it)."""
    times: dict[str, list[float]] = {p: [] for p in policies}
    out: dict[str, tuple[int, set[int], int]] = {}
    for _ in range(runs):
        for p in policies:
            t0 = time.process_time()
            out[p] = encode_all(files, p)
            times[p].append(time.process_time() - t0)
    med = {p: sorted(v)[len(v) // 2] for p, v in times.items()}
    return Result(kind, len(files), sum(map(len, files)), {p: out[p][0] for p in policies}, med,
                  {p: len(out[p][1]) for p in policies}, {p: out[p][2] for p in policies})


KINDS: dict[str, Callable[[int], list[bytes]]] = {
    "fhir-json": lambda n: fhir_records(n, seed=1),
    "hl7": lambda n: hl7_messages(n, seed=2),
    "csv": lambda n: csv_tables(max(1, n // 10), seed=3),
    "dicom-raw": lambda n: dicom_files(False),
    "dicom-jpeg": lambda n: dicom_files(True),
    "random": lambda n: random_files(max(1, n // 20)),
}


def compress_bench(n: int = 1000, runs: int = 3, kinds=tuple(KINDS),
                   progress: Callable[[str], None] | None = None) -> list[Result]:
    res = []
    for k in kinds:
        if progress:
            progress(k)
        res.append(measure(k, KINDS[k](n), runs=runs))
    return res


def run_compress_bench(args) -> int:
    """The `bench compress` command: a table, or --json."""
    from rich.console import Console
    from rich.table import Table

    n = args.files or 1000
    err = Console(stderr=True)
    with err.status("benchmarking") as status:
        res = compress_bench(n, args.runs, progress=lambda k: status.update(f"benchmarking {k}"))
    with err.status("benchmarking the incompressible path"):
        over = incompressible_bench(args.runs)
    if args.json:
        print(json.dumps({"kinds": [r.to_dict() for r in res], "incompressible": over}))
        return 0
    t = Table(title=f"compression before SE (stored = one padded public object + one private "
                    f"container per file; encode CPU time, median of {args.runs} runs)")
    for c in ("records", "raw MB", "stored off", "stored auto", "ratio off", "ratio auto",
              "MB/s off", "MB/s auto", "size classes off/auto", "compressed"):
        t.add_column(c, justify="right")
    for r in res:
        d = r.to_dict()
        t.add_row(f"{r.files} {r.kind}", f"{r.raw / 1e6:.2f}", f"{r.stored['off'] / 1e6:.2f}",
                  f"{r.stored['auto'] / 1e6:.2f}", f"{d['ratio_off']:.3f}", f"{d['ratio_auto']:.3f}",
                  f"{d['mb_per_s_off']:.0f}", f"{d['mb_per_s_auto']:.0f}",
                  f"{r.classes['off']}/{r.classes['auto']}", f"{r.compressed['auto']}/{r.files}")
    Console().print(t)
    print_incompressible(over)
    return 0


def print_incompressible(over: dict) -> None:
    print("incompressible content, MB per second of CPU time, each writer's fastest run "
          "of each file:")
    for k, v in over.items():
        prev = (f"release before version 2 {v['mb_per_s_previous']} MB/s "
                f"({v['auto_vs_previous']:.3f}x), " if "mb_per_s_previous" in v else "")
        print(f"{k}: version 2 auto {v['mb_per_s_v2-auto']} MB/s against {prev}this build's "
              f"version 1 writer {v['mb_per_s_v1']} MB/s ({v['auto_vs_v1']:.3f}x)")


def peak_rss_compressed(size: int = 1 << 30) -> dict:
    """Encode `size` bytes of compressible records through the streaming path in a child
    process; its peak RSS shows memory stays bounded whatever the size."""
    import subprocess
    import sys

    code = (
        "import io, os, resource, sys, time\n"
        "from dispersiond import codec\n"
        "from dispersiond.research.compress_bench import fhir_records, KEY\n"
        f"size = {size}\n"
        "block = b''.join(fhir_records(64, seed=9))\n"
        "class Src(io.RawIOBase):\n"
        "    def __init__(s): s.pos = 0\n"
        "    def readable(s): return True\n"
        "    def seekable(s): return True\n"
        "    def seek(s, p, w=0): s.pos = p; return p\n"
        "    def readinto(s, b):\n"
        "        n = min(len(b), size - s.pos)\n"
        "        o = s.pos % len(block); m = min(n, len(block) - o)\n"
        "        b[:m] = block[o:o + m]; s.pos += m; return m\n"
        "class D:\n"
        "    def write(s, b): return len(b)\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.perf_counter()\n"
        "e = codec.encode_stream('se2', KEY, Src(), size, D(), D(), compression='auto', digest_alg='blake3')\n"
        "dt = time.perf_counter() - t\n"
        "print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, dt, e.content_len, e.codec)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    before, peak, dt, clen, name = r.stdout.split()
    return {"size": size, "rss_before_mib": int(before) / 1024, "peak_rss_mib": int(peak) / 1024,
            "seconds": float(dt), "content_len": int(clen), "codec": name,
            "mb_per_s": size / float(dt) / 1e6}


class _Hashing:
    """Reads through a hash, as the daemon's stage did before the codec hashed."""

    def __init__(self, f, h) -> None:
        self.f, self.h = f, h

    def readinto(self, b) -> int:
        n = self.f.readinto(b)
        self.h.update(memoryview(b)[:n])
        return n

    def read(self, n: int = -1) -> bytes:
        d = self.f.read(n)
        self.h.update(d)
        return d


# The last commit whose writer made se2 version 1, before compression and version 2.
PREVIOUS_RELEASE = "d77d531"


def previous_codec(commit: str = PREVIOUS_RELEASE):
    """The codec package of an earlier commit, imported beside this build's (as
    `dispersiond_prev.codec`), so that the writer users had can be timed against
    today's in one process, interleaved. Its C kernel is this build's when the source
    is the same (else its numpy kernels run, and the comparison says so). None when
    this is no git checkout holding that commit."""
    import atexit
    import importlib
    import shutil
    import subprocess
    import sys
    import tarfile
    import tempfile

    root = Path(__file__).resolve().parents[2]
    try:
        tar = subprocess.run(["git", "-C", str(root), "archive", commit, "dispersiond/codec",
                              "dispersiond/errors.py"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    tmp = Path(tempfile.mkdtemp(prefix="dispersiond-prev-"))
    atexit.register(shutil.rmtree, tmp, True)
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(tmp, filter="data")
    pkg = tmp / "dispersiond_prev"
    (tmp / "dispersiond").rename(pkg)
    (pkg / "__init__.py").write_text("")
    here = Path(codec.__file__).parent
    if (pkg / "codec" / "_splitc.c").read_bytes() == (here / "_splitc.c").read_bytes():
        for so in here.glob("_splitc*.so"):
            shutil.copy(so, pkg / "codec" / so.name)
    sys.path.insert(0, str(tmp))
    try:
        return importlib.import_module("dispersiond_prev.codec")
    finally:
        sys.path.remove(str(tmp))


def overhead_bench(files: list[bytes], runs: int = 7, previous=None, cpu: bool = True) -> dict:
    """Encode time of version 2 with `compression: auto` (the daemon's default, the
    digest taken by the codec) against this build's version 1 writer (the digest taken
    by a reader around it, as the daemon did) and, given `previous` (previous_codec()),
    the writer of the release before version 2. Interleaved file by file: each file is
    encoded by every writer in turn, `runs` times, and each writer is charged the
    fastest of its runs of that file, so that every writer gets the same chances. `cpu`:
    the time is this process's CPU time, which a shared machine's other jobs do not add
    to (the wall time of a 64 MiB encode swung by 50 % there; its CPU time by 5 %)."""
    import blake3

    heads = [head_len(d[:PROBE], len(d)) for d in files]

    def writer_v1(mod):
        kw = {"version": 1} if mod is codec else {}

        def run(d: bytes, hl: int) -> None:
            mod.encode_stream("se2", KEY, _Hashing(io.BytesIO(d), blake3.blake3()), len(d),
                              _Discard(), _Discard(), head_len=hl, **kw)
        return run

    def auto(d: bytes, hl: int) -> None:
        codec.encode_stream("se2", KEY, io.BytesIO(d), len(d), _Discard(), _Discard(),
                            head_len=hl, compression="auto", digest_alg="blake3")

    plan = {"v1": writer_v1(codec), "v2-auto": auto}
    if previous is not None:
        plan["previous"] = writer_v1(previous)
    for fn in plan.values():  # warm-up: caches, the kept compressors, page faults
        fn(files[0], heads[0])
    best = {k: [float("inf")] * len(files) for k in plan}
    clock = time.process_time if cpu else time.perf_counter
    for _ in range(runs):
        for i, (d, hl) in enumerate(zip(files, heads)):
            for name, fn in plan.items():
                t0 = clock()
                fn(d, hl)
                best[name][i] = min(best[name][i], clock() - t0)
    raw = sum(map(len, files))
    total = {k: sum(v) for k, v in best.items()}
    out = {**{f"mb_per_s_{k}": round(raw / v / 1e6, 1) for k, v in total.items()},
           **{f"us_per_file_{k}": round(v / len(files) * 1e6, 1) for k, v in total.items()},
           "auto_vs_v1": round(total["v1"] / total["v2-auto"], 3), "files": len(files),
           "bytes": raw, "runs": runs}
    if previous is not None:
        out["auto_vs_previous"] = round(total["previous"] / total["v2-auto"], 3)
    return out


def incompressible_bench(runs: int = 3, previous="auto") -> dict:
    """overhead_bench on incompressible files of every size the daemon sees: random
    records of 1 KiB, 16 KiB and 64 KiB, 1 MiB, 64 MiB, and pydicom's JPEG-family DICOM
    (35 KB each on average; the trial is skipped, the transfer syntax says JPEG). Small
    sets are cheap and the single 64 MiB file is the noisiest: ten times the runs."""
    prev = previous_codec() if previous == "auto" else previous
    sets = {"random-1KiB": (random_files(64, 1 << 10), 10),
            "random-16KiB": (random_files(64, 16 << 10), 10),
            "random-64KiB": (random_files(32, 64 << 10), 10),
            "random-1MiB": (random_files(16), 5),
            "random-64MiB": (random_files(1, 64 << 20), 10),
            "dicom-jpeg": (dicom_files(True), 10)}
    return {k: overhead_bench(files, runs * m + 1, prev) for k, (files, m) in sets.items()}


def compression_of(data: bytes, policy: str = "auto") -> dict:
    """What the daemon's encode would do with this file: codec, and the stored content
    as a share of the original (after the head split, before padding)."""
    hl = head_len(data[:PROBE], len(data))
    enc = codec.encode_stream("se2", KEY, io.BytesIO(data), len(data), _Discard(), _Discard(),
                              head_len=hl, compression=policy)
    body = len(data) - hl
    return {"codec": enc.codec, "ratio": round(enc.content_len / body, 4) if body else 1.0}
