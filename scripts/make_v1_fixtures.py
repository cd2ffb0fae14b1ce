"""Write tests/fixtures/se2-v1/: fragments made by the se2 version 1 writer.

Run once with the version 1 code (they are committed); tests/test_codec_compat.py
checks that every later build still decodes them bit-exact.
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import pydicom.data

from dispersiond import codec
from dispersiond.codec.headers import PROBE, head_len

KEY = bytes(range(0x20, 0x40))
ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "dispersiond" / "samples"


def inputs() -> list[tuple[str, bytes, int, int]]:
    """(name, bytes, head_len, chunk_log2)."""
    dcm = (Path(pydicom.data.__file__).parent / "test_files" / "CT_small.dcm").read_bytes()
    fhir = (SAMPLES / "patient-bundle.fhir.json").read_bytes()
    pattern = bytes((7 + 37 * i + (i * i >> 3)) & 0xFF for i in range(5 * 1024 + 19))
    return [
        ("empty", b"", 0, 18),
        ("hl7", (SAMPLES / "vitals-oru.hl7").read_bytes(), 0, 18),
        ("fhir", fhir, 0, 18),
        ("csv-multichunk", (SAMPLES / "vitals.csv").read_bytes(), 0, 12),
        ("pattern-multichunk", pattern, 0, 10),
        ("dicom", dcm, head_len(dcm[:PROBE], len(dcm)), 18),
    ]


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    index = {"master_key": KEY.hex(), "files": {}}
    for name, data, hl, log2 in inputs():
        puf, prf = io.BytesIO(), io.BytesIO()
        codec.encode_stream("se2", KEY, io.BytesIO(data), len(data), puf, prf, head_len=hl,
                            chunk_log2=log2)
        (out / f"{name}.puf").write_bytes(puf.getvalue())
        (out / f"{name}.prf").write_bytes(prf.getvalue())
        index["files"][name] = {"size": len(data), "head_len": hl, "chunk_log2": log2,
                                "sha256": hashlib.sha256(data).hexdigest()}
    (out / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests" / "fixtures" / "se2-v1")
