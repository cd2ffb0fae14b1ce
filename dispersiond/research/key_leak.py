"""The key-leak experiment: what someone holding the key but not the private fragment recovers.

Pure computations, bytes in and numbers out; the `analyze --key-leak` command reads
files and prints. Why it exists: the byte entropy of the public fragment (entropy.py)
stays above 7.99 even where an attacker holding the leaked key recovers most of the
file under paper-v1 (docs/SECURITY.md). The attack here is real: it only ever sees the
key and the public fragment, and is scored against the plaintext afterwards.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import struct
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .. import codec
from ..codec import se2
from ..codec.split import UNIT, WORDS, paper_index
from .entropy import SCHEMES, new_key

PUB = UNIT - 4  # public bytes per unit (7 words)

# Guesses for a unit's private word: values that fill dark image regions, padding,
# indentation and empty fields. Small on purpose: each guess costs one SHA-256 per unit.
DICTIONARY: tuple[tuple[str, bytes], ...] = (
    ("zero", bytes(4)),
    ("0xFF", b"\xff" * 4),
    ("ASCII spaces", b"    "),
    ("ASCII '0000'", b"0000"),
    ("newline + spaces", b"\n   "),
    ("HL7 '||||'", b"||||"),
    ("0x01 bytes", b"\x01" * 4),
    ("0x80 bytes", b"\x80" * 4),
    ("int16 -1000 x2", struct.pack("<hh", -1000, -1000)),
    ("int16 -1024 x2", struct.pack("<hh", -1024, -1024)),
    ("int16 -2000 x2", struct.pack("<hh", -2000, -2000)),
    ("int16 -3024 x2", struct.pack("<hh", -3024, -3024)),
)

MAX_DISTINCT = 12
_PRINTABLE = np.zeros(256, dtype=bool)
_PRINTABLE[0x20:0x7F] = True
_PRINTABLE[[0x09, 0x0A, 0x0D]] = True
RULES = ("repeat", "low-variety", "text")


def false_accept_bounds() -> dict[str, float]:
    """log2 of the chance that 28 uniform random bytes (a wrong guess) pass each rule."""
    low = math.log2(math.comb(256, MAX_DISTINCT)) + PUB * math.log2(MAX_DISTINCT / 256)
    return {"repeat": -8.0 * PUB, "low-variety": low,
            "text": PUB * math.log2(int(_PRINTABLE.sum()) / 256)}


def consistent(pub: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Which rule (1-based index into RULES, 0 = none) accepts each unmasked unit.

    pub: (n, 28) uint8, the public words after removing the guessed pad; words:
    (n,) uint32, the guess for each unit. A wrong guess leaves pub uniformly random,
    so each rule is one that random bytes pass with negligible probability:
      repeat      the 7 public words all equal the guess (the unit is w x 8);
      low-variety the 28 bytes take at most 12 distinct values;
      text        the guess and all 28 bytes are printable ASCII, TAB, CR or LF.
    """
    n = pub.shape[0]
    out = np.zeros(n, dtype=np.int8)
    if n == 0:
        return out
    w = np.broadcast_to(np.asarray(words, dtype=np.uint32), (n,))
    seen = np.zeros((n, 256), dtype=bool)  # a scatter is ~2x faster than sorting rows
    seen[np.arange(n)[:, None], pub] = True
    distinct = np.count_nonzero(seen, axis=1)
    text = _PRINTABLE[pub].all(axis=1) & _PRINTABLE[w.view(np.uint8).reshape(n, 4)].all(axis=1)
    out[text] = 3
    out[distinct <= MAX_DISTINCT] = 2
    out[(pub.view(np.uint32) == w[:, None]).all(axis=1)] = 1
    return out


@dataclass
class Recovery:
    """What an attack claims, before anyone compares it with the plaintext."""

    units: int                       # units in the file
    tried: np.ndarray                # indices of the units attacked (all, or a sample)
    idx: np.ndarray                  # indices of accepted units
    plain: np.ndarray                # (len(idx), 32) uint8: the unit the attacker rebuilt
    rule: np.ndarray                 # rule code that accepted each
    work: int = 0                    # SHA-256 calls (paper-v1) or chunk trials (se2)
    tags_verified: int = 0           # se2: GCM tags that verified under a guess
    attacker: str = ""


def _unit_words(data: bytes, units: int) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8, count=units * UNIT)
    return raw.view(np.uint32).reshape(units, WORDS)


def sample_units(units: int, max_units: int | None, block: int = 256) -> np.ndarray:
    """All unit indices, or evenly spread blocks of `block` consecutive units.

    Blocks rather than single units so the neighbour pass still has neighbours.
    """
    if max_units is None or units <= max_units:
        return np.arange(units, dtype=np.int64)
    block = max(1, min(block, max_units))
    nb = max(1, max_units // block)
    starts = np.linspace(0, units - block, nb).astype(np.int64)
    return np.unique((starts[:, None] + np.arange(block)[None, :]).ravel())


def _sha_pads(msgs: np.ndarray) -> np.ndarray:
    """(n, 28) messages -> (n, 28) pads: the first 28 bytes of SHA-256 of each."""
    sha = hashlib.sha256
    raw = msgs.tobytes()
    h = b"".join([sha(raw[o:o + 28]).digest() for o in range(0, len(raw), 28)])
    return np.frombuffer(h, dtype=np.uint8).reshape(-1, 32)[:, :PUB]


class _PaperV1Attacker:
    """Key K and public fragment only: H_i = SHA-256(w || K || uint64_be(i)) for a guessed w."""

    def __init__(self, puf: bytes, key: bytes) -> None:
        if len(puf) % PUB:
            raise ValueError("paper-v1 public fragment length is not a multiple of 28")
        self.units = len(puf) // PUB
        self.key = np.frombuffer(key, dtype=np.uint8)
        self.pub = np.frombuffer(puf, dtype=np.uint8).reshape(self.units, PUB)
        ks = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(self.units))
        self.j = np.frombuffer(ks, dtype=np.uint8) & 7
        self.hashes = 0

    def unmask(self, idx: np.ndarray, words: np.ndarray) -> np.ndarray:
        n = len(idx)
        msgs = np.empty((n, 28), dtype=np.uint8)
        msgs[:, 0:4] = np.ascontiguousarray(words, dtype=np.uint32).view(np.uint8).reshape(n, 4)
        msgs[:, 4:20] = self.key
        msgs[:, 20:28] = idx.astype(">u8").view(np.uint8).reshape(n, 8)
        self.hashes += n
        return self.pub[idx] ^ _sha_pads(msgs)

    def rebuild(self, idx: np.ndarray, words: np.ndarray, pub: np.ndarray) -> np.ndarray:
        n = len(idx)
        out = np.empty(n * WORDS, dtype=np.uint32)
        out[np.arange(n) * WORDS + self.j[idx]] = words
        out[paper_index(self.j[idx])] = pub.view(np.uint32)
        return out.view(np.uint8).reshape(n, UNIT)


def _dictionary_words(dictionary: Iterable[tuple[str, bytes]]) -> list[np.uint32]:
    out = []
    for name, w in dictionary:
        if len(w) != 4:
            raise ValueError(f"dictionary word {name!r} must be 4 bytes")
        out.append(np.frombuffer(w, dtype=np.uint32)[0])
    return out


def attack_paper_v1(puf: bytes, key: bytes, *, dictionary=DICTIONARY,
                    max_units: int | None = None, neighbours: bool = False) -> Recovery:
    """Dictionary attack on each unit's 32-bit private word, with the key leaked.

    With `neighbours`, every recovered unit's 8 words become guesses for the units
    beside it, repeated until nothing new falls (image regions and text continue).
    """
    a = _PaperV1Attacker(puf, key)
    tried = sample_units(a.units, max_units)
    done = np.zeros(a.units, dtype=bool)
    got_w = np.zeros(a.units, dtype=np.uint32)
    got_rule = np.zeros(a.units, dtype=np.int8)
    got_pub = np.zeros((a.units, PUB), dtype=np.uint8)

    def trial(idx: np.ndarray, words: np.ndarray) -> np.ndarray:
        pub = a.unmask(idx, words)
        rule = consistent(pub, words)
        ok = rule > 0
        hit = idx[ok]
        done[hit] = True
        got_w[hit] = words[ok]
        got_rule[hit] = rule[ok]
        got_pub[hit] = pub[ok]
        return hit

    for w in _dictionary_words(dictionary):
        left = tried[~done[tried]]
        trial(left, np.full(len(left), w, dtype=np.uint32))

    if neighbours:
        in_sample = np.zeros(a.units, dtype=bool)
        in_sample[tried] = True
        fresh = tried[done[tried]]
        while len(fresh):
            new: list[np.ndarray] = []
            for side in (-1, 1):
                tgt = fresh + side
                keep = (tgt >= 0) & (tgt < a.units)
                tgt, src = tgt[keep], fresh[keep]
                keep = in_sample[tgt] & ~done[tgt]
                tgt, src = tgt[keep], src[keep]
                if not len(tgt):
                    continue
                rebuilt = a.rebuild(src, got_w[src], got_pub[src]).view(np.uint32)
                for k in range(WORDS):
                    open_ = ~done[tgt]
                    cand = rebuilt[:, k]
                    # skip a word already tried on the same unit in this sweep
                    dup = (rebuilt[:, :k] == cand[:, None]).any(axis=1)
                    sel = open_ & ~dup
                    if sel.any():
                        new.append(trial(tgt[sel], cand[sel].copy()))
            fresh = np.unique(np.concatenate(new)) if new else np.empty(0, dtype=np.int64)

    idx = np.flatnonzero(done)
    plain = a.rebuild(idx, got_w[idx], got_pub[idx])
    return Recovery(a.units, tried, idx, plain, got_rule[idx], work=a.hashes,
                    attacker="key K + public fragment")


# se2 ----------------------------------------------------------------------------------

_LABELS = (b"dispersiond se2 v1 wrap", b"dispersiond se2 v1 key-id",
           b"dispersiond se2 v1 container", b"dispersiond se2 v1 pad",
           b"dispersiond se2 v1 positions")


def _hkdf(ikm: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(ikm)


def stand_in_secrets(master_key: bytes) -> list[tuple[str, bytes]]:
    """Every 32-byte value an attacker can derive from the master key alone.

    Used in place of the file secret s, which exists only inside the private
    container: the key, its hash, and HKDF of it under each label the scheme uses.
    """
    out = [("K", master_key), ("SHA-256(K)", hashlib.sha256(master_key).digest())]
    out += [(f"HKDF(K, {lab.decode()!r})", _hkdf(master_key, lab)) for lab in _LABELS]
    return out


def attack_se2(puf: bytes, master_key: bytes, *, dictionary=DICTIONARY,
               max_units: int | None = None, head_len: int = 0,
               secrets: Sequence[tuple[str, bytes]] | None = None) -> Recovery:
    """The paper-v1 attack carried over to se2, as favourably as the format allows.

    se2's pad for a chunk is keyed by HKDF(s) and the GCM tag of that chunk's private
    words, so no single unit can be guessed alone: for each candidate secret and
    each dictionary word w the attacker assumes every private word of the chunk is w,
    rebuilds the tag and the pad, decrypts the chunk (noting whether GCM verifies)
    and applies the same consistency rules per unit. `secrets` defaults to
    stand_in_secrets(master_key); passing the true s is the positive control.
    """
    hdr = puf[:se2.PUF_HEADER_LEN]
    magic, version, scheme, log2, flags, file_id, content_len = se2.PUF_HEADER.unpack(hdr)
    if magic != se2.PUF_MAGIC:
        raise ValueError("not an se2 public fragment")
    lay = se2.Layout(log2, content_len, head_len)
    bind = se2.BIND.pack(se2.PRF_MAGIC, version, scheme, log2, flags, file_id, content_len,
                         head_len)
    tried = sample_units(lay.units, max_units)
    want = np.zeros(lay.units, dtype=bool)
    want[tried] = True
    done = np.zeros(lay.units, dtype=bool)
    plain = np.zeros((lay.units, UNIT), dtype=np.uint8)
    rules = np.zeros(lay.units, dtype=np.int8)
    words = _dictionary_words(dictionary)
    work = verified = 0
    attacker = "key K + public fragment (stand-ins for s)"
    if secrets is None:
        secrets = stand_in_secrets(master_key)
    else:
        attacker = "given secrets (control)"
    for _, s in secrets:
        seg_aead = AESGCM(_hkdf(s, b"dispersiond se2 v1 container"))
        pad = _hkdf(s, b"dispersiond se2 v1 pad")
        pos = Cipher(algorithms.AES(_hkdf(s, b"dispersiond se2 v1 positions")),
                     modes.CTR(bytes(16))).encryptor().update(bytes(lay.units))
        j = np.frombuffer(pos, dtype=np.uint8) & 7
        off, first = se2.PUF_HEADER_LEN, 0
        for c, n in enumerate(lay.chunk_units()):
            ct = puf[off: off + PUB * n]
            tag = puf[off + PUB * n: off + PUB * n + se2.TAG]
            off += PUB * n + se2.TAG
            rng = np.arange(first, first + n)
            first += n
            sel = want[rng] & ~done[rng]
            if not sel.any():
                continue
            for w in words:
                # private words of chunk c are container segment c + 1 (segment 0: header)
                seg = seg_aead.encrypt((c + 1).to_bytes(11, "big") + b"\x00",
                                       np.full(n, w, dtype=np.uint32).tobytes(), bind)
                key = hmac.digest(pad, struct.pack(">Q", c) + seg[-se2.TAG:], "sha256")
                dec = Cipher(algorithms.AES(key), modes.GCM(bytes(12), tag)).decryptor()
                dec.authenticate_additional_data(hdr)
                pt = np.frombuffer(dec.update(ct), dtype=np.uint8).reshape(n, PUB)
                work += 1
                try:
                    dec.finalize()
                    verified += 1
                except InvalidTag:
                    pass
                sel = want[rng] & ~done[rng]
                loc = np.flatnonzero(sel)
                rule = consistent(pt[loc], np.full(len(loc), w, dtype=np.uint32))
                ok = loc[rule > 0]
                if len(ok):
                    u = np.empty((len(ok), WORDS), dtype=np.uint32)
                    u[:, :7] = pt[ok].view(np.uint32)
                    u[:, 7] = w
                    r = np.arange(len(ok))
                    jj = j[rng[ok]]
                    moved = u[r, jj].copy()  # se2 "swap" order: slot j holds the old word 7
                    u[r, jj] = w
                    u[r, 7] = moved
                    plain[rng[ok]] = u.view(np.uint8)
                    rules[rng[ok]] = rule[rule > 0]
                    done[rng[ok]] = True
    idx = np.flatnonzero(done)
    return Recovery(lay.units, tried, idx, plain[idx], rules[idx], work=work,
                    tags_verified=verified, attacker=attacker)


# scoring --------------------------------------------------------------------------------


@dataclass
class LeakResult:
    scheme: str
    attacker: str
    units: int
    tried: int
    sampled: bool
    accepted: int
    correct: int
    false_positives: int
    by_rule: dict[str, int]
    work: int
    seconds: float
    tags_verified: int = 0

    @property
    def share(self) -> float:
        """Share of attacked units whose plaintext the attacker rebuilt correctly."""
        return self.correct / self.tried if self.tried else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["share"] = self.share
        return d


def score(rec: Recovery, data: bytes, scheme: str, seconds: float) -> LeakResult:
    """Compare what the attacker rebuilt with the true plaintext, unit by unit."""
    truth = np.frombuffer(data, dtype=np.uint8, count=rec.units * UNIT).reshape(rec.units, UNIT)
    ok = (rec.plain == truth[rec.idx]).all(axis=1) if len(rec.idx) else np.zeros(0, bool)
    by_rule = {name: int(np.count_nonzero(rec.rule[ok] == i + 1)) for i, name in enumerate(RULES)}
    return LeakResult(scheme, rec.attacker, rec.units, len(rec.tried), len(rec.tried) < rec.units,
                      len(rec.idx), int(ok.sum()), int(len(rec.idx) - ok.sum()), by_rule,
                      rec.work, seconds, rec.tags_verified)


@dataclass
class LeakReport:
    size: int
    units: int
    uniform_share: float        # attacked units that are one 4-byte word x 8 (context)
    in_dictionary_share: float  # attacked units whose paper-v1 private word is in the dictionary
    results: dict[str, LeakResult]

    def to_dict(self) -> dict:
        return {"size": self.size, "units": self.units, "uniform_share": self.uniform_share,
                "in_dictionary_share": self.in_dictionary_share,
                "results": {k: v.to_dict() for k, v in self.results.items()}}


def _timed(fn: Callable[[], Recovery]) -> tuple[Recovery, float]:
    t = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t


def key_leak(data: bytes, *, schemes: Sequence[str] = SCHEMES, dictionary=DICTIONARY,
             max_units: int | None = None, neighbours: bool = False) -> LeakReport:
    """Encode `data` under fresh keys, attack each public fragment with the key, score it.

    The paper-v1 result is under "paper-v1" (and "paper-v1+neighbours" when asked).
    """
    units = len(data) // UNIT
    tried = sample_units(units, max_units)
    w = _unit_words(data, units)
    uniform = float((w[tried] == w[tried, :1]).all(axis=1).mean()) if units else 0.0
    results: dict[str, LeakResult] = {}
    in_dict = 0.0
    if "paper-v1" in schemes:
        k = new_key("paper-v1")
        puf, _ = codec.encode("paper-v1", k, data)
        rec, t = _timed(lambda: attack_paper_v1(puf, k, dictionary=dictionary,
                                                max_units=max_units))
        results["paper-v1"] = score(rec, data, "paper-v1", t)
        if units:
            a = _PaperV1Attacker(puf, k)
            prv = w[tried, a.j[tried]]
            in_dict = float(np.isin(prv, np.array(_dictionary_words(dictionary))).mean())
        if neighbours:
            rec, t = _timed(lambda: attack_paper_v1(puf, k, dictionary=dictionary,
                                                    max_units=max_units, neighbours=True))
            results["paper-v1+neighbours"] = score(rec, data, "paper-v1", t)
    if "se2" in schemes:
        k = new_key("se2")
        # version 1: its clear header gives the attack the layout; version 2 derives every
        # key the same way and hides the length, so the attacker is no better off there
        puf, _ = codec.encode("se2", k, data, version=1)
        rec, t = _timed(lambda: attack_se2(puf, k, dictionary=dictionary, max_units=max_units))
        results["se2"] = score(rec, data, "se2", t)
    return LeakReport(len(data), units, uniform, in_dict, results)


# cost of exhaustive search ---------------------------------------------------------------

GPU_SHA256_PER_S = 2e10  # order of one current high-end GPU on single-block SHA-256


def sha256_rate(seconds: float = 0.2) -> float:
    """SHA-256 calls per second on one 28-byte message, hashlib, this machine, one core."""
    sha = hashlib.sha256
    msg = bytes(28)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10000):
            sha(msg).digest()
        n += 10000
    return n / (time.perf_counter() - t0)


def brute_force_cost(units: int, rate: float) -> dict[str, float]:
    """Exhaustive search of every unit's private word under paper-v1 with K known.

    Units are independent, so the cost is units x 2^32 SHA-256 calls (linear in the
    file, not 2^(32 N)); half that on average. A wrong word leaves random bytes, so
    any unit with recognisable plaintext is identified once its word is hit.
    """
    calls = units * 2.0 ** 32
    return {"units": units, "calls": calls, "calls_log2": math.log2(calls) if units else 0.0,
            "rate": rate, "seconds": calls / rate, "gpu_seconds": calls / GPU_SHA256_PER_S,
            "seconds_per_unit": 2.0 ** 32 / rate}


def se2_search_years(rate: float = 1e18) -> float:
    """Years to try half of the 2^256 file secrets at `rate` guesses per second."""
    return 2.0 ** 255 / rate / (365.25 * 86400)
