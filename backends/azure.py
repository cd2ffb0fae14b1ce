"""Azure Blob Storage (or Azurite) through azure-storage-blob.

Small objects are one Put Blob with `If-None-Match: *` (overwrite=False). Large ones are
staged as blocks, one block in memory at a time (a buffer from the process's part
budget, backends/budget.py), then committed with `If-None-Match: *`;
blocks that are never committed stay invisible and the service discards them (after a
week on Azure). The MD5 of the whole object is computed while staging and stored as the
blob's Content-MD5, so `stat` reports it for every size.
"""
from __future__ import annotations

import hashlib
import os
from contextlib import AbstractContextManager
from datetime import datetime, timedelta, timezone
from typing import Any, BinaryIO, Iterator

import requests
from azure.core import exceptions as aex
from azure.storage.blob import (
    BlobBlock,
    BlobSasPermissions,
    BlobServiceClient,
    ContentSettings,
    LinearRetry,
    generate_blob_sas,
)
from urllib3.exceptions import HTTPError as Urllib3Error

from .budget import SHARED, PartBudget, fill, first_buffer
from .base import (
    AlreadyExists,
    Denied,
    NotFound,
    ObjectInfo,
    Store,
    StoreError,
    Unavailable,
    check_key,
    check_range,
    classify_status,
    link_seconds,
    read_exact,
    secret_from_env,
    translating,
)

_MAX_BLOCKS = 50_000


def _classify(exc: BaseException) -> type[StoreError] | None:
    if isinstance(exc, aex.ResourceNotFoundError):
        return NotFound
    if isinstance(exc, (aex.ResourceExistsError, aex.ResourceModifiedError)):
        return AlreadyExists  # 409 BlobAlreadyExists / 412: only conditional creates ask
    if isinstance(exc, aex.ClientAuthenticationError):
        return Denied
    if isinstance(exc, aex.HttpResponseError) and exc.status_code:
        return classify_status(exc.status_code)
    if isinstance(exc, (aex.ServiceRequestError, aex.ServiceResponseError, aex.IncompleteReadError,
                        requests.RequestException, Urllib3Error)):
        return Unavailable  # refused, timed out, cut off mid-body
    if isinstance(exc, aex.AzureError):
        return StoreError
    return None


def _md5() -> Any:
    return hashlib.md5(usedforsecurity=False)  # the store's integrity check, not ours


class AzureStore(Store):
    """One container. Credentials: a connection string, or an account URL with a key or SAS token.

    Each comes from an environment variable named in the settings, never the settings.
    """

    kind = "azure"

    def __init__(
        self,
        name: str,
        *,
        container: str,
        connection_string_env: str | None = None,
        account_url: str | None = None,
        account_name: str | None = None,
        account_key_env: str | None = None,
        sas_token_env: str | None = None,
        api_version: str | None = None,
        block_size: int = 8 << 20,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        retry_total: int = 2,
        retry_backoff: float = 0.5,
        budget: PartBudget | None = None,
    ) -> None:
        self.name = name
        self.budget = budget or SHARED
        self.container = container
        self.block_size = block_size
        options: dict[str, Any] = dict(
            retry_policy=LinearRetry(backoff=retry_backoff, random_jitter_range=retry_backoff / 2,
                                     retry_total=retry_total),
            connection_timeout=connect_timeout, read_timeout=read_timeout,
            max_single_get_size=block_size, max_chunk_get_size=block_size,
            max_single_put_size=block_size, max_block_size=block_size,
        )
        if api_version:
            options["api_version"] = api_version
        if connection_string_env:
            service = BlobServiceClient.from_connection_string(
                secret_from_env(name, connection_string_env), **options)
        elif account_url:
            credential: Any = None  # anonymous: public containers only
            if account_key_env:
                account_name = account_name or account_url.split("//", 1)[-1].split(".", 1)[0]
                credential = {"account_name": account_name,
                              "account_key": secret_from_env(name, account_key_env)}
            elif sas_token_env:
                credential = secret_from_env(name, sas_token_env)
            service = BlobServiceClient(account_url, credential=credential, **options)
        else:
            raise ValueError("azure needs connection_string_env or account_url")
        self._service = service
        self._container = service.get_container_client(container)

    def _errors(self, what: str) -> AbstractContextManager[None]:
        return translating(self.name, what, _classify)

    def put(self, key: str, src: BinaryIO, size: int) -> ObjectInfo:
        blob = self._container.get_blob_client(check_key(key))
        with self._errors(f"put {key!r}"):
            if size <= self.block_size:
                data = read_exact(src, size)
                md5 = _md5()
                md5.update(data)
                blob.upload_blob(data, length=size, overwrite=False,
                                 content_settings=ContentSettings(content_md5=md5.digest()))
                return ObjectInfo(key, size, {"md5": md5.hexdigest()})
            block_size = max(self.block_size, -(-size // _MAX_BLOCKS))
            upload = os.urandom(8).hex()  # our blocks never mix with a concurrent writer's
            blocks, md5 = [], _md5()
            for number, offset in enumerate(range(0, size, block_size)):
                n = min(block_size, size - offset)
                block_id = f"{upload}-{number:06d}"
                data = first_buffer(self.budget, src, block_size, n)  # one at a time
                try:
                    fill(src, data, n)
                    blob.stage_block(block_id, data, length=n)
                    md5.update(data)
                finally:
                    self.budget.give(data, block_size)
                blocks.append(BlobBlock(block_id=block_id))
            blob.commit_block_list(blocks, if_none_match="*",
                                   content_settings=ContentSettings(content_md5=md5.digest()))
        return ObjectInfo(key, size, {"md5": md5.hexdigest()})

    def get(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        check_range(start, length)
        blob = self._container.get_blob_client(check_key(key))
        if length == 0:
            self.stat(key)
            return iter(())
        with self._errors(f"get {key!r}"):
            try:
                offset = start if start or length is not None else None  # the SDK wants both or neither
                download = blob.download_blob(offset=offset, length=length, max_concurrency=1)
            except aex.HttpResponseError as exc:
                if exc.status_code == 416:  # range starts past the end
                    return iter(())
                raise
        return self._chunks(key, download)

    def _chunks(self, key: str, download: Any) -> Iterator[bytes]:
        with self._errors(f"get {key!r}"):
            yield from download.chunks()

    def stat(self, key: str) -> ObjectInfo:
        with self._errors(f"stat {key!r}"):
            props = self._container.get_blob_client(check_key(key)).get_blob_properties()
        md5 = props.content_settings.content_md5
        return ObjectInfo(key, props.size, {"md5": bytes(md5).hex()} if md5 else {})

    def list(self, prefix: str = "") -> Iterator[str]:
        with self._errors(f"list {prefix!r}"):
            yield from self._container.list_blob_names(name_starts_with=prefix or None)

    def delete(self, key: str) -> None:
        with self._errors(f"delete {key!r}"):
            self._container.get_blob_client(check_key(key)).delete_blob(delete_snapshots="include")

    def presign(self, key: str, expires: timedelta) -> str:
        """A read-only service SAS for one blob; needs the account key (not a SAS or token)."""
        seconds = link_seconds(expires)
        blob = self._container.get_blob_client(check_key(key))
        account_key = getattr(self._service.credential, "account_key", None)
        if not account_key:
            raise Denied(self.name, "presign needs the account key (connection string or account_key_env)")
        sas = generate_blob_sas(
            blob.account_name, blob.container_name, blob.blob_name, account_key=account_key,
            permission=BlobSasPermissions(read=True),
            expiry=datetime.now(timezone.utc) + timedelta(seconds=seconds))
        return f"{blob.url}?{sas}"

    def close(self) -> None:
        self._service.close()
