"""`dispersiond se encode|decode`: the codec alone, for interop and debugging."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from .. import codec
from ..codec import compress
from ..errors import DispersiondError
from ..codec.headers import PROBE, head_len
from ..fsutil import atomic_output, read_key_file


def register(sub) -> None:
    p = sub.add_parser("se", help="encode or decode one file with a selective-encryption scheme",
                       description="Low-level selective encryption of one file into a public "
                                   "fragment (PUF) and a private fragment (PRF), and back. "
                                   "Formats: docs/FORMAT.md.")
    ops = p.add_subparsers(dest="op", metavar="OP", required=True)
    for op in ("encode", "decode"):
        q = ops.add_parser(op, help=f"{op} one file")
        q.add_argument("--scheme", choices=codec.SCHEMES, default=codec.DEFAULT_SCHEME,
                       help="se2 (default, hardened) or paper-v1 (Algorithm 1 as published)")
        q.add_argument("--key-file", required=True, metavar="KEY",
                       help="raw key: 32 bytes for se2, 16 bytes for paper-v1")
        if op == "encode":
            q.add_argument("--in", dest="inp", required=True, metavar="FILE")
            q.add_argument("--puf", required=True, metavar="OUT.puf")
            q.add_argument("--prf", required=True, metavar="OUT.prf")
            q.add_argument("--head-len", default="0", metavar="N|auto",
                           help="se2: keep the first N bytes (format header) whole in the "
                                "PRF; auto: the DICOM header, if any")
            q.add_argument("--compression", default="auto", metavar="off|auto|zstd:LEVEL",
                           help="se2: compress before the split (default auto: when a quick "
                                "trial says it pays)")
        else:
            q.add_argument("--puf", required=True, metavar="IN.puf")
            q.add_argument("--prf", required=True, metavar="IN.prf")
            q.add_argument("--out", required=True, metavar="FILE")
        q.set_defaults(func=_encode if op == "encode" else _decode)


def _open_in(path: str, what: str):
    try:
        return open(path, "rb")
    except OSError as exc:
        raise DispersiondError(f"cannot open {what} {path}: {exc.strerror}") from None


def _encode(args: argparse.Namespace) -> int:
    key = read_key_file(args.key_file, codec.KEY_LENGTHS[args.scheme])
    try:
        policy = compress.Policy.parse(args.compression)
    except ValueError as exc:
        raise DispersiondError(f"--compression: {exc}") from None
    if args.scheme != "se2":
        policy = compress.OFF  # paper-v1 is the published algorithm, nothing added
    with _open_in(args.inp, "input file") as src:
        size = os.fstat(src.fileno()).st_size
        head_len = _head_len(args.head_len, src, size)
        with atomic_output(args.puf) as puf, atomic_output(args.prf) as prf:
            try:
                codec.encode_stream(args.scheme, key, src, size, puf, prf, head_len=head_len,
                                    compression=policy,
                                    spool_dir=Path(args.prf).resolve().parent)
            except ValueError as exc:
                raise DispersiondError(str(exc)) from None
    return 0


def _head_len(value: str, src, size: int) -> int:
    if value == "auto":
        n = head_len(src.read(PROBE), size)
        src.seek(0)
        return n
    try:
        n = int(value)
    except ValueError:
        raise DispersiondError(f"--head-len must be a number or auto, not {value!r}") from None
    if not 0 <= n <= size:
        raise DispersiondError(f"--head-len must be between 0 and the file size ({size})")
    return n


def _decode(args: argparse.Namespace) -> int:
    key = read_key_file(args.key_file, codec.KEY_LENGTHS[args.scheme])
    with _open_in(args.puf, "public fragment") as puf, _open_in(args.prf, "private fragment") as prf:
        puf_len, prf_len = (os.fstat(f.fileno()).st_size for f in (puf, prf))
        with atomic_output(Path(args.out)) as out:
            codec.decode_stream(args.scheme, key, puf, puf_len, prf, prf_len, out)
    return 0
