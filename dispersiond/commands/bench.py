"""`dispersiond bench`: codec throughput (the paper's Fig. 6 analogue), streaming memory and the
whole pipeline against a plain upload; the measuring is in dispersiond/research/."""
from __future__ import annotations

import argparse
import json

from .. import digests
from ..errors import DispersiondError
from ..units import human_size, parse_size


def register(sub) -> None:
    p = sub.add_parser(
        "bench", help="measure codec speed against AES baselines (or streaming memory)",
        description="codec (default): MB/s of AES-128-CBC (the paper's baseline), AES-256-GCM "
                    "(whole-file envelope encryption), se2 and paper-v1 encode/decode, each the "
                    "median of --runs runs on one random buffer in one process. stream: encode "
                    "a file of --size through the streaming API and report peak RSS. pipeline: "
                    "files through the whole pipeline (the daemon, or `put` with --mode put) to "
                    "a local S3 server. compress: stored "
                    "bytes and encode time with and without compression. scale: the manifest "
                    "backup one more record costs an archive of --records records (bytes "
                    "uploaded, backup time, recover time). restore: `restore --all` of --files "
                    "records (`restore ID` with --files 1) against a plain boto3 download of "
                    "the same records, one object per file, from a local S3 server.")
    p.add_argument("what", nargs="?",
                   choices=["codec", "stream", "pipeline", "compress", "scale", "restore"],
                   default="codec")
    p.add_argument("--size", default=None,
                   help="buffer or file size (codec: 64MiB, stream: 1GiB, pipeline: see --files)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per algorithm (median)")
    p.add_argument("--paper-runs", type=int, default=None,
                   help="runs for paper-v1 (slow by design; default: --runs)")
    p.add_argument("--scheme", default="se2", help="stream: scheme to encode with")
    p.add_argument("--files", type=int, default=None, help="pipeline: number of files")
    p.add_argument("--mode", choices=["daemon", "put"], default="daemon",
                   help="pipeline: files dropped into the daemon's inbox (default), or one "
                        "`dispersiond put FILE...` of them")
    p.add_argument("--nice", type=int, default=None, metavar="N",
                   help="pipeline: run the daemon at this niceness (default: the Nice= of "
                        "deploy/dispersiond.service)")
    p.add_argument("--digest", choices=digests.ALGORITHMS, default=digests.DEFAULT,
                   help="pipeline: the hash the daemon's digests are made with (default: "
                        "%(default)s, as in a new config)")
    p.add_argument("--link", default=None, metavar="RATE",
                   help="pipeline: cap both the baseline and the daemon at RATE bytes per "
                        "second (e.g. 50MB), as an uplink would")
    p.add_argument("--records", default=None, metavar="N[,N...]",
                   help="scale: archive sizes (default 1000,10000,100000; 1000000 is opt-in)")
    p.add_argument("--content", choices=["random", "fhir"], default="random",
                   help="pipeline: random (incompressible) files, or generated FHIR R4 Bundles "
                        "of about --size each")
    p.add_argument("--compression", default=None, metavar="off|auto|zstd:N",
                   help="pipeline: the daemon's compression setting (default: with --content "
                        "fhir, off and auto one after the other; else auto)")
    p.add_argument("--stores", choices=["s3", "local"], default="s3",
                   help="pipeline: the daemon's stores on a local S3 server (default), or "
                        "local folders: no network, the device's own work per file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="OUT.png", help="codec: draw a bar chart (needs matplotlib)")
    p.add_argument("--trickle", default=None, metavar="INTERVAL",
                   help="pipeline: drop one record (of --size, default 16KiB) every INTERVAL "
                        "(e.g. 200ms) for --duration, and report each record's latency from "
                        "drop to done next to a plain put of each as it arrives")
    p.add_argument("--duration", default=None, metavar="TIME",
                   help="pipeline --trickle: how long records keep coming (default 60s)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.runs < 1:
        raise DispersiondError("--runs must be at least 1")
    try:
        size = parse_size(args.size) if args.size else None
    except ValueError as exc:
        raise DispersiondError(str(exc)) from None
    if args.what == "codec":
        return _codec(args, size or 64 << 20)
    if args.what == "stream":
        return _stream(args, size or 1 << 30)
    if args.what == "compress":
        from ..research.compress_bench import run_compress_bench

        return run_compress_bench(args)
    if args.what == "scale":
        return _scale(args)
    if args.what == "restore":
        return _restore(args, size)
    return _pipeline(args, size)


def _codec(args: argparse.Namespace, size: int) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..research.codec_bench import DIGEST_NAMES, NAMES, codec_bench
    from ..research.machine import describe

    err = Console(stderr=True)
    with err.status("benchmarking") as status:
        res = codec_bench(size, args.runs, args.paper_runs,
                          progress=lambda n: status.update(f"benchmarking {n}"))
    if args.plot:
        from ..research.plots import bench_plot

        bench_plot({k: res[k] for k in NAMES}, args.plot)
    if args.json:
        print(json.dumps({k: round(res[k], 1) for k in NAMES + DIGEST_NAMES}))
        return 0
    base = res["aes-128-cbc"]
    t = Table(title=f"codec throughput, {size / 2**20:.0f} MiB buffer, median of {args.runs} runs",
              caption=describe())
    t.add_column("algorithm")
    t.add_column("MB/s", justify="right")
    t.add_column("x AES-128-CBC", justify="right")
    for k in NAMES + DIGEST_NAMES:
        t.add_row(k, f"{res[k]:.0f}", f"{res[k] / base:.2f}")
    Console().print(t)
    return 0


def _stream(args: argparse.Namespace, size: int) -> int:
    from ..research.codec_bench import stream_rss

    res = stream_rss(size, args.scheme)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"streaming {args.scheme} encode of {size / 2**20:.0f} MiB: "
              f"{res['mb_per_s']:.0f} MB/s, peak RSS {res['peak_rss_mib']:.1f} MiB "
              f"(before the run: {res['rss_before_mib']:.1f} MiB)")
    return 0


def _restore(args: argparse.Namespace, size: int | None) -> int:
    """`restore --all` of --files records (`restore ID` of one) against a plain boto3
    download of the same records, one object per file, from one local S3 server
    (interleaved, medians of --runs)."""
    import json

    from ..research.restore_bench import bench

    r = bench(args.files or 1000, size or 16 << 10, args.runs, 8)
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        what = "restore ID" if r["files"] == 1 else "restore --all"
        raw = r["raw_download"]
        print(f"{r['files']} x {r['size']} B: boto3 download {raw['seconds']} s "
              f"({raw['seconds_with_new_client']} s with a new client), {what} "
              f"{r['restore']['seconds']} s ({r['restore_vs_raw']}x; "
              f"{r['restore_vs_raw_with_new_client']}x), requests {raw['requests']} vs "
              f"{r['restore']['requests']}")
    return 0


def _scale(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from ..research import scale_bench as sb
    from ..research.machine import describe

    try:
        sizes = tuple(int(x) for x in args.records.split(",")) if args.records else sb.SIZES
    except ValueError:
        raise DispersiondError("--records takes numbers separated by commas") from None
    if any(n < 1 for n in sizes):
        raise DispersiondError("--records must be at least 1")
    if not args.json:
        print(f"records one at a time over whole generations (at least {sb.MEASURED}); "
              f"{describe()}")
        print("| records | first checkpoint (whole) | delta | checkpoint (root + changed "
              "segments) | records per checkpoint | amortised per record | recover | objects "
              "recover reads |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|")

    def row(r: dict) -> None:
        if not args.json:
            print(f"| {r['records']:,} | {human_size(r['first_checkpoint_bytes'])} | "
                  f"{r['delta_bytes']:,.0f} B, {r['delta_ms']:.1f} ms | "
                  f"{human_size(r['checkpoint_bytes'])} (root {human_size(r['root_bytes'])}), "
                  f"{r['checkpoint_ms']:.1f} ms | {r['records_per_checkpoint']:,} | "
                  f"{r['amortised_bytes']:,} B, {r['amortised_ms']:.2f} ms | "
                  f"{r['recover_s']:.2f} s | {r['recover_objects']:,} |", flush=True)

    with tempfile.TemporaryDirectory(prefix="dispersiond-scale-") as tmp:
        res = sb.run(sizes, Path(tmp), args.runs, on_size=row)
    if args.json:
        print(json.dumps({"machine": describe(), "runs": args.runs, "sizes": res}))
    return 0


def _pipeline(args: argparse.Namespace, size: int | None) -> int:
    from ..research import pipeline_bench as pb
    from ..research.machine import describe

    if args.files is not None and args.files < 1:
        raise DispersiondError("--files must be at least 1")
    trickle = _trickle_args(args)
    if trickle is not None:
        shapes = []
    elif args.files is not None or size is not None:
        shapes = [(args.files or 1000, size if size is not None else 16 << 10)]
    else:
        shapes = pb.SHAPES
        trickle = pb.TRICKLE  # the default set: the trickle and the batch shapes
    link = parse_size(args.link) if args.link else None
    if link is not None and link < 1 << 20:
        raise DispersiondError("--link must be at least 1MiB (per second)")
    nice = pb.DAEMON_NICE if args.nice is None else args.nice
    if not 0 <= nice <= 19:
        raise DispersiondError("--nice must be between 0 and 19")
    if args.compression:
        from ..codec import compress

        try:
            compress.Policy.parse(args.compression)
        except ValueError as exc:
            raise DispersiondError(f"--compression: {exc}") from None
    settings = ([args.compression] if args.compression else
                ["off", "auto"] if args.content == "fhir" else ["auto"])
    if args.stores == "local" and link is not None:
        raise DispersiondError("--link caps an uplink: it needs --stores s3")
    if args.stores == "local" and args.mode == "put":
        raise DispersiondError("--mode put runs against the S3 server: it needs --stores s3")
    if args.stores == "local":
        from ..research import local_pipeline_bench as lpb

        run = lpb.run
    else:
        run = pb.run
    results = []
    trickled = [] if trickle is None else [_trickle(args, trickle, pb.Setup(
        link, nice, args.digest, args.content, settings[-1]), size)]
    for compression in settings:
        setup = pb.Setup(link, nice, args.digest, args.content, compression, args.mode)
        results += run(shapes, args.runs, setup,
                       on_shape=(lambda r: None) if args.json else _print_shape)
    if args.json:
        print(json.dumps({"machine": describe(), "workers": pb.WORKERS,
                          "shapes": results + trickled}))
    return 0


def _trickle(args: argparse.Namespace, trickle: tuple[float, float], setup,
             size: int | None) -> dict:
    """The trickle run (printed unless --json); its result."""
    from ..research import pipeline_bench as pb

    interval, duration = trickle
    r = pb.run_trickle(interval, duration, size or pb.TRICKLE_SIZE, args.runs, setup)
    if not args.json:
        _print_trickle(r)
    return r


def _seconds(text: str, what: str) -> float:
    """A duration from the command line: 200ms, 1.5s, 1m (or plain seconds)."""
    from ..units import parse_duration

    try:
        if text.strip().lower().endswith("ms"):
            return float(text.strip()[:-2]) / 1000
        return parse_duration(text).total_seconds()
    except ValueError:
        raise DispersiondError(f"{what}: not a duration: {text!r} (examples: 200ms, 2s, "
                               "1m)") from None


def _trickle_args(args: argparse.Namespace) -> tuple[float, float] | None:
    """(interval, duration) of `--trickle INTERVAL --duration TIME`; None without --trickle."""
    if args.trickle is None:
        if args.duration is not None:
            raise DispersiondError("--duration goes with --trickle")
        return None
    if args.files is not None:
        raise DispersiondError("--trickle takes --duration, not --files (the count is "
                               "--duration / INTERVAL)")
    interval = _seconds(args.trickle, "--trickle")
    duration = _seconds(args.duration or "60s", "--duration")
    if not 0.001 <= interval <= 60:
        raise DispersiondError("--trickle must be between 1ms and 60s")
    if not interval <= duration <= 3600:
        raise DispersiondError("--duration must be at least one --trickle interval and at "
                               "most 1h")
    return interval, duration


def _print_trickle(r: dict) -> None:
    from ..research.pipeline_bench import WORKERS

    t = r["trickle"]
    link = f", both capped at {human_size(r['link'])}/s" if r["link"] else ""
    print(f"trickle: one {human_size(r['size'])} record every {t['interval_s'] * 1000:.0f} ms "
          f"for {t['duration_s']:.0f} s ({r['files']} records), {r['runs']} run(s), "
          f"{WORKERS} upload threads each{link}, daemon at nice {r['daemon_nice']}, "
          f"{r['digest']} digests, compression {r['compression']}:")
    for label, key in (("boto3 put (baseline)", "raw"), ("dispersiond pipeline", "pipeline")):
        x = r[key]
        print(f"  {label:22} latency median {x['latency']['median_ms']:8.1f} ms, max "
              f"{x['latency']['max_ms']:8.1f} ms {x['requests_per_file']:6.2f} requests/record")
    print(f"  target (max_wait {t['max_wait_s']:.0f} s + 2 s): {t['target_ms']:.0f} ms; daemon "
          f"peak RSS {r['daemon_peak_rss_mib']} MiB")
    _print_cpu(r)


def _print_shape(r: dict) -> None:
    from ..research.pipeline_bench import WORKERS

    link = f", both capped at {human_size(r['link'])}/s" if r["link"] else ""
    local = r.get("stores") == "local"
    mode = r.get("mode", "daemon")
    who = (f"daemon at nice {r['daemon_nice']}" if mode == "daemon" else
           "`dispersiond put` in-process")
    print(f"{r['files']} x {human_size(r['size'])}, median of {r['runs']} runs, "
          f"{WORKERS} upload threads each{link}, {who}, "
          f"{r['digest']} digests, {r['content']} content, compression {r['compression']}"
          f"{', local-folder stores' if local else ''}:")
    base = "local put (baseline)" if local else "boto3 put (baseline)"
    ours = "dispersiond pipeline" if mode == "daemon" else "dispersiond put"
    for label, key in ((base, "raw"), (ours, "pipeline")):
        x = r[key]
        tail = (f"{x['ms_per_file']:6.2f} ms/file ({x['cpu_ms_per_file']:.2f} ms of CPU)"
                if "ms_per_file" in x else
                f"{x['requests_per_file']:6.2f} requests/file" if "requests_per_file" in x
                else "")
        print(f"  {label:22} {x['seconds']:8.2f} s {x['files_per_s']:9.1f} files/s "
              f"{x['mb_per_s']:8.1f} MB/s {tail}")
    print(f"  {mode} / baseline time: {r['pipeline_vs_raw']:.2f}x; stored (public objects, "
          f"private containers, manifest) {human_size(r['stored_bytes'])} = "
          f"{r['stored_vs_raw']:.3f}x of {human_size(r['bytes'])}")
    if r.get("daemon_peak_rss_mib") is not None:
        print(f"  daemon peak RSS (VmHWM): {r['daemon_peak_rss_mib']} MiB")
    _print_cpu(r)


def _print_cpu(r: dict) -> None:
    cpu = r.get("cpu_seconds") or {}
    if cpu.get("raw") is not None and cpu.get("pipeline") is not None:
        ours = "put" if r.get("mode") == "put" else "daemon"
        print(f"  CPU seconds (user + system; the S3 server's not counted): boto3 side "
              f"{cpu['raw']:.2f}, {ours} {cpu['pipeline']:.2f}")
