"""What each store type does beyond the shared contract, over real HTTP against local servers.

The contract every store keeps (round trips, ranges, listing, conditional create, names,
failed puts, links) is tests/backend_contract.py, run by tests/test_backend_contract.py.
Here: each type's own checksums, outages (servers killed mid-transfer), credentials,
link expiry, configuration. What each server does not enforce is written next to the
test that would show it (docs/BACKENDS.md has the list).
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

from backend_contract import DATA, MiB, PART, SETTING, Source, fetch, sizes
from buckets import STORE_KINDS, create_bucket, store_settings, unique_bucket
from servers import AZURITE_KEY, Emulator

#: A dead or dying server must be reported within this many seconds (default settings).
OUTAGE_BOUND = 8.0


def every_verb(store: Store, key: str) -> list[Callable[[], object]]:
    """One call of each verb on `key` (list with no prefix), for tests that expect one error from all."""
    return [lambda: store.stat(key), lambda: store.get(key), lambda: list(store.list()),
            lambda: store.put_bytes(key + "-new", b"y"), lambda: store.delete(key)]


@pytest.fixture(params=STORE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(kind: str, make_store: Callable[..., Store]) -> Store:
    return make_store(kind, **{SETTING[kind]: PART[kind]})


# --- what each type does beyond the contract ---------------------------------------------

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


def test_local_listing_drops_what_a_killed_writer_left(make_store: Callable[..., Store]) -> None:
    store = make_store("local")
    store.put_bytes("d/k", b"1")
    root = Path(store.root)
    stale, fresh = root / "d" / ".tmp-killed", root / "d" / ".tmp-writing"
    stale.write_bytes(b"half an object")
    fresh.write_bytes(b"a put in progress")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    assert list(store.list("d/")) == ["d/k"]
    assert not stale.exists() and fresh.exists()


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
