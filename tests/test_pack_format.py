"""Pack objects version 1 (docs/FORMAT.md §8): round trips, layout properties, what the
index region shows, tamper refusal, the vector, prune plans, the policy, and a fuzz of
the index parser (bounded in CI; DISPERSIOND_FUZZ_EXAMPLES=N for N examples per test)."""
from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispersiond import codec, digests, placement
from dispersiond.errors import (ConfigError, DispersiondError, FormatError, IntegrityError,
                                TruncatedError)
from dispersiond.pack import (PackMember, PackPolicy, PackReader, PackWriter, build_pack,
                              covering_range, encode_index, extract, load_policy, open_index,
                              open_sealed, padded_size, plan_repack, seal_index)
from dispersiond.pack import layout

ROOT = Path(__file__).resolve().parent.parent
FORMAT = (ROOT / "docs" / "FORMAT.md").read_text()
MK = bytes(range(0x40, 0x60))
EXAMPLES = int(os.environ.get("DISPERSIOND_FUZZ_EXAMPLES", "200"))
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _ref(i: int) -> bytes:
    return i.to_bytes(16, "big")


def _pack(datas, **kw):
    name = placement.new_object_name()
    data, idx = build_pack(MK, name, [(_ref(i), d) for i, d in enumerate(datas)], **kw)
    return name, data, idx


def _index_region(data: bytes, count: int) -> bytes:
    return data[len(data) - layout.FOOTER_LEN - layout.index_len(count):]


def _one_line_error(fn) -> DispersiondError:
    with pytest.raises(DispersiondError) as exc:
        fn()
    msg = str(exc.value)
    assert msg and "\n" not in msg, msg
    return exc.value


member_lists = st.lists(st.one_of(st.binary(max_size=4), st.binary(max_size=3000)), max_size=40)


@PROPS
@given(datas=member_lists, kind=st.sampled_from(["public", "private"]),
       alg=st.sampled_from(digests.ALGORITHMS), pad=st.sampled_from(["padme", "none"]))
def test_round_trip_any_members(datas, kind, alg, pad):
    name, data, idx = _pack(datas, kind=kind, digest_alg=alg, pad=pad)
    assert len(data) == idx.size == padded_size(sum(map(len, datas)), len(datas), pad)
    opened = open_index(MK, name, data, len(data))
    assert opened == idx and opened.kind == kind and opened.digest_alg == alg
    at = 0
    for m, d in zip(opened.members, datas):  # back to back: no overlap, no gap
        assert (m.offset, m.length, m.digest) == (at, len(d), digests.of(alg, d))
        at = m.end
    reader = PackReader(MK, name, data, len(data))
    assert [reader.member(m) for m in opened.members] == datas
    ranged = lambda off, n: data[off:off + n]  # noqa: E731  (a store's ranged GET)
    for m, d in zip(opened.members, datas):
        assert extract(ranged, m.offset, m.length, master_key=MK, name=name, digest=m.digest,
                       digest_alg=alg) == d
    assert reader.verify() == []


@PROPS
@given(sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=30), seed=st.randoms())
def test_padded_size_depends_on_total_not_boundaries(sizes, seed):
    total, count = sum(sizes), len(sizes)
    cuts = sorted(seed.randint(0, total) for _ in range(count - 1))
    other = [b - a for a, b in zip([0, *cuts], [*cuts, total])]
    blob = os.urandom(total)
    split = lambda ls: [blob[sum(ls[:i]):sum(ls[:i + 1])] for i in range(len(ls))]  # noqa: E731
    _, a, _ = _pack(split(sizes))
    _, b, _ = _pack(split(other))
    assert len(a) == len(b) == placement.padme(total + layout.index_len(count) + layout.FOOTER_LEN)


@PROPS
@given(datas=st.lists(st.binary(min_size=8, max_size=2000), min_size=1, max_size=20))
def test_nothing_about_members_in_clear(datas):
    name, data, idx = _pack(datas)
    region = _index_region(data, len(datas))
    for m, d in zip(idx.members, datas):
        assert d[:8] not in region and d[-8:] not in region
        for enc in (struct.pack(">Q", m.length), struct.pack("<Q", m.length),
                    struct.pack(">Q", m.offset + m.length), bytes.fromhex(m.digest)[:8], m.ref[:8]):
            assert enc not in region
        if m.length >= 16:  # the body is masked too: no member shows anywhere in the pack
            assert d[:16] not in data and d[-16:] not in data
    assert struct.pack(">I", len(datas)) + struct.pack(">Q", idx.body_len) not in data


def test_se2_members_keep_their_own_authentication_and_hide_their_magic():
    records = [b"MSH|^~\\&|LAB|%d|PID|1||%05d^^^HOSP\r" % (i, i) * (i + 1) for i in range(12)]
    pairs = [codec.encode("se2", MK, r, chunk_log2=10) for r in records]
    pub_name, pub, pub_idx = _pack([p for p, _ in pairs], kind="public")
    prv_name, prv, prv_idx = _pack([c for _, c in pairs], kind="private")
    for magic in (b"DSPU", b"DSPR"):
        assert magic not in pub and magic not in prv
    pr, cr = PackReader(MK, pub_name, pub, len(pub)), PackReader(MK, prv_name, prv, len(prv))
    for i, rec in enumerate(records):
        assert codec.decode("se2", MK, pr.get(_ref(i)), cr.get(_ref(i))) == rec
    # a member of another pack at the same place is not the member: its digest fails
    _, other, _ = _pack([p for p, _ in pairs])
    m = pub_idx.members[3]
    _one_line_error(lambda: extract(other, m.offset, m.length, master_key=MK, name=pub_name,
                                    digest=m.digest))


def test_every_single_byte_change_of_the_index_or_footer_is_refused():
    datas = [b"", b"x" * 5, os.urandom(700), os.urandom(33)]
    name, data, idx = _pack(datas)
    start = len(data) - layout.FOOTER_LEN - layout.index_len(len(datas))
    for pos in range(start, len(data)):
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[pos] ^= flip
            err = _one_line_error(lambda: open_index(MK, name, bytes(bad), len(bad)))
            assert isinstance(err, (IntegrityError, FormatError))
    assert open_index(MK, name, data, len(data)) == idx


def test_wrong_name_key_size_or_length_is_refused():
    name, data, _ = _pack([os.urandom(100), b"abc"])
    for call in (lambda: open_index(MK, placement.new_object_name(), data, len(data)),
                 lambda: open_index(bytes(32), name, data, len(data)),
                 lambda: open_index(MK, name, data[:-1], len(data)),
                 lambda: open_index(MK, name, data + b"\0", len(data)),
                 lambda: open_index(MK, name, data[1:], len(data) - 1),
                 lambda: open_index(MK, name, b"\0" + data, len(data) + 1),
                 lambda: open_index(MK, "NOT-A-NAME", data, len(data)),
                 lambda: open_index(MK, name, data, 3)):
        _one_line_error(call)
    _one_line_error(lambda: extract(data[:50], 0, 100, master_key=MK, name=name))
    err = _one_line_error(lambda: extract(data, 0, 100, master_key=MK, name=name, digest="00" * 32))
    assert isinstance(err, IntegrityError)
    assert isinstance(_one_line_error(lambda: extract(data[:10], 0, 100, master_key=MK,
                                                      name=name)), TruncatedError)


def test_deep_verify_names_the_altered_member():
    name, data, idx = _pack([os.urandom(50), os.urandom(60), os.urandom(70)])
    bad = bytearray(data)
    bad[idx.members[1].offset + 7] ^= 1
    assert PackReader(MK, name, bytes(bad), len(bad)).verify() == [idx.members[1]]


def test_writer_streams_drains_and_sizes_before_close():
    rb = lambda n: bytes(n)  # noqa: E731  (fixed randomness: two writers must agree byte for byte)
    name = placement.new_object_name()
    a = PackWriter(MK, name, randbytes=rb)
    b = PackWriter(MK, name, randbytes=rb)
    out, big = [], os.urandom(3 * (1 << 20) + 5)
    for i, d in enumerate([b"", big, b"tiny"]):
        assert a.add(_ref(i), d) == b.add(_ref(i), io.BytesIO(d))
        out.append(a.drain())
    size = a.size()
    out.append(a.close())
    assert b"".join(out) == b.close() and len(b"".join(out)) == size == a.index.size
    for bad in (lambda: b.add(_ref(9), b"late"), lambda: b.close(),
                lambda: PackWriter(MK, name).add(b"short", b"x")):
        _one_line_error(bad)
    w = PackWriter(MK, name)
    w.add(_ref(1), b"x")
    _one_line_error(lambda: w.add(_ref(1), b"y"))  # references are unique in a pack


def test_a_failed_stream_spoils_the_writer():
    class Broken(io.RawIOBase):
        def readable(self):
            return True

        def read(self, n=-1):
            raise OSError("disk gone")

    w = PackWriter(MK, placement.new_object_name())
    w.add(_ref(0), b"ok")
    with pytest.raises(OSError):
        w.add(_ref(1), Broken())
    _one_line_error(lambda: w.add(_ref(2), b"more"))
    _one_line_error(w.close)


@PROPS
@given(offset=st.integers(0, 1 << 22), length=st.integers(0, 1 << 21),
       extra=st.integers(0, 1 << 20))
def test_covering_range_is_aligned_and_covers(offset, length, extra):
    size = offset + length + extra
    start, n = covering_range(offset, length, size)
    if not length:
        assert (start, n) == (offset, 0)
        return
    assert start % (1 << 16) == 0 and start <= offset and offset + length <= start + n <= size
    assert (start + n) % (1 << 16) == 0 or start + n == size
    _one_line_error(lambda: covering_range(offset, length + extra + 1, size))


# --- the vector (FORMAT.md §8.7) -------------------------------------------------------

VECTOR_NAME = bytes(range(0xA0, 0xB0)).hex()
VECTOR_MEMBERS = [(bytes([1]) * 16, b""), (bytes([2]) * 16, b"PID|1||12345^^^HOSP||DOE^JANE"),
                  (bytes([3]) * 16, bytes(range(100)))]
VECTOR = {
    "body_key": "ccd7f8b807044d5fd10538cca22b92ba343d7d10780c02bf3042a43c3bd86580",
    "index_key": "4990c2d18d33924abc14e249efa69facc683ac78957e11a7e575eaf362760137",
    "footer": "6c1b0b215e02e436",
    "pack_sha256": "1786f90d787c0dd6478dc7bccbdc1aa3b8a8901dc09527e11e2c8a9eec7cd967",
}


def _counting(n: int) -> bytes:
    return bytes(i & 0xFF for i in range(n))


def test_vector():
    data, idx = build_pack(MK, VECTOR_NAME, VECTOR_MEMBERS, randbytes=_counting)
    assert len(data) == 384 and idx.body_len == 129 and layout.index_len(3) == 236
    assert layout.body_key(MK, VECTOR_NAME).hex() == VECTOR["body_key"]
    assert layout.index_key(MK).hex() == VECTOR["index_key"]
    assert data[-8:].hex() == VECTOR["footer"]
    assert hashlib.sha256(data).hexdigest() == VECTOR["pack_sha256"]
    assert [(m.offset, m.length) for m in idx.members] == [(0, 0), (0, 29), (29, 100)]
    doc = re.sub(r"\s+", " ", FORMAT)
    for value in VECTOR.values():
        assert value in doc, f"FORMAT.md §8 vector lacks {value}"
    for m in idx.members:
        assert m.digest in doc


# --- prune ------------------------------------------------------------------------------

def _members(lengths):
    out, at = [], 0
    for i, n in enumerate(lengths):
        out.append(PackMember(_ref(i), at, n, "00" * 32))
        at += n
    return out


def test_plan_repack_cases():
    ms = _members([100, 100, 100, 700])
    assert plan_repack(ms, {m.ref for m in ms}, 0.3).action == "keep"
    default = PackPolicy().prune_dead_fraction
    assert plan_repack(ms, {ms[3].ref}) == plan_repack(ms, {ms[3].ref}, default)
    p = plan_repack(ms, {ms[3].ref}, 0.3)
    assert p.action == "repack" and p.keep == (ms[3],) and p.dead_fraction == pytest.approx(0.3)
    assert plan_repack(ms, {ms[0].ref, ms[1].ref, ms[3].ref}, 0.3).action == "keep"
    assert plan_repack(ms, set(), 0.3).action == "delete"
    assert plan_repack(_members([0, 0]), {_ref(0)}, 0.5).action == "repack"
    assert plan_repack([], set(), 0.3).action == "delete"


@PROPS
@given(lengths=st.lists(st.integers(0, 10_000), max_size=30), data=st.data(),
       fraction=st.floats(0.01, 1.0))
def test_plan_repack_properties(lengths, data, fraction):
    ms = _members(lengths)
    live = {m.ref for m in ms if data.draw(st.booleans())}
    p = plan_repack(ms, live, fraction)
    assert set(p.keep) | set(p.drop) == set(ms) and not set(p.keep) & set(p.drop)
    assert all(m.ref in live for m in p.keep)
    assert list(p.keep) == sorted(p.keep, key=lambda m: m.offset)
    assert (p.action == "delete") == (not p.keep)
    if p.action == "repack":
        assert p.drop and p.dead_fraction >= fraction
    if p.action == "keep":
        assert not p.drop or p.dead_fraction < fraction


# --- the policy -------------------------------------------------------------------------

def test_policy_defaults_and_parsing():
    p = PackPolicy()
    assert (p.threshold, p.pack_size, p.max_wait, p.prune_dead_fraction, p.sweep_grace) == \
        (1 << 20, 16 << 20, 5.0, 0.3, 86400.0)
    q = load_policy({"threshold": "256KiB", "pack_size": "64MiB", "max_wait": "2m",
                     "prune_dead_fraction": 0.5, "sweep_grace": "7d"})
    assert (q.threshold, q.pack_size, q.max_wait, q.sweep_grace) == \
        (256 << 10, 64 << 20, 120.0, 604800.0)
    assert load_policy(None) == p


@pytest.mark.parametrize("raw, words", [
    ({"threshold": "32MiB"}, "threshold"), ({"pack_size": "1KiB"}, "pack_size"),
    ({"max_wait": "0s"}, "max_wait"), ({"max_wait": "soon"}, "max_wait"),
    ({"prune_dead_fraction": 0}, "prune_dead_fraction"),
    ({"prune_dead_fraction": 1.5}, "prune_dead_fraction"),
    ({"sweep_grace": "10m"}, "sweep_grace"), ({"threshold": True}, "threshold"),
    ({"pack_sise": "1MiB"}, "unknown setting"), ("16MiB", "mapping")])
def test_policy_refusals_are_one_line_config_errors(raw, words):
    err = _one_line_error(lambda: load_policy(raw))
    assert isinstance(err, ConfigError) and words in str(err)


# --- fuzz: the index parser --------------------------------------------------------------

def _bounded(fn):
    """Refused with the project's own one-line error, quickly and in little memory."""
    tracemalloc.start()
    t = time.monotonic()
    try:
        try:
            result = fn()
        except DispersiondError as exc:
            assert str(exc) and "\n" not in str(exc)
            result = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.monotonic() - t < 2.0 and peak < 32 << 20, (time.monotonic() - t, peak)
    return result


BASE_NAME, BASE, BASE_IDX = _pack([b"", os.urandom(40), os.urandom(300), b"zz"])


@FUZZ
@given(data=st.binary(max_size=4096), size=st.integers(0, 1 << 40))
def test_fuzz_random_bytes_as_a_pack(data, size):
    assert _bounded(lambda: open_index(MK, BASE_NAME, data, size)) is None


@FUZZ
@given(pos=st.integers(0, 400), xor=st.integers(1, 255), cut=st.integers(-64, 64),
       junk=st.binary(max_size=64), how=st.sampled_from(["flip", "cut", "append", "splice"]))
def test_fuzz_structured_mutations_of_a_pack(pos, xor, cut, junk, how):
    bad = bytearray(BASE)
    if how == "flip":
        bad[-1 - pos % len(bad)] ^= xor
    elif how == "cut":
        bad = bad[:len(bad) + min(cut, -1)] if cut < 0 else bad[cut:]
    elif how == "append":
        bad += junk or b"\0"
    else:
        at = len(bad) - 1 - pos % len(bad)
        bad[at:at + len(junk)] = junk
    bad = bytes(bad)
    if bad == BASE:
        return
    for size in (len(bad), len(BASE)):
        assert _bounded(lambda: open_index(MK, BASE_NAME, bad, size)) is None or \
            bad[-layout.index_len(4) - 8:] == BASE[-layout.index_len(4) - 8:]


_plain = encode_index("public", "blake3", BASE_IDX.body_len, BASE_IDX.members)
_fields = st.sampled_from([(0, ">B"), (1, ">B"), (2, ">B"), (3, ">B"), (4, ">I"), (8, ">Q"),
                           (16, "16s"), (32, ">Q"), (40, ">Q"), (96, ">Q"), (104, ">Q"),
                           (80, "16s"), (144, "16s"), (232, ">Q")])
_values = st.one_of(st.integers(0, 3), st.integers(0, (1 << 64) - 1), st.sampled_from(
    [0, 1, 2, 40, 41, 299, 300, 302, 340, 342, 343, 1 << 20, (1 << 20) + 1, (1 << 32) - 1,
     (1 << 64) - 1]))


@FUZZ
@given(edits=st.lists(st.tuples(_fields, _values), min_size=1, max_size=4),
       cut=st.one_of(st.just(0), st.just(0), st.integers(-70, 70)),
       size=st.sampled_from([len(BASE), len(BASE) - 1, 1 << 36]))
def test_fuzz_index_plaintext_sealed_with_the_right_key(edits, cut, size):
    """The tag passes here, so the parser's own checks are what is fuzzed."""
    plain = bytearray(_plain)
    for (off, fmt), v in edits:
        width = struct.calcsize(fmt)
        raw = v.to_bytes(16, "big") if fmt == "16s" else struct.pack(fmt, v % (1 << 8 * width))
        plain[off:off + width] = raw
    plain = bytes(plain[:len(plain) + cut] if cut < 0 else plain + os.urandom(cut))
    sealed = seal_index(MK, BASE_NAME, size, plain)
    idx = _bounded(lambda: open_sealed(MK, BASE_NAME, size, sealed))
    if idx is not None:  # accepted: then it must be a consistent index
        at = 0
        for m in idx.members:
            assert m.offset == at
            at = m.end
        assert at == idx.body_len and len({m.ref for m in idx.members}) == len(idx.members)
        assert idx.body_len + layout.index_len(len(idx.members)) + 8 <= size
