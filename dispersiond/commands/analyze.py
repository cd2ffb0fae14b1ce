"""`dispersiond analyze`: fragment statistics (the paper's Table 2, Fig. 4) and the key-leak attack.

Entropy of the public fragment is what the paper reports; the key-leak mode shows
why it is not enough (docs/SECURITY.md).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import DispersiondError

SCHEME_CHOICES = ("both", "paper-v1", "se2")


def register(sub) -> None:
    p = sub.add_parser(
        "analyze", help="entropy of public fragments, and the key-leak attack (docs/SECURITY.md)",
        description="Encode each FILE under fresh random keys (whole file as content) and report "
                    "its size, the byte entropy (bits/byte) and chi-square against uniform "
                    "(255 degrees of freedom) of the input and of each scheme's public fragment: "
                    "the paper's Table 2. With --key-leak, instead attack each public fragment "
                    "as someone holding the key but not the private fragment would, and report "
                    "the share of 32-byte units recovered. Files are read whole into memory.",
        epilog="examples: dispersiond analyze scan.dcm note.json --plot dist.png; "
               "dispersiond analyze --key-leak --max-units 100000 scan.dcm")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--scheme", choices=SCHEME_CHOICES, default="both",
                   help="which scheme's public fragment to analyse (default: both)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--plot", metavar="OUT.png",
                   help="draw the byte distributions of input and public fragments side by side "
                        "(the paper's Fig. 4; needs matplotlib: pip install 'dispersiond[plots]')")
    p.add_argument("--key-leak", action="store_true",
                   help="run the leaked-key dictionary attack on each file's public fragment")
    p.add_argument("--max-units", type=int, default=200_000, metavar="N",
                   help="key-leak: attack at most N units per file, as evenly spread blocks "
                        "(default 200000, about 6 MB; 0 = all). Each dictionary word costs one "
                        "SHA-256 per unit under paper-v1")
    p.add_argument("--neighbours", action="store_true",
                   help="key-leak: also try the words of each recovered unit on the units "
                        "beside it (paper-v1)")
    p.set_defaults(func=_run)


def _schemes(choice: str) -> tuple[str, ...]:
    return ("paper-v1", "se2") if choice == "both" else (choice,)


def _read_all(paths: list[str]) -> list[bytes]:
    """Read every file first, so a typo fails before minutes of work, naming the file."""
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise DispersiondError(f"no such file: {', '.join(missing)}")
    out = []
    for p in paths:
        if Path(p).is_dir():
            raise DispersiondError(f"{p} is a directory: pass the files inside it")
        try:
            out.append(Path(p).read_bytes())
        except OSError as exc:
            raise DispersiondError(f"cannot read {p}: {exc.strerror}") from None
    return out


def _run(args: argparse.Namespace) -> int:
    if args.max_units < 0:
        raise DispersiondError("--max-units must be 0 (all units) or more")
    if args.plot and args.key_leak:
        raise DispersiondError("--plot draws byte distributions; run it without --key-leak")
    if args.plot:
        from ..research.plots import _pyplot

        _pyplot()  # fail on a missing matplotlib before the work, not after
    datas = _read_all(args.files)
    if args.key_leak:
        return _key_leak(args, datas)
    return _stats(args, datas)


def _console():
    """rich console; wide enough for the tables when output goes to a file or pipe."""
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=max(c.width, 130))


def _fmt_p(p: float | None) -> str:
    return "" if p is None else f"{p:.3g}"


def _stats(args: argparse.Namespace, datas: list[bytes]) -> int:
    from ..research import entropy

    schemes = _schemes(args.scheme)
    from ..research.compress_bench import compression_of

    rows = [(path, entropy.analyze_bytes(d, schemes))
            for path, d in zip(args.files, datas, strict=True)]
    packed = [compression_of(d) for d in datas]  # what `compression: auto` would store
    if args.plot:
        from ..research.plots import distribution_plot

        distribution_plot([(Path(path).name,
                            [("input", st.input.hist)]
                            + [(f"{s} public fragment", st.puf[s].hist) for s in schemes])
                           for path, st in rows], args.plot)
    if args.json:
        print(json.dumps({"files": [{"path": path, **st.to_dict(), "compression": c}
                                    for (path, st), c in zip(rows, packed)],
                          "plot": args.plot}, indent=1))
        return 0
    from rich.table import Table

    with_p = any(st.input.p_value is not None for _, st in rows)
    t = Table(title="Entropy and chi-square of input and public fragment (the paper's Table 2)",
              caption="H: Shannon entropy of the byte histogram, bits/byte. H rand: expected H "
                      "of uniform random bytes as long as the fragment. chi2: against uniform, "
                      "255 degrees of freedom (random: about 255 +- 23). Fresh random keys, "
                      "whole file as content. zstd ratio: stored content / original under "
                      "compression: auto (head split as the daemon does).")
    for col in ("file", "bytes", "zstd ratio", "H input", "chi2 input", "scheme", "H PUF", "H rand",
                "chi2 PUF") + (("p PUF",) if with_p else ()):
        t.add_column(col, justify="left" if col in ("file", "scheme") else "right")
    for (path, st), c in zip(rows, packed):
        for i, s in enumerate(schemes):
            f = st.puf[s]
            ratio = f"{c['ratio']:.2f}" if c["codec"] != "none" else "not compressed"
            head = ([Path(path).name, str(st.size), ratio, f"{st.input.entropy:.3f}",
                     f"{st.input.chi2:.3g}"] if i == 0 else ["", "", "", "", ""])
            t.add_row(*head, s, f"{f.entropy:.4f}", f"{f.random_entropy:.4f}", f"{f.chi2:.1f}",
                      *((_fmt_p(f.p_value),) if with_p else ()))
    _console().print(t)
    if args.plot:
        print(f"byte distributions drawn to {args.plot}")
    return 0


def _dur(seconds: float) -> str:
    for unit, n in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600),
                    ("minutes", 60)):
        if seconds >= n:
            return f"{seconds / n:,.1f} {unit}"
    return f"{seconds:.2f} s"


def _key_leak(args: argparse.Namespace, datas: list[bytes]) -> int:
    from ..research import key_leak as A

    schemes = _schemes(args.scheme)
    max_units = args.max_units or None
    reports = []
    from rich.console import Console

    err = Console(stderr=True)
    with err.status("attacking") as status:
        for path, d in zip(args.files, datas, strict=True):
            status.update(f"attacking {Path(path).name}")
            reports.append((path, A.key_leak(d, schemes=schemes, max_units=max_units,
                                             neighbours=args.neighbours)))
        rate = A.sha256_rate()
    units = sum(r.units for _, r in reports)
    cost = A.brute_force_cost(units, rate)
    se2_years = A.se2_search_years()
    if args.json:
        print(json.dumps({
            "files": [{"path": p, **r.to_dict()} for p, r in reports],
            "dictionary": [{"name": n, "hex": w.hex()} for n, w in A.DICTIONARY],
            "rules": {"names": list(A.RULES), "max_distinct": A.MAX_DISTINCT,
                      "false_accept_log2": A.false_accept_bounds()},
            "paper_v1_full_search": cost, "gpu_sha256_per_s": A.GPU_SHA256_PER_S,
            "se2_full_search_years_at_1e18_per_s": se2_years}, indent=1))
        return 0
    from rich.table import Table

    t = Table(title="Key-leak attack: key and public fragment known, private fragment not",
              caption="uniform: units that are one 4-byte word x 8. in dict: units whose "
                      "paper-v1 private word is a dictionary word (the dictionary pass's "
                      "ceiling). accepted: a guess passed the consistency rules; correct: the "
                      "rebuilt 32 bytes equal the plaintext; FP = accepted - correct. "
                      "recovered = correct / units attacked.")
    for col in ("file", "bytes", "units", "uniform", "in dict", "scheme", "accepted", "correct",
                "FP", "recovered"):
        t.add_column(col, justify="left" if col in ("file", "scheme") else "right")
    for path, r in reports:
        for i, (key, x) in enumerate(r.results.items()):
            u = f"{x.tried}/{r.units}" if x.sampled else str(r.units)
            head = ([Path(path).name, str(r.size), u, f"{100 * r.uniform_share:.1f}%",
                     f"{100 * r.in_dictionary_share:.1f}%" if "paper-v1" in r.results else "-"]
                    if i == 0 else ["", "", "", "", ""])
            t.add_row(*head, key, str(x.accepted), str(x.correct), str(x.false_positives),
                      f"{100 * x.share:.1f}%")
    out = _console()
    out.print(t)
    if any(x.sampled for _, r in reports for x in r.results.values()):
        out.print(f"Sampled: at most {args.max_units} units per file, in evenly spread blocks "
                  "(--max-units 0 attacks all).")
    if "se2" in schemes:
        verified = sum(r.results["se2"].tags_verified for _, r in reports)
        out.print(f"se2: {len(A.stand_in_secrets(bytes(32)))} stand-ins for the file secret "
                  f"derived from the key x {len(A.DICTIONARY)} words per chunk; GCM tags that "
                  f"verified: {verified}.")
    if "paper-v1" in schemes and units:
        out.print(
            f"Full search against paper-v1 with the key known: every unit independently, "
            f"{units:,} units x 2^32 = 2^{cost['calls_log2']:.1f} SHA-256 calls "
            f"({cost['seconds_per_unit']:,.0f} s per unit at {rate / 1e6:.1f} M/s, hashlib, one "
            f"core here): {_dur(cost['seconds'])} on one core, "
            f"{_dur(cost['gpu_seconds'])} at {A.GPU_SHA256_PER_S:.0e}/s (one GPU).")
    if "se2" in schemes:
        out.print(f"se2: the pad and positions come from a 256-bit per-file secret held only in "
                  f"the private container; the key alone gives no per-unit search. Trying half "
                  f"of 2^256 secrets at 10^18/s takes {se2_years:.1e} years.")
    return 0
