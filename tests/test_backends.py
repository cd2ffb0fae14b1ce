"""One suite for every store type, run over real HTTP against local servers.

What each server does not enforce is written next to the test that would show it
(docs/BACKENDS.md has the list). Part sizes are small here so that the multi-part path
of every store runs on objects of a few MiB.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Callable

import boto3
import google_crc32c
import pytest

from backends import (
    AlreadyExists,
    Denied,
    NotFound,
    SourceError,
    Store,
    StoreError,
    Unavailable,
    open_store,
    retrying,
)
from backends.base import redact

from buckets import STORE_KINDS, create_bucket, store_settings, unique_bucket
from servers import AZURITE_KEY, Emulator

MiB = 1 << 20
#: The unit each store reads from a source at a time (and, but for local, sends per part).
PART = {"local": MiB // 4, "s3": 5 * MiB, "gcs": MiB, "azure": MiB}  # 5 MiB: S3's minimum part
SETTING = {"local": "chunk_size", "s3": "part_size", "gcs": "chunk_size", "azure": "block_size"}
DATA = os.urandom(2 * PART["s3"] + 12345)
#: A dead or dying server must be reported within this many seconds (default settings).
OUTAGE_BOUND = 8.0


def sizes(kind: str) -> dict[str, int]:
    return {"0 B": 0, "1 B": 1, "5 MiB": 5 * MiB, "multipart": 2 * PART[kind] + 12345}


class Source(io.RawIOBase):
    """A stream over `data` that returns short reads and records the largest read asked of it.

    `on_half` runs once when half the bytes have been handed out (to kill a server or fail).
    """

    def __init__(self, data: bytes, on_half: Callable[[], None] | None = None) -> None:
        self.data, self.pos, self.max_ask, self.on_half = data, 0, 0, on_half

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            raise AssertionError("a store read the whole source at once")
        self.max_ask = max(self.max_ask, n)
        if self.on_half and self.pos >= len(self.data) // 2:
            action, self.on_half = self.on_half, None
            action()
        piece = self.data[self.pos:self.pos + min(n, 100_000)]
        self.pos += len(piece)
        return piece


def every_verb(store: Store, key: str) -> list[Callable[[], object]]:
    """One call of each verb on `key` (list with no prefix), for tests that expect one error from all."""
    return [lambda: store.stat(key), lambda: store.get(key), lambda: list(store.list()),
            lambda: store.put_bytes(key + "-new", b"y"), lambda: store.delete(key)]


def absent(store: Store, key: str) -> bool:
    with pytest.raises(NotFound):
        store.stat(key)
    return key not in set(store.list())


@pytest.fixture(params=STORE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(kind: str, make_store: Callable[..., Store]) -> Store:
    return make_store(kind, **{SETTING[kind]: PART[kind]})


# --- the five verbs -----------------------------------------------------------------

@pytest.mark.parametrize("label", ["0 B", "1 B", "5 MiB", "multipart"])
def test_round_trip(store: Store, label: str) -> None:
    size = sizes(store.kind)[label]
    src = Source(DATA[:size])
    info = store.put(f"rt/{label}", src, size)
    assert (info.name, info.size) == (f"rt/{label}", size)
    assert src.max_ask <= PART[store.kind], "reads from the source must be bounded by the part size"
    assert store.get_bytes(f"rt/{label}") == DATA[:size]
    assert store.stat(f"rt/{label}").size == size


@pytest.mark.parametrize("label", ["1 B", "multipart"])
def test_stat_reports_the_stores_own_checksums(store: Store, label: str) -> None:
    data = DATA[:sizes(store.kind)[label]]
    put = store.put("sum", io.BytesIO(data), len(data))
    stat = store.stat("sum")
    assert stat.size == len(data)
    assert put.checksums == stat.checksums
    md5, sha256 = hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest()
    crc32c = google_crc32c.value(data).to_bytes(4, "big").hex()
    expected = {
        "local": {},
        "gcs": {"md5": md5, "crc32c": crc32c},
        "azure": {"md5": md5},  # set by us on block commit: Azure stores none for block lists
        "s3": {"etag": md5, "sha256": sha256} if label == "1 B" else {},
    }[store.kind]
    if store.kind == "s3" and label == "multipart":
        # A multipart ETag (and SHA-256) is over the parts, not the object: only the ETag is kept.
        assert set(stat.checksums) == {"etag"} and stat.checksums["etag"].endswith("-3")
    else:
        assert stat.checksums == expected


def test_list_by_prefix(store: Store) -> None:
    names = ["p/a", "p/b/c", "p/b/d%", "pa", "q/a", "a", "a/b"]  # "a" and "a/b" side by side
    for name in names:
        store.put_bytes(name, name.encode())
    assert sorted(store.list()) == sorted(names)
    assert sorted(store.list("p/")) == ["p/a", "p/b/c", "p/b/d%"]
    assert sorted(store.list("p")) == ["p/a", "p/b/c", "p/b/d%", "pa"]
    assert sorted(store.list("p/b/")) == ["p/b/c", "p/b/d%"]
    assert sorted(store.list("a")) == ["a", "a/b"]
    assert list(store.list("zz")) == [] and list(store.list("p/x/")) == []
    assert list(store.list("../")) == [] and list(store.list("/")) == []
    assert store.get_bytes("a") == b"a" and store.get_bytes("p/b/d%") == b"p/b/d%"


@pytest.mark.parametrize("label", ["1 B", "multipart"])
def test_conditional_create_refuses_and_keeps_the_first(store: Store, label: str) -> None:
    size = sizes(store.kind)[label]
    first, second = DATA[:size], DATA[:size][::-1]
    assert first != second or size < 2
    store.put("once", io.BytesIO(first), size)
    with pytest.raises(AlreadyExists, match=store.name):
        store.put("once", Source(second), size)
    assert store.get_bytes("once") == first
    assert store.stat("once").size == size


def test_delete_then_not_found(store: Store) -> None:
    store.put_bytes("gone", b"x")
    store.delete("gone")
    for call in (lambda: store.get("gone"), lambda: store.stat("gone"), lambda: store.delete("gone")):
        with pytest.raises(NotFound, match=store.name):
            call()
    assert "gone" not in set(store.list())
    store.put_bytes("gone", b"again")  # the name is free again
    assert store.get_bytes("gone") == b"again"


def test_ranged_get(store: Store) -> None:
    part, size = PART[store.kind], sizes(store.kind)["multipart"]
    data = DATA[:size]
    store.put("r", io.BytesIO(data), size)
    for start, length in [(0, 0), (0, 10), (7, 1), (part - 5, 10), (part - 1, part + 2),
                          (size - 7, None), (size - 3, 10), (size, 5), (size + 100, None), (5, None)]:
        want = data[start:] if length is None else data[start:start + length]
        assert store.get_bytes("r", start, length) == want, (start, length)
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b"" and store.get_bytes("empty", 0, 5) == b""
    with pytest.raises(ValueError):
        store.get_bytes("r", -1)
    with pytest.raises(NotFound):
        store.get_bytes("missing", 3, 4)


def test_get_streams_in_chunks(store: Store) -> None:
    size = sizes(store.kind)["multipart"]
    store.put("big", io.BytesIO(DATA[:size]), size)
    chunks = list(store.get("big"))
    assert len(chunks) > 1 and max(map(len, chunks)) <= max(PART[store.kind], MiB)


@pytest.mark.parametrize("name", ["", "/abs", "a/", "a//b", "a/../b", "..", "./a", "a\\b", "a\0b"])
def test_invalid_names_are_refused_before_any_io(store: Store, name: str) -> None:
    for call in (lambda: store.put_bytes(name, b"x"), lambda: store.get(name), lambda: store.stat(name),
                 lambda: store.delete(name), lambda: store.presign(name, timedelta(minutes=1))):
        with pytest.raises(ValueError):
            call()


# --- failures leave nothing behind ----------------------------------------------------

@pytest.mark.parametrize("label", ["1 B", "5 MiB", "multipart"])
def test_failing_source_leaves_no_object(store: Store, label: str) -> None:
    size = sizes(store.kind)[label]

    def fail() -> None:
        raise OSError("disk read error")

    with pytest.raises(SourceError) as caught:
        store.put("half", Source(DATA[:size], on_half=fail), size)
    assert isinstance(caught.value.__cause__, OSError)
    with pytest.raises(SourceError, match="ended after"):
        store.put("short", io.BytesIO(DATA[:size - 1]), size)
    assert absent(store, "half") and absent(store, "short")
    store.put("half", io.BytesIO(DATA[:size]), size)  # nothing in the way of a retry
    assert store.get_bytes("half") == DATA[:size]


def test_failed_s3_multipart_upload_is_aborted(make_store: Callable[..., Store], s3_server: Emulator) -> None:
    store = make_store("s3", part_size=PART["s3"])
    with pytest.raises(SourceError):
        store.put("k", io.BytesIO(DATA[:PART["s3"] + 1]), PART["s3"] + 2)
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    assert s3.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []


def test_local_leaves_no_temporary_files(make_store: Callable[..., Store]) -> None:
    store = make_store("local", chunk_size=1000)
    with pytest.raises(SourceError):
        store.put("d/k", io.BytesIO(b"x" * 10), 5000)
    store.put_bytes("d/k", b"1")
    with pytest.raises(AlreadyExists):
        store.put_bytes("d/k", b"2")
    files = [p.name for p in Path(store.root).rglob("*") if p.is_file()]
    assert files == ["k%"]


def test_local_directory_gone_is_unavailable(make_store: Callable[..., Store], tmp_path: Path) -> None:
    store = make_store("local")
    store.put_bytes("k", b"x")
    Path(store.root).rename(tmp_path / "unmounted")
    for call in every_verb(store, "k"):
        with pytest.raises(Unavailable, match=store.name):
            call()


# --- outages ----------------------------------------------------------------------------

def timed(call: Callable[[], object], error: type[Exception]) -> float:
    started = time.monotonic()
    with pytest.raises(error):
        call()
    return time.monotonic() - started


@pytest.mark.parametrize("kind", ["s3", "gcs", "azure"])
def test_server_killed_mid_transfer_then_dead(kind: str, spawn_server: Callable[..., Emulator],
                                              make_store: Callable[..., Store]) -> None:
    server = spawn_server(kind)
    store = make_store(kind, server=server, **{SETTING[kind]: PART[kind]})
    big = 4 * PART[kind] if kind != "s3" else 24 * MiB  # S3 streams one body: exceed socket buffers
    store.put("big", io.BytesIO(DATA * (big // len(DATA) + 1)), big)

    # A download cut off part way is an error, never a short object.
    chunks = store.get("big")
    next(chunks)
    server.stop()
    assert timed(lambda: list(chunks), Unavailable) < OUTAGE_BOUND

    # An upload whose server dies half way.
    server.start()
    create_bucket(server, getattr(store, "bucket", None) or store.container)
    size = sizes(kind)["multipart"]
    assert timed(lambda: store.put("up", Source(DATA[:size], on_half=server.stop), size),
                 Unavailable) < OUTAGE_BOUND

    # Every verb against the dead server.
    for call in every_verb(store, "big"):
        elapsed = timed(call, Unavailable)
        assert elapsed < OUTAGE_BOUND, elapsed


def test_retrying_rides_out_a_restart(spawn_server: Callable[..., Emulator],
                                      make_store: Callable[..., Store]) -> None:
    server = spawn_server("s3")
    store = make_store("s3", server=server)
    server.stop()
    attempts = []

    def stat() -> object:
        attempts.append(time.monotonic())
        return store.stat("k")

    threading.Timer(1.0, server.start).start()
    started = time.monotonic()
    with pytest.raises(NotFound):  # the restarted server is empty: reaching it is the point
        retrying(stat, attempts=10, base_delay=0.2, max_delay=1.0)
    assert len(attempts) > 1 and time.monotonic() - started >= 1.0


def test_retrying_backs_off_with_jitter_and_only_for_unavailable() -> None:
    delays: list[float] = []
    calls = iter([Unavailable("s", "down")] * 4 + ["ok"])

    def flaky() -> str:
        result = next(calls)
        if isinstance(result, Exception):
            raise result
        return result

    assert retrying(flaky, attempts=5, base_delay=0.5, max_delay=2.0, sleep=delays.append) == "ok"
    assert len(delays) == 4
    assert all(0 <= d <= min(2.0, 0.5 * 2**i) for i, d in enumerate(delays))
    with pytest.raises(Unavailable):
        retrying(lambda: (_ for _ in ()).throw(Unavailable("s", "down")), attempts=3, sleep=delays.append)
    for error in (NotFound("s", "x"), Denied("s", "x"), AlreadyExists("s", "x")):
        delays.clear()
        with pytest.raises(type(error)):
            retrying(lambda: (_ for _ in ()).throw(error), sleep=delays.append)
        assert delays == []
    # Jitter: many retries do not wait the same time.
    spread: list[float] = []
    for _ in range(20):
        with pytest.raises(Unavailable):
            retrying(lambda: (_ for _ in ()).throw(Unavailable("s", "x")), attempts=2, sleep=spread.append)
    assert len(set(spread)) > 1


# --- links ------------------------------------------------------------------------------

def fetch(url: str) -> bytes:
    """Plain HTTP (or file://), no SDK: what a recipient of a link has."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def test_presigned_link_reads_the_object(store: Store) -> None:
    data = DATA[:3000]
    store.put_bytes("shared/one", data)
    url = store.presign("shared/one", timedelta(minutes=5))
    assert fetch(url) == data
    for bad in (timedelta(0), timedelta(days=8)):
        with pytest.raises(ValueError):
            store.presign("shared/one", bad)


def test_presigned_link_expires_azure(make_store: Callable[..., Store]) -> None:
    """Only Azurite enforces expiry and signatures; moto and fake-gcs-server serve any link."""
    store = make_store("azure")
    store.put_bytes("k", b"secret bytes")
    url = store.presign("k", timedelta(seconds=2))
    assert fetch(url) == b"secret bytes"
    tampered = url.replace("sig=", "sig=A")
    with pytest.raises(urllib.error.HTTPError) as bad:
        fetch(tampered)
    assert bad.value.code == 403
    time.sleep(3.1)
    with pytest.raises(urllib.error.HTTPError) as expired:
        fetch(url)
    assert expired.value.code == 403


# --- credentials ----------------------------------------------------------------------

def test_s3_wrong_credentials_are_denied(spawn_server: Callable[..., Emulator],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """moto checks signatures only with IAM auth on (the first 3 actions are free: make a user)."""
    server = spawn_server("s3", env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    iam = boto3.client("iam", endpoint_url=server.endpoint, region_name="us-east-1",
                       aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
    iam.create_user(UserName="device")
    iam.put_user_policy(UserName="device", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="device")["AccessKey"]
    monkeypatch.setenv("GOOD_ID", key["AccessKeyId"])
    monkeypatch.setenv("GOOD_SECRET", key["SecretAccessKey"])
    monkeypatch.setenv("BAD_SECRET", "not-the-secret-" + key["SecretAccessKey"][:8])
    bucket = unique_bucket()
    settings = {**store_settings(server, bucket), "access_key_id_env": "GOOD_ID"}
    boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id=key["AccessKeyId"],
                 aws_secret_access_key=key["SecretAccessKey"]).create_bucket(Bucket=bucket)
    good = open_store("s3", "good", **{**settings, "secret_access_key_env": "GOOD_SECRET"})
    good.put_bytes("k", b"x")
    assert good.get_bytes("k") == b"x"

    bad = open_store("s3", "bad", **{**settings, "secret_access_key_env": "BAD_SECRET"})
    for call in every_verb(bad, "k"):
        with pytest.raises(Denied, match="'bad'") as caught:
            call()
        assert "not-the-secret" not in str(caught.value) and key["SecretAccessKey"] not in str(caught.value)
    assert good.get_bytes("k") == b"x"


def test_azure_wrong_key_is_denied_and_connection_strings_work(azure_server: Emulator,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = unique_bucket()
    create_bucket(azure_server, bucket)
    wrong = base64.b64encode(b"w" * 64).decode()
    monkeypatch.setenv("GOOD_CS", azure_server.connection_string)
    monkeypatch.setenv("BAD_CS", azure_server.connection_string.replace(AZURITE_KEY, wrong))
    good = open_store("azure", "good", container=bucket, connection_string_env="GOOD_CS")
    good.put_bytes("k", b"x")
    assert good.get_bytes("k") == b"x" and fetch(good.presign("k", timedelta(minutes=1))) == b"x"
    bad = open_store("azure", "bad", container=bucket, connection_string_env="BAD_CS")
    for call in every_verb(bad, "k"):
        with pytest.raises(Denied, match="'bad'") as caught:
            call()
        assert wrong not in str(caught.value) and AZURITE_KEY not in str(caught.value)


def test_missing_credential_variables_are_denied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNSET_VARIABLE", raising=False)
    cases = [
        ("s3", {"bucket": "b", "access_key_id_env": "UNSET_VARIABLE", "secret_access_key_env": "UNSET_VARIABLE"}),
        ("azure", {"container": "c", "connection_string_env": "UNSET_VARIABLE"}),
        ("azure", {"container": "c", "account_url": "http://127.0.0.1:9/x", "account_key_env": "UNSET_VARIABLE"}),
        ("gcs", {"bucket": "b", "anonymous": True, "signing_key_env": "UNSET_VARIABLE"}),
    ]
    for kind, settings in cases:
        with pytest.raises(Denied, match="UNSET_VARIABLE"):
            open_store(kind, "cfg", **settings)


def test_presign_without_a_signing_key_is_denied(make_store: Callable[..., Store], azure_server: Emulator,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Denied, match="service-account key"):
        make_store("gcs", signing_key_env=None).presign("k", timedelta(minutes=1))
    monkeypatch.setenv("SAS_ONLY", "sv=2024-01-01&sig=abc")
    sas_store = open_store("azure", "sas", container="c", account_url=azure_server.endpoint,
                           sas_token_env="SAS_ONLY")
    with pytest.raises(Denied, match="account key"):
        sas_store.presign("k", timedelta(minutes=1))


def test_redact_blanks_signatures_and_keys() -> None:
    text = ("GET /c/b?sv=1&sig=abc%2F&se=2 Authorization: Bearer ya29.tok AccountKey=Eby8v==;"
            " ?X-Amz-Signature=ff&X-Amz-Credential=AKIA/x X-Goog-Signature=00")
    out = redact(text)
    for secret in ("abc%2F", "ya29.tok", "Eby8v==", "=ff", "AKIA/x", "=00"):
        assert secret not in out
    assert "sv=1" in out and "se=2" in out


def test_open_store_refuses_unknown_types_and_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown type"):
        open_store("ftp", "x")
    with pytest.raises(ValueError, match="bad settings"):
        open_store("local", "x", path=tmp_path, colour="blue")
    with pytest.raises(ValueError, match="access_key_id_env"):
        open_store("s3", "x", bucket="b", secret_access_key_env="S")


def test_no_sdk_can_reach_a_cloud_metadata_address() -> None:
    """The suite runs with metadata lookups off or pointed at a closed local port."""
    assert os.environ["AWS_EC2_METADATA_DISABLED"] == "true"
    assert os.environ["GCE_METADATA_HOST"].startswith("127.0.0.1:")
    assert os.environ["GCE_METADATA_IP"].startswith("127.0.0.1:")


def test_error_family() -> None:
    assert Unavailable.retryable and not Denied.retryable and not NotFound.retryable
    assert issubclass(AlreadyExists, StoreError) and not issubclass(SourceError, StoreError)
    assert "store 'n'" in str(NotFound("n", "x"))
