"""The config loader against hostile input: structured mutations of a valid config
(wrong types, missing and extra keys, huge numbers, bad durations and sizes, unicode,
binary) and random bytes. Every input gives a Config or a one-line ConfigError, never
another exception. A few hundred examples by default; DISPERSIOND_FUZZ_EXAMPLES=N for
a longer run (e.g. 20000)."""
from __future__ import annotations

import collections
import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dispersiond.config import load_config
from dispersiond.errors import ConfigError

EXAMPLES = int(os.environ.get("DISPERSIOND_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get(
    "DISPERSIOND_FUZZ_EXAMPLES"), suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                          HealthCheck.too_slow])
OUTCOMES: collections.Counter[str] = collections.Counter()

VALID: dict[str, Any] = {
    "version": 1, "state_dir": "state", "inbox": "inbox", "key": {"file": "master.key"},
    "trust_levels": ["untrusted", "trusted"],
    "stores": [{"name": f"cloud-{c}", "type": "local", "trust": "untrusted",
                "path": f"cloud-{c}"} for c in "abc"]
    + [{"name": "vault", "type": "local", "trust": "trusted", "path": "vault"}],
    "public": {"mode": "erasure", "stores": ["cloud-a", "cloud-b", "cloud-c"], "k": 2},
    "private": {"min_trust": "trusted", "stores": ["vault"]},
    "after": "keep", "stable_seconds": 0.5, "min_free_space": "64MiB", "upload_workers": 4,
    "schedule": {"rescan": "60s", "verify": "24h", "manifest_backup": "15m",
                 "upload_window": "01:00-05:00", "bandwidth_limit": "2MB",
                 "retry_base": "5s", "retry_max": "15m"},
    "recipients": [{"name": "dr-who", "public_key": "ab" * 32, "role": "doctor"}],
    "grants": [{"recipient": "dr-who", "outbox": "outbox", "expires": "72h"}],
}

HUGE = st.sampled_from([10**400, -10**400, 2**63, -2**63 - 1, 2**64, float("inf"),
                        float("-inf"), float("nan"), 1e308, 10**20])
BAD_UNITS = st.sampled_from(["9" * 400 + "s", "1" + "0" * 30 + "w", "1e999h", "-5m", "5 x",
                             "0x10MB", "9" * 400 + "TiB", "1.5.5GB", "∞s", "１０s", "10\x00s",
                             "25:61-99:99", "00:00-24:00", "", " ", "h", "MiB"])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), HUGE, st.floats(allow_nan=True),
    st.text(max_size=40), st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
    st.binary(max_size=20), BAD_UNITS)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=8), st.integers()),
                                                 inner, max_size=4)), max_leaves=8)


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into the config (dict keys and list indexes)."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, prefix + (i,))
    return out


ALL_PATHS = [p for p in paths(VALID) if p]
#: Where sizes, durations, numbers and times are read.
UNIT_PATHS = [p for p in ALL_PATHS if p[-1] in ("stable_seconds", "min_free_space", "upload_workers",
                                                "expires", "k")] + [
    ("schedule", k) for k in VALID["schedule"]]


@st.composite
def mutated(draw) -> dict:
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["replace", "units", "delete", "extra", "duplicate"]))
        where = draw(st.sampled_from(UNIT_PATHS if how == "units" else ALL_PATHS))
        parent = doc
        try:
            for p in where[:-1]:
                parent = parent[p]
            last = where[-1]
            parent[last]  # still there after an earlier mutation?
        except (KeyError, IndexError, TypeError):
            continue
        if how == "replace":
            parent[last] = draw(VALUES)
        elif how == "units":
            parent[last] = draw(st.one_of(BAD_UNITS, HUGE))
        elif how == "delete":
            del parent[last]
        elif how == "extra" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=12))] = draw(VALUES)
        elif how == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[last]))
    return doc


@st.composite
def damaged_yaml(draw) -> bytes:
    """Valid-config YAML with bytes cut, inserted or flipped."""
    text = bytearray(yaml.safe_dump(draw(mutated()), allow_unicode=True).encode())
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, max(0, len(text) - 1)))
        how = draw(st.sampled_from(["cut", "insert", "flip"]))
        if how == "cut":
            del text[i:i + draw(st.integers(1, 40))]
        elif how == "insert":
            text[i:i] = draw(st.one_of(st.binary(min_size=1, max_size=8), st.sampled_from(
                [b"\xff\xfe", b"\x00", b"&a [*a, *a]", b"!!python/object:os.system ", b"[" * 200,
                 b"{{{", b": :", b"\t", b"\xe2\x80\xae", b"%YAML 9.9\n---\n"])))
        else:
            text[i] ^= draw(st.integers(1, 255))
    return bytes(text)


def outcome(tmp: Path, data: bytes) -> str:
    """Load `data` as a config file: 'valid' or the ConfigError's kind; anything else fails."""
    path = tmp / "dispersiond.yaml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg and "Traceback" not in msg, repr(msg)
        assert str(path) in msg, msg  # names the file
        kind = "invalid" if " is invalid: " in msg else msg.split(path.name, 1)[-1][:24]
        return f"error: {kind.strip()}"
    return "valid"


@pytest.fixture(scope="module", autouse=True)
def _counts():
    """The outcomes of this module's examples, printed at its end (pytest -s shows them)."""
    yield
    print(f"\nconfig fuzz outcomes ({EXAMPLES} examples a test): {dict(OUTCOMES)}")


def record(result: str) -> None:
    OUTCOMES[result.split(":", 1)[0]] += 1
    event(result)


def test_the_unmutated_config_is_valid(tmp_path):
    assert outcome(tmp_path, yaml.safe_dump(VALID).encode()) == "valid"


@FUZZ
@given(doc=mutated())
def test_structured_mutations_end_in_a_config_or_one_line_error(tmp_path, doc):
    try:
        data = yaml.safe_dump(doc, allow_unicode=True).encode()
    except (yaml.YAMLError, ValueError):
        return
    record(outcome(tmp_path, data))


@FUZZ
@given(data=damaged_yaml())
def test_damaged_yaml_ends_in_a_config_or_one_line_error(tmp_path, data):
    record(outcome(tmp_path, data))


@FUZZ
@given(data=st.one_of(st.binary(max_size=400), st.text(max_size=200).map(str.encode)))
def test_random_bytes_end_in_a_one_line_error(tmp_path, data):
    record(outcome(tmp_path, data))


@pytest.mark.parametrize("data,expect", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xd8", "not UTF-8 text"),
    (b"state_dir: \xff\xfe\n", "not UTF-8 text"),
    (b"[" * 5000, "YAML"),
    (b"- just\n- a list\n", "mapping"),
    (b"state_dir: &x [*x]\n", "state_dir"),
    (yaml.safe_dump({**VALID, "schedule": {"rescan": "9" * 400 + "s"}}).encode(),
     "schedule.rescan"),
    (yaml.safe_dump({**VALID, "min_free_space": "9" * 400 + "TiB"}).encode(), "min_free_space"),
    (yaml.safe_dump({**VALID, "stable_seconds": float("inf")}).encode(), "stable_seconds"),
    (yaml.safe_dump({**VALID, "upload_workers": 10**400}).encode(), "upload_workers"),
])
def test_known_bad_inputs_get_a_clear_line(tmp_path, data, expect):
    path = tmp_path / "dispersiond.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "\n" not in msg and expect in msg and str(path) in msg, msg
