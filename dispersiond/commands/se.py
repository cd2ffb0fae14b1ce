"""`dispersiond se encode|decode`: the codec alone, for interop and debugging."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from .. import codec
from ..errors import DispersiondError
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
            q.add_argument("--head-len", type=int, default=0, metavar="N",
                           help="se2: keep the first N bytes (format header) whole in the PRF")
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
    with _open_in(args.inp, "input file") as src:
        size = os.fstat(src.fileno()).st_size
        if not 0 <= args.head_len <= size:
            raise DispersiondError(f"--head-len must be between 0 and the file size ({size})")
        with atomic_output(args.puf) as puf, atomic_output(args.prf) as prf:
            try:
                codec.encode_stream(args.scheme, key, src, size, puf, prf,
                                    head_len=args.head_len)
            except ValueError as exc:
                raise DispersiondError(str(exc)) from None
    return 0


def _decode(args: argparse.Namespace) -> int:
    key = read_key_file(args.key_file, codec.KEY_LENGTHS[args.scheme])
    with _open_in(args.puf, "public fragment") as puf, _open_in(args.prf, "private fragment") as prf:
        puf_len, prf_len = (os.fstat(f.fileno()).st_size for f in (puf, prf))
        with atomic_output(Path(args.out)) as out:
            codec.decode_stream(args.scheme, key, puf, puf_len, prf, prf_len, out)
    return 0
