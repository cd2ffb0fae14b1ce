"""analyze: entropy/chi-square formulas, the key-leak attack (scored against plaintext), plots."""
from __future__ import annotations

import json
import math
import os
import struct
import sys

import numpy as np
import pydicom.data
import pytest

from dispersiond import codec
from dispersiond.cli import main
from dispersiond.codec import se2
from dispersiond.errors import DispersiondError
from dispersiond.research import entropy as E
from dispersiond.research import key_leak as K

PNG = b"\x89PNG\r\n\x1a\n"


def zero_runs(size: int = 1 << 18, zero_share: float = 0.75, seed: int = 1) -> bytes:
    """Random bytes with long zero runs (dark image borders, padding) making up zero_share."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size, dtype=np.uint8)
    run = size // 16
    for start in range(0, size, run * 4):
        data[start: start + int(run * 4 * zero_share)] = 0
    return data.tobytes()


def random_bytes(size: int, seed: int = 2) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize("counts, expected", [
    ({0: 64, 1: 64, 2: 64, 3: 64}, 2.0),
    ({7: 500, 8: 250, 9: 250}, 1.5),
    ({v: 10 for v in range(256)}, 8.0),
    ({42: 1000}, 0.0),
    ({0: 1, 1: 3}, -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))),
])
def test_entropy_matches_shannon_formula(counts, expected):
    data = b"".join(bytes([v]) * n for v, n in counts.items())
    assert E.entropy(E.byte_histogram(data)) == pytest.approx(expected, abs=1e-12)


def test_chi_square_against_uniform():
    flat = bytes(range(256)) * 40
    assert E.chi_square(E.byte_histogram(flat)) == 0.0
    # one value only: (n - n/256)^2/(n/256) + 255 (n/256) = 255 n
    assert E.chi_square(E.byte_histogram(bytes(1000))) == pytest.approx(255 * 1000)
    st = E.ByteStats.of(random_bytes(1 << 20))
    assert 255 - 6 * 22.6 < st.chi2 < 255 + 6 * 22.6
    assert st.entropy == pytest.approx(E.random_entropy(1 << 20), abs=5e-4)


def test_p_value_omitted_without_scipy(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    st = E.ByteStats.of(b"abc" * 100)
    assert st.p_value is None and "p_value" not in st.to_dict()


def test_public_fragments_look_random_input_does_not():
    st = E.analyze_bytes(zero_runs())
    assert st.input.entropy < 3
    for s in ("paper-v1", "se2"):
        assert st.puf[s].entropy > 7.99
        assert st.puf[s].chi2 < 400


# ---------------------------------------------------------------- key leak


def test_key_leak_zero_runs_paper_v1_falls_se2_holds():
    data = zero_runs()
    r = K.key_leak(data)
    p, s = r.results["paper-v1"], r.results["se2"]
    assert p.share > 0.5 and p.false_positives == 0 and p.correct == p.accepted
    assert p.by_rule["repeat"] > 0
    assert s.accepted == 0 and s.share == 0.0 and s.tags_verified == 0
    assert p.tried == s.tried == len(data) // 32


def test_key_leak_random_data_recovers_nothing():
    r = K.key_leak(random_bytes(1 << 17))
    for res in r.results.values():
        assert res.accepted == 0 and res.share == 0.0


def test_paper_v1_attack_rebuilds_the_plaintext_from_key_and_puf_only():
    data = zero_runs(1 << 16)
    key = os.urandom(16)
    puf, _prf = codec.encode("paper-v1", key, data)
    rec = K.attack_paper_v1(puf, key)  # never sees data or the private fragment
    units = np.frombuffer(data, dtype=np.uint8).reshape(-1, 32)
    assert len(rec.idx) > len(units) // 2
    assert (rec.plain == units[rec.idx]).all()
    # the same attack with a wrong key finds nothing: the key is what it exploits
    assert len(K.attack_paper_v1(puf, os.urandom(16)).idx) == 0


def test_se2_attack_would_succeed_with_the_file_secret():
    """Positive control: the se2 attack code is real; only the missing secret stops it.

    Every unit holds eight different words, with a zero in the slot that s makes
    private: given s the attack must rebuild each unit exactly, word order included.
    """
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key, secret, units = os.urandom(32), os.urandom(32), 2048
    pos = Cipher(algorithms.AES(K._hkdf(secret, b"dispersiond se2 v1 positions")),
                 modes.CTR(bytes(16))).encryptor().update(bytes(units))
    words = np.tile(np.arange(1, 9, dtype=np.uint32) * 0x01010101, (units, 1))
    words[np.arange(units), np.frombuffer(pos, dtype=np.uint8) & 7] = 0
    data = words.tobytes()
    enc = se2.Se2Encoder(key, len(data), secret=secret)
    enc.work[:] = np.frombuffer(data, dtype=np.uint8)
    piece, _seg = enc.encode_chunk(units)
    puf = enc.puf_header + bytes(piece)
    rec = K.attack_se2(puf, key, secrets=[("s", secret)])
    res = K.score(rec, data, "se2", 0.0)
    assert res.share == 1.0 and res.tags_verified == 1 and res.by_rule["low-variety"] == units
    res = K.score(K.attack_se2(puf, key), data, "se2", 0.0)
    assert res.accepted == 0 and res.tags_verified == 0


def test_neighbour_pass_recovers_a_constant_not_in_the_dictionary():
    """A unit that mixes zeros and a new value W falls to the dictionary; its words then
    carry W to the next unit, and the run of W falls (as in image regions past a border)."""
    w = struct.pack("<HH", 0x1234, 0x1234)
    block = bytes(64 * 32) + bytes(28) + w + w * (64 * 8) + random_bytes(64 * 32, seed=5)
    data = block * 8
    key = os.urandom(16)
    puf, _ = codec.encode("paper-v1", key, data)
    units = np.frombuffer(data, dtype=np.uint8).reshape(-1, 32)
    is_w = (units.view(np.uint32) == np.frombuffer(w, np.uint32)[0]).all(axis=1)
    plain = K.attack_paper_v1(puf, key)
    more = K.attack_paper_v1(puf, key, neighbours=True)
    assert not is_w[plain.idx].any()
    # each of the 8 runs falls unless its one boundary unit's private word is W (p = 1/8)
    assert is_w[more.idx].sum() >= 64
    assert (more.plain == units[more.idx]).all()


def test_sampling_is_reported():
    data = zero_runs(1 << 18)
    r = K.key_leak(data, max_units=1000, schemes=("paper-v1",))
    p = r.results["paper-v1"]
    assert p.sampled and p.tried <= 1000 < p.units and p.work <= 1000 * len(K.DICTIONARY)


def test_consistency_rules_reject_random_bytes():
    pub = np.random.default_rng(3).integers(0, 256, (200_000, 28), dtype=np.uint8)
    assert not K.consistent(pub, np.zeros(len(pub), dtype=np.uint32)).any()
    assert all(b < -38 for b in K.false_accept_bounds().values())
    unit = np.frombuffer(bytes(28), dtype=np.uint8).reshape(1, 28)
    assert K.consistent(unit, np.zeros(1, dtype=np.uint32))[0] == 1  # "repeat"
    text = np.frombuffer(b'  "resourceType": "Patient",', dtype=np.uint8).reshape(1, 28)
    assert K.RULES[K.consistent(text, np.frombuffer(b"    ", np.uint32))[0] - 1] == "text"


def test_real_dicom_entropy_high_yet_paper_v1_falls():
    """The headline finding, on a real DICOM image with dark regions (shipped by pydicom)."""
    data = open(pydicom.data.get_testdata_file("liver_1frame.dcm"), "rb").read()
    st = E.analyze_bytes(data, ("paper-v1",))
    assert st.puf["paper-v1"].entropy > 7.99
    r = K.key_leak(data)
    assert r.results["paper-v1"].share > 0.5 and r.results["paper-v1"].false_positives == 0
    assert r.results["se2"].share == 0.0


def test_brute_force_arithmetic():
    c = K.brute_force_cost(1000, 1e6)
    assert c["calls"] == 1000 * 2 ** 32 and c["seconds"] == pytest.approx(1000 * 2 ** 32 / 1e6)
    assert c["gpu_seconds"] == pytest.approx(1000 * 2 ** 32 / K.GPU_SHA256_PER_S)
    assert K.se2_search_years(1e18) > 1e50


# ---------------------------------------------------------------- CLI and plots


def test_cli_json_entropy_of_known_file(tmp_path, capsys):
    f = tmp_path / "known.bin"
    f.write_bytes(b"\x00" * 2048 + b"\x01" * 1024 + b"\x02" * 1024)
    assert main(["analyze", str(f), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    row = out["files"][0]
    assert row["size"] == 4096 and row["input"]["entropy"] == pytest.approx(1.5)
    assert set(row["puf"]) == {"paper-v1", "se2"}


def test_cli_key_leak_table_and_json(tmp_path, capsys):
    f = tmp_path / "runs.bin"
    f.write_bytes(zero_runs(1 << 16))
    assert main(["analyze", "--key-leak", "--scheme", "paper-v1", str(f)]) == 0
    text = capsys.readouterr().out
    assert "runs.bin" in text and "2^32" in text
    assert main(["analyze", "--key-leak", "--json", str(f)]) == 0
    out = json.loads(capsys.readouterr().out)
    res = out["files"][0]["results"]
    assert res["paper-v1"]["share"] > 0.5 and res["se2"]["share"] == 0


def test_cli_missing_file_is_named(tmp_path, capsys):
    ok = tmp_path / "ok.bin"
    ok.write_bytes(b"x" * 100)
    assert main(["analyze", str(ok), str(tmp_path / "nope.dcm")]) == 2
    assert "nope.dcm" in capsys.readouterr().err


def test_analyze_plot_is_png(tmp_path, capsys):
    f = tmp_path / "a.bin"
    f.write_bytes(zero_runs(1 << 14))
    out = tmp_path / "dist.png"
    assert main(["analyze", str(f), "--plot", str(out)]) == 0
    import matplotlib.image

    assert out.read_bytes()[:8] == PNG
    assert matplotlib.image.imread(str(out)).ndim == 3


def test_bench_plot_is_png(tmp_path):
    from dispersiond.research.plots import bench_plot

    out = tmp_path / "bench.png"
    bench_plot({"aes-128-cbc": 1500.0, "aes-256-gcm": 9000.0, "se2-encode": 2800.0,
                "se2-decode": 3100.0, "paper-v1-encode": 90.0, "paper-v1-decode": 88.0}, str(out))
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 5000


def test_missing_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    from dispersiond.research.plots import bench_plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(DispersiondError, match=r"dispersiond\[plots\]"):
        bench_plot({"aes-128-cbc": 1.0}, str(tmp_path / "x.png"))
