"""Fixtures shared by every test module: real storage servers and fresh stores on them.

`s3_server`, `gcs_server`, `azure_server` (session): an `Emulator` each (`.endpoint`,
`.stop()`, `.start()`, `.restart()`, `.log_path`), started on first use. They hold every
test's buckets, so outage tests take a private server from `spawn_server` instead.
`make_store(kind, server=None, **overrides)`: a `Store` on a new, uniquely named bucket
(or directory), closed after the test; `make_store_settings(kind, server=None)`: the
settings for such a bucket, for tests that write a configuration instead. Test credentials
are set here, explicitly, and no SDK may fall back to a cloud metadata address. Plain
helpers tests import (bucket names, store settings) live in buckets.py.
"""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backends import Store, open_store

from buckets import (AZURE_KEY_ENV, GCS_SIGNER_ENV, S3_KEY_ID_ENV, S3_SECRET_ENV, create_bucket,
                     store_settings, unique_bucket)
from servers import AZURITE_KEY, Emulator

# Before any SDK client exists: never look for cloud metadata or machine-wide config.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["AWS_CONFIG_FILE"] = os.devnull
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
os.environ["NO_GCE_CHECK"] = "True"
os.environ["GCE_METADATA_HOST"] = "127.0.0.1:9"  # discard port: any probe fails at once
os.environ["GCE_METADATA_IP"] = "127.0.0.1:9"
os.environ["NO_PROXY"] = os.environ["no_proxy"] = ",".join(
    filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))


def _service_account_key() -> str:
    """A throwaway service-account key: enough for V4 signing, which needs no server round trip."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return json.dumps({
        "type": "service_account", "project_id": "test", "private_key_id": uuid.uuid4().hex,
        "private_key": pem, "client_email": "signer@test.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": "http://127.0.0.1:9/token",
    })


@pytest.fixture(scope="session", autouse=True)
def _test_credentials() -> Iterator[None]:
    mp = pytest.MonkeyPatch()
    mp.setenv(S3_KEY_ID_ENV, "testing")
    mp.setenv(S3_SECRET_ENV, "testing")
    mp.setenv(AZURE_KEY_ENV, AZURITE_KEY)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def gcs_signing_key() -> Iterator[str]:
    """The name of the env variable holding a service-account key that signs GCS links."""
    mp = pytest.MonkeyPatch()
    mp.setenv(GCS_SIGNER_ENV, _service_account_key())
    yield GCS_SIGNER_ENV
    mp.undo()


def _session_server(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    server = Emulator(kind, tmp_path_factory.mktemp(f"{kind}-server"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    yield from _session_server("s3", tmp_path_factory)


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    yield from _session_server("gcs", tmp_path_factory)


@pytest.fixture(scope="session")
def azure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    yield from _session_server("azure", tmp_path_factory)


@pytest.fixture
def spawn_server(tmp_path: Path) -> Iterator[Callable[..., Emulator]]:
    """A private, started server of a kind, killed after the test: for outage tests."""
    servers: list[Emulator] = []

    def spawn(kind: str, env: dict[str, str] | None = None) -> Emulator:
        server = Emulator(kind, tmp_path / f"{kind}-{len(servers)}", env=env)
        servers.append(server)
        server.start()
        return server

    yield spawn
    for server in servers:
        server.stop()


@pytest.fixture
def make_store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """Factory: `make_store_settings(kind, server=None)` -> settings for a fresh bucket (or directory).

    For tests that write a configuration file rather than open a store themselves.
    """

    def make(kind: str, server: Emulator | None = None) -> dict[str, Any]:
        bucket = unique_bucket()
        if kind == "local":
            return {"path": str(tmp_path / bucket)}
        server = server or request.getfixturevalue(f"{kind}_server")
        create_bucket(server, bucket)
        signer = request.getfixturevalue("gcs_signing_key") if kind == "gcs" else None
        return store_settings(server, bucket, signer)

    return make


@pytest.fixture
def make_store(make_store_settings: Callable[..., dict[str, Any]]) -> Iterator[Callable[..., Store]]:
    """Factory: `make_store(kind, server=None, **overrides)` -> a Store on a fresh bucket."""
    stores: list[Store] = []

    def make(kind: str, server: Emulator | None = None, **overrides: Any) -> Store:
        settings = {**make_store_settings(kind, server), **overrides}
        store = open_store(kind, f"test-{kind}-{len(stores)}", **settings)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()
