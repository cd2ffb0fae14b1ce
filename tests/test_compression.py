"""se2 version 2: compression before the split, the sealed metadata, a public header with
no length and no id, and reading everything version 1 wrote."""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from pathlib import Path

import blake3
import pydicom.data
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispersiond import codec
from dispersiond.codec import headers
from dispersiond.codec import compress, se2
from dispersiond.research.compress_bench import (fhir_records, overhead_bench, previous_codec,
                                                 random_files)
from dispersiond.errors import CodecError, ConfigError, FragmentMismatch, IntegrityError

from dsp import cli, local_config, run_cli

K = bytes(range(32))
ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "se2-v1"
SAMPLES = ROOT / "dispersiond" / "samples"
DICOM = Path(pydicom.data.__file__).parent / "test_files"
POLICIES = ["off", "auto", "zstd:1", "zstd:3"]


def roundtrip(data: bytes, policy: str, head: int = 0, log2: int = 12):
    puf, prf = io.BytesIO(), io.BytesIO()
    enc = codec.encode_stream("se2", K, io.BytesIO(data), len(data), puf, prf, head_len=head,
                              chunk_log2=log2, compression=policy, digest_alg="blake3")
    p, r = puf.getvalue(), prf.getvalue()
    assert (enc.puf_len, enc.prf_len) == (len(p), len(r))
    out = io.BytesIO()
    n = codec.decode_stream("se2", K, io.BytesIO(p), len(p), io.BytesIO(r), len(r), out)
    assert n == len(data) and out.getvalue() == data
    assert codec.decode("se2", K, p, r) == data
    assert enc.digest == blake3.blake3(data).hexdigest()  # of the original, whatever the codec
    return enc, p, r


# ---------------------------------------------------------------- reading version 1

def test_version_1_fixtures_written_by_the_previous_build_still_decode():
    index = json.loads((FIXTURES / "index.json").read_text())
    key = bytes.fromhex(index["master_key"])
    assert len(index["files"]) >= 6
    for name, meta in index["files"].items():
        puf = (FIXTURES / f"{name}.puf").read_bytes()
        prf = (FIXTURES / f"{name}.prf").read_bytes()
        assert puf[4] == 1 and prf[4] == 1, name  # really version 1
        out = io.BytesIO()
        n = codec.decode_stream("se2", key, io.BytesIO(puf), len(puf), io.BytesIO(prf),
                                len(prf), out)
        assert n == meta["size"] and hashlib.sha256(out.getvalue()).hexdigest() == meta["sha256"]
        assert hashlib.sha256(codec.decode("se2", key, puf, prf)).hexdigest() == meta["sha256"]
        bad = bytearray(prf)
        bad[-1] ^= 1
        with pytest.raises(IntegrityError):
            codec.decode("se2", key, puf, bytes(bad))


def test_version_1_and_2_fragments_do_not_mix():
    data = os.urandom(3000)
    p1, r1 = codec.encode("se2", K, data, version=1)
    p2, r2 = codec.encode("se2", K, data)
    assert p1[4] == 1 and p2[4] == 2
    with pytest.raises(CodecError, match="version"):
        codec.decode("se2", K, p1, r2)
    with pytest.raises(CodecError, match="version"):
        codec.decode("se2", K, p2, r1)


# ---------------------------------------------------------------- round trips

@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=6000),
                      st.builds(lambda t, n: t * n, st.binary(min_size=1, max_size=40),
                                st.integers(0, 400))),
       policy=st.sampled_from(POLICIES), head=st.integers(0, 40), log2=st.integers(10, 12))
def test_any_bytes_any_size_round_trip_compressed_or_not(data, policy, head, log2):
    head = min(head, len(data))
    enc, puf, prf = roundtrip(data, policy, head, log2)
    plain = se2.Layout(log2, len(data) - head, head)
    # never larger than the uncompressed encode: the public fragment not, both together
    # strictly smaller (the container alone can grow: it carries the digest, and a short
    # frame's tail, up to 27 bytes more than a unit's private words and tag)
    assert len(puf) <= plain.puf_len and len(prf) <= plain.prf_len + se2.DIGEST_LEN + 27
    if enc.codec == "zstd":
        assert enc.content_len < len(data) - head
        assert len(puf) + len(prf) < plain.puf_len + plain.prf_len
    else:
        assert (len(puf), len(prf)) == (plain.puf_len, plain.prf_len)


def test_real_records_compress_and_restore_bit_exact():
    for f in [*sorted(SAMPLES.glob("*.*[!d]")), DICOM / "MR_small.dcm", DICOM / "CT_small.dcm"]:
        data = f.read_bytes()
        hl = headers.head_len(data[:headers.PROBE], len(data))
        enc, puf, prf = roundtrip(data, "auto", hl, 18)
        if f.suffix in (".json", ".csv", ".dcm"):
            assert enc.codec == "zstd" and enc.content_len < 0.8 * (len(data) - hl), f.name


def test_compressed_dicom_is_skipped_and_its_head_stays_whole_in_the_container():
    for name in ("JPEG2000.dcm", "SC_rgb_jpeg.dcm", "MR_small_RLE.dcm"):
        data = (DICOM / name).read_bytes()
        hl = headers.head_len(data[:headers.PROBE], len(data))
        assert headers.head_says_compressed(data[:hl])
        enc, puf, prf = roundtrip(data, "auto", hl, 18)
        assert enc.codec == "none", name
    data = (DICOM / "MR_small.dcm").read_bytes()
    hl = headers.head_len(data[:headers.PROBE], len(data))
    assert not headers.head_says_compressed(data[:hl])
    enc, puf, prf = roundtrip(data, "auto", hl, 18)
    assert enc.codec == "zstd"
    dec = se2.Se2Decoder(K, prf[:se2.PRF_HEADER_LEN], puf[:se2.PUF_HEADER_LEN])
    assert dec.layout.head_len == hl
    seg0 = prf[se2.PRF_HEADER_LEN: se2.PRF_HEADER_LEN + hl + se2.TAG]
    assert dec.open_head(seg0) == data[:hl]
    # the private share: the head plus an eighth of the compressed content
    assert len(prf) >= hl + enc.content_len // 8


def test_incompressible_data_is_stored_as_before():
    data = os.urandom(300_000)
    for policy in ("auto", "zstd:3"):  # forced: tried, then refused as it does not shrink
        enc, puf, prf = roundtrip(data, policy)
        assert enc.codec == "none"
        lay = se2.Layout(12, len(data), 0)
        assert (len(puf), len(prf)) == (lay.puf_len, lay.prf_len)


def test_a_frame_is_stored_only_if_both_fragments_shrink_together():
    """A frame shorter than the content by less than the digest it costs is dropped,
    even when forced; one unit of zeros whose frame becomes a tail is kept (the container
    grows by 33 bytes, the public fragment shrinks by 44: found by the property above)."""
    import random

    barely = random.Random(4).randbytes(400) + bytes(30)  # ~15 bytes shorter as a frame
    assert len(zstandard.ZstdCompressor(level=3).compress(barely)) < len(barely)
    enc, puf, prf = roundtrip(barely, "zstd:3", 0, 10)
    plain = se2.Layout(10, len(barely), 0)
    assert enc.codec == "none" and (len(puf), len(prf)) == (plain.puf_len, plain.prf_len)
    one_unit = bytes(29) + b"\x01" + bytes(3)
    enc, puf, prf = roundtrip(one_unit, "auto", 1, 10)
    plain = se2.Layout(10, 32, 1)
    assert enc.codec == "zstd" and len(prf) == plain.prf_len + 33
    assert len(puf) + len(prf) < plain.puf_len + plain.prf_len


def test_known_compressed_formats_skip_the_trial():
    for start in (b"\x1f\x8b\x08\x00", b"\x89PNG\r\n", b"PK\x03\x04", b"\xff\xd8\xff\xe0"):
        assert compress.known_compressed(start + bytes(100))
        assert not compress.should_compress(compress.AUTO, False, [start + bytes(60000)])
    assert compress.should_compress(compress.AUTO, False, [bytes(60000)])
    assert not compress.should_compress(compress.AUTO, True, [bytes(60000)])
    assert not compress.should_compress(compress.OFF, False, [bytes(60000)])


def test_policy_parsing():
    assert compress.Policy.parse("zstd:7") == compress.Policy("zstd", 7)
    assert str(compress.Policy.parse("zstd")) == "zstd:3"
    for bad in ("zstd:0", "zstd:22", "gzip", "zstd:x", ""):
        with pytest.raises(ValueError):
            compress.Policy.parse(bad)


def test_a_large_file_compresses_in_bounded_memory():
    """16 MiB through the streaming path, never held whole: the spool is read back in
    chunks and the decoder inflates per chunk (the window is bounded)."""
    line = b'{"resourceType":"Observation","valueQuantity":{"value":%d,"unit":"mm[Hg]"}}\n'
    data = b"".join(line % (i % 997) for i in range(220_000))
    enc, puf, prf = roundtrip(data, "auto", 0, 18)
    assert enc.codec == "zstd" and enc.content_len < len(data) / 10


@settings(max_examples=80, deadline=None)
@given(pieces=st.lists(st.binary(max_size=3000), max_size=12), memory=st.integers(0, 9000),
       reads=st.lists(st.integers(1, 5000), min_size=1, max_size=8))
def test_spool_gives_back_its_bytes_from_memory_or_its_file(tmp_path_factory, pieces, memory,
                                                           reads):
    """Below `memory` bytes the spool keeps them; past it every byte (those kept too) is
    in the temporary file, as ciphertext; read back in any sizes, the bytes are the same."""
    data = b"".join(pieces)
    spool = compress.Spool(tmp_path_factory.mktemp("spool"), memory)
    try:
        for piece in pieces:
            assert spool.write(piece) == len(piece)
        assert spool.n == len(data) and spool.spilled == (len(data) > memory)
        if spool.spilled and len(data) >= 64:
            spool.f.flush()
            spool.f.seek(0)
            raw = spool.f.read()
            assert len(raw) == len(data) and raw != data and data[:32] not in raw
        spool.rewind()
        got, i = b"", 0
        while True:
            n = reads[i % len(reads)]
            if i % 2:
                chunk = spool.read(n)
            else:
                buf = bytearray(n)
                chunk = bytes(buf[: spool.readinto(buf)])
            if not chunk:
                break
            got, i = got + chunk, i + 1
        assert got == data and spool.read() == b""
    finally:
        spool.close()


@pytest.mark.parametrize("memory", [0, 1 << 10, None])
def test_a_compressed_encode_round_trips_through_either_spool(monkeypatch, memory):
    """The in-memory spool (the default for records), and one that spills at once or
    after 1 KiB: the same original comes back, and the temporary file exists only then."""
    if memory is not None:
        monkeypatch.setattr(compress, "SPOOL_MEMORY", memory)
    made = []
    real = compress.tempfile.TemporaryFile
    monkeypatch.setattr(compress.tempfile, "TemporaryFile",
                        lambda *a, **kw: made.append(1) or real(*a, **kw))
    data = b"".join(fhir_records(3, seed=5))
    enc, puf, prf = roundtrip(data, "auto", 0, 12)
    assert enc.codec == "zstd" and len(made) == (0 if memory is None else 1)


class _Recording:
    """A trial compressor that notes what it was given."""

    def __init__(self) -> None:
        self.c, self.seen = zstandard.ZstdCompressor(level=compress.TRIAL_LEVEL), []

    def compress(self, data) -> bytes:
        self.seen.append(len(data))
        return self.c.compress(data)


def test_trial_on_incompressible_content_stops_after_its_first_look(monkeypatch):
    rec = _Recording()
    monkeypatch.setattr(compress, "_trial_compressor", lambda: rec)
    noise, text = os.urandom(compress.TRIAL), b"OBX|1|NM|8480-6^Systolic^LN||120|mm[Hg]\r" * 500
    assert not compress.trial_pays([noise, text[: compress.TRIAL]])
    assert rec.seen == [compress.FIRST_LOOK]  # 4 KiB tried, not 16 (nor the middle)
    rec.seen.clear()
    assert compress.trial_pays([text[: compress.TRIAL], text[: compress.TRIAL]])
    assert rec.seen == [compress.FIRST_LOOK, compress.TRIAL, compress.TRIAL]
    # the first look decides only what zstd stores raw: a mostly compressible sample
    # with random bytes first is still tried whole
    rec.seen.clear()
    mixed = os.urandom(1024) + text[: compress.TRIAL - 1024]
    assert compress.trial_pays([mixed]) and rec.seen == [compress.FIRST_LOOK, compress.TRIAL]
    rec.seen.clear()
    assert not compress.trial_pays([noise[: compress.FIRST_LOOK]])  # short: tried once, whole
    assert rec.seen == [compress.FIRST_LOOK]


class _Reads(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.sizes: list[int] = []

    def read(self, n: int = -1) -> bytes:
        self.sizes.append(n)
        return super().read(n)


_TEXT = st.builds(lambda t, n: t * n, st.binary(min_size=1, max_size=60), st.integers(1, 3000))


@settings(max_examples=80, deadline=None)
@given(parts=st.lists(st.one_of(st.binary(max_size=20000), _TEXT), max_size=4),
       policy=st.sampled_from(["off", "auto", "zstd:3"]), head=st.integers(0, 50))
def test_the_encoder_decides_as_the_trial_on_its_samples(parts, policy, head):
    """pays() reads less, but decides what should_compress() decides on read_samples()."""
    data = b"".join(parts)
    pol = compress.Policy.parse(policy)
    src = io.BytesIO(os.urandom(head) + data)
    if data:
        want = compress.should_compress(pol, False, compress.read_samples(
            io.BytesIO(src.getvalue()), head, len(data)))
        assert compress.pays(pol, src, head, len(data)) == want
        assert src.tell() == (head if policy == "auto" else 0)  # off, zstd: nothing read


def test_incompressible_content_costs_one_small_read():
    src = _Reads(os.urandom(200_000))
    assert not compress.pays(compress.AUTO, src, 0, 200_000)
    assert src.sizes == [compress.FIRST_LOOK + 1]
    src = _Reads(b"".join(fhir_records(10, seed=3)))
    assert compress.pays(compress.AUTO, src, 0, len(src.getvalue()))
    assert src.sizes == [compress.FIRST_LOOK + 1, compress.TRIAL, compress.TRIAL]
    src = _Reads(os.urandom(100))
    assert not compress.pays(compress.Policy.parse("off"), src, 0, 100) and src.sizes == []
    assert compress.pays(compress.Policy.parse("zstd:3"), src, 0, 100) and src.sizes == []


def test_every_version_2_writer_seals_a_random_file_id():
    """No file id given: each container seals its own random one (never zeros)."""
    data = b"".join(fhir_records(1, seed=2))
    ids = []
    for policy in ("off", "auto", "auto", None):
        puf, prf = io.BytesIO(), io.BytesIO()
        enc = codec.encode_stream("se2", K, io.BytesIO(data), len(data), puf, prf,
                                  compression=policy)
        dec = se2.Se2Decoder(K, prf.getvalue()[:104], puf.getvalue()[:32])
        at = se2.PRF_HEADER_LEN + se2.TAG
        meta = dec.open_meta(prf.getvalue()[at: at + se2.META_LEN + se2.TAG])
        assert meta.file_id == enc.file_id
        ids.append(meta.file_id)
    puf, prf = codec.encode("se2", K, data)
    ids.append(se2.Se2Decoder(K, prf[:104], puf[:32]).open_meta(
        prf[se2.PRF_HEADER_LEN + se2.TAG: se2.PRF_HEADER_LEN + se2.TAG + 48]).file_id)
    assert bytes(16) not in ids and len(set(ids)) == len(ids)


def test_the_release_before_version_2_writes_what_this_build_reads():
    """The writer bench compress times as the previous release: it is that release's
    codec (version 1 fragments), and this build decodes what it writes."""
    prev = previous_codec()
    assert prev is not None, ("the previous release's codec could not be read from git: run "
                              "the suite in a full git checkout of the project (not a shallow "
                              "clone or an exported tree)")
    data = b"".join(fhir_records(2, seed=8))
    puf, prf = prev.encode("se2", K, data, head_len=9)
    assert puf[4] == 1 and prf[4] == 1 and codec.decode("se2", K, puf, prf) == data
    assert prev is not codec and not hasattr(prev, "prepare")  # no version 2 in it


def test_the_incompressible_bench_runs_every_writer_on_the_same_files():
    r = overhead_bench(random_files(3, 3000), runs=1, previous=codec)
    assert (r["files"], r["bytes"], r["runs"]) == (3, 9000, 1)
    assert all(r[f"us_per_file_{k}"] > 0 for k in ("v1", "v2-auto", "previous"))
    assert r["auto_vs_v1"] > 0 and r["auto_vs_previous"] > 0


# ---------------------------------------------------------------- tamper evidence

def _compressed_pair(n: int = 5000):
    data = b"".join(b"OBX|%d|NM|8480-6^Systolic^LN||%d|mm[Hg]\r" % (i, 100 + i % 50)
                    for i in range(n // 40))
    puf, prf = codec.encode("se2", K, data, head_len=7, chunk_log2=10, compression="auto")
    assert se2.Se2Decoder(K, prf[:104], puf[:32]) and prf[4] == 2
    return data, puf, prf


def test_every_flipped_byte_of_a_compressed_pair_is_refused():
    data, puf, prf = _compressed_pair()
    dec = se2.Se2Decoder(K, prf[:104], puf[:32])
    assert codec.decode("se2", K, puf, prf) == data
    for which, frag in (("puf", puf), ("prf", prf)):
        for pos in range(len(frag)):
            bad = bytearray(frag)
            bad[pos] ^= 1 << (pos % 8)
            args = (bytes(bad), prf) if which == "puf" else (puf, bytes(bad))
            with pytest.raises(CodecError):
                codec.decode("se2", K, *args)
    assert dec.layout.version == 2


@settings(max_examples=80, deadline=None)
@given(data=st.binary(min_size=0, max_size=3000), policy=st.sampled_from(POLICIES),
       which=st.sampled_from(["puf", "prf"]), pos=st.integers(0, 10 ** 6),
       xor=st.integers(1, 255))
def test_any_single_byte_change_is_refused(data, policy, which, pos, xor):
    data = data * 3  # some repetition, so that the compressed path is taken too
    puf, prf = codec.encode("se2", K, data, chunk_log2=10, compression=policy)
    frag = bytearray(puf if which == "puf" else prf)
    frag[pos % len(frag)] ^= xor
    args = (bytes(frag), prf) if which == "puf" else (puf, bytes(frag))
    with pytest.raises(CodecError):
        codec.decode("se2", K, *args)
    with pytest.raises(CodecError):
        codec.decode_stream("se2", K, io.BytesIO(args[0]), len(args[0]), io.BytesIO(args[1]),
                            len(args[1]), io.BytesIO())


def test_fragments_of_two_files_are_told_apart_without_an_id_in_clear():
    _, puf_a, prf_a = _compressed_pair()
    _, puf_b, prf_b = _compressed_pair()
    with pytest.raises(FragmentMismatch, match="mixed up"):
        codec.decode("se2", K, puf_a, prf_b)


def test_inflater_refuses_what_does_not_match_the_sealed_facts():
    frame = zstandard.ZstdCompressor().compress(b"abc" * 100)
    digest = blake3.blake3(b"abc" * 100).digest()
    ok = compress.Inflater(io.BytesIO(), 300, "blake3", b"")
    ok.write(frame)
    assert ok.finish(digest) == 300
    for length, dig, extra, err in ((299, digest, b"", "more than"), (301, digest, b"", "incomplete"),
                                    (300, bytes(32), b"", "digest"), (300, digest, b"x", "after")):
        sink = compress.Inflater(io.BytesIO(), length, "blake3", b"")
        with pytest.raises(IntegrityError, match=err):
            sink.write(frame + extra)
            sink.finish(dig)


# ---------------------------------------------------------------- what the public side shows

def _length_encodings(n: int) -> list[bytes]:
    return [struct.pack(">Q", n), struct.pack("<Q", n)]


def test_public_header_carries_no_length_and_no_id():
    """Files of different sizes: the clear public header is the same 8 bytes then 24
    bytes that differ per file version (random without s); no length anywhere."""
    heads = []
    for size in (40_000, 41_000, 42_500, 44_000):
        data = os.urandom(size)
        enc_p, enc_r = io.BytesIO(), io.BytesIO()
        enc = codec.encode_stream("se2", K, io.BytesIO(data), size, enc_p, enc_r,
                                  file_id=b"F" * 16)
        puf = enc_p.getvalue()
        heads.append(puf[:32])
        for n in {size, enc.content_len, len(puf)}:
            for e in _length_encodings(n):
                assert e not in puf[:4096]
        assert b"F" * 16 not in puf and b"F" * 16 not in enc_r.getvalue()[:104]
    assert len({h[:8] for h in heads}) == 1 and len({h[8:] for h in heads}) == len(heads)


def test_stored_objects_in_one_padded_class_carry_no_length(tmp_path):
    """The daemon's own standalone objects: same padded size, no length at a fixed place
    (packs hide their members' lengths under their mask: tests/test_pack_format.py)."""
    cfg = local_config(tmp_path, "replicate", pack={"threshold": 1})
    src = tmp_path / "in"
    src.mkdir()
    sizes = [40_000, 40_700, 41_300, 42_000]
    for i, size in enumerate(sizes):
        (src / f"r{i}.bin").write_bytes(os.urandom(size))
    for i in range(len(sizes)):
        cli(cfg, "put", str(src / f"r{i}.bin"))
    objs = sorted((p.read_bytes() for p in (tmp_path / "cloud-a").rglob("*") if p.is_file()),
                  key=len)
    assert len(objs) == len(sizes) and len({len(o) for o in objs}) == 1
    assert len({o[:8] for o in objs}) == 1 and len({o[8:32] for o in objs}) == len(objs)
    lengths = sizes + [se2.Layout(se2.DEFAULT_CHUNK_LOG2, n, 0).puf_len for n in sizes]
    for o in objs:
        for n in lengths:
            for e in _length_encodings(n):
                assert e not in o[:64]


# ---------------------------------------------------------------- the pipeline

def test_put_compresses_records_and_restores_them_bit_exact(tmp_path):
    cfg = local_config(tmp_path, "replicate")
    src = tmp_path / "records"
    src.mkdir()
    recs = fhir_records(12, seed=3)
    for i, r in enumerate(recs):
        (src / f"p{i}.json").write_bytes(r)
    for i in range(len(recs)):
        cli(cfg, "put", str(src / f"p{i}.json"))
    stored = sum(p.stat().st_size for p in (tmp_path / "cloud-a").rglob("*") if p.is_file())
    assert stored < 0.3 * sum(map(len, recs))
    out = tmp_path / "out"
    out.mkdir()
    for i, r in enumerate(recs):
        cli(cfg, "restore", f"p{i}.json", "--to", str(out))
        assert (out / f"p{i}.json").read_bytes() == r


def test_compression_off_and_bad_settings(tmp_path):
    cfg = local_config(tmp_path, "replicate", compression="off")
    f = tmp_path / "a.json"
    f.write_bytes(fhir_records(1, seed=1)[0])
    cli(cfg, "put", str(f))
    (obj,) = [p for p in (tmp_path / "cloud-a").rglob("*") if p.is_file()]
    assert obj.stat().st_size >= 0.875 * f.stat().st_size
    from dispersiond.config import load_config

    (tmp_path / "b").mkdir()
    bad = local_config(tmp_path / "b", compression="zstd:40")
    with pytest.raises(ConfigError, match="compression"):
        load_config(bad)


def test_se_cli_compresses_and_names_bad_settings(tmp_path):
    key = tmp_path / "k"
    key.write_bytes(os.urandom(32))
    src = SAMPLES / "vitals.csv"
    puf, prf, back = tmp_path / "x.puf", tmp_path / "x.prf", tmp_path / "back"
    r = run_cli("se", "encode", "--key-file", str(key), "--in", str(src), "--puf", str(puf),
                "--prf", str(prf))
    assert r.returncode == 0, r.stderr
    assert puf.stat().st_size < 0.5 * src.stat().st_size
    r = run_cli("se", "decode", "--key-file", str(key), "--puf", str(puf), "--prf", str(prf),
                "--out", str(back))
    assert r.returncode == 0 and back.read_bytes() == src.read_bytes()
    r = run_cli("se", "encode", "--key-file", str(key), "--in", str(src), "--puf", str(puf),
                "--prf", str(prf), "--compression", "lz4")
    assert r.returncode == 2 and "--compression" in r.stderr and "Traceback" not in r.stderr
    dcm = DICOM / "MR_small.dcm"
    r = run_cli("se", "encode", "--key-file", str(key), "--in", str(dcm), "--puf", str(puf),
                "--prf", str(prf), "--head-len", "auto")
    assert r.returncode == 0, r.stderr
    assert run_cli("se", "decode", "--key-file", str(key), "--puf", str(puf), "--prf", str(prf),
                   "--out", str(tmp_path / "d")).returncode == 0
    assert (tmp_path / "d").read_bytes() == dcm.read_bytes()
