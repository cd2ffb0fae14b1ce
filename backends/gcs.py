"""Google Cloud Storage (or an emulator at an explicit endpoint) through google-cloud-storage.

Uploads of every size are one JSON-API multipart request (`uploadType=multipart`) with
`ifGenerationMatch=0`, whose body is streamed from the source in bounded chunks. This is
the one upload form whose precondition both GCS and fake-gcs-server enforce: the emulator
ignores it on resumable uploads and on compose/copy/rewrite, so "upload elsewhere, then
move into place conditionally" would not hold there. The price: a dropped connection
restarts the whole object rather than resuming it, as for any single-request upload.
The SDK's own upload is not used because it buffers a whole multipart body in memory and
treats a short read from the source as end of file.
"""
from __future__ import annotations

import base64
import functools
import json
import os
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, Iterator

import google.auth
import google.auth.exceptions as gae
import requests
from google.api_core import exceptions as gex
from google.auth.credentials import AnonymousCredentials
from google.auth.transport.requests import AuthorizedSession
from google.cloud import storage
from google.cloud.exceptions import from_http_response
from google.cloud.storage.retry import DEFAULT_RETRY
from google.oauth2 import service_account
from google.resumable_media import common as grm
from urllib3.exceptions import HTTPError as Urllib3Error

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
    iter_parts,
    link_seconds,
    secret_from_env,
    translating,
)

_DEFAULT_ENDPOINT = "https://storage.googleapis.com"
_SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]


def _classify(exc: BaseException, precondition: type[StoreError] = AlreadyExists) -> type[StoreError] | None:
    if isinstance(exc, gex.PreconditionFailed):
        return precondition
    if isinstance(exc, gex.RetryError):
        return Unavailable  # transient failures until the retry deadline
    if isinstance(exc, gex.GoogleAPICallError):
        return classify_status(exc.code)
    if isinstance(exc, grm.InvalidResponse):
        return classify_status(exc.response.status_code)
    if isinstance(exc, (requests.RequestException, Urllib3Error, gae.TransportError, grm.DataCorruption)):
        return Unavailable
    if isinstance(exc, gae.GoogleAuthError):
        return Denied
    return None


def _info(key: str, size: int | str, md5: str | None, crc32c: str | None) -> ObjectInfo:
    """GCS reports checksums in base64; ObjectInfo holds hex."""
    sums = {name: base64.b64decode(b64).hex() for name, b64 in (("md5", md5), ("crc32c", crc32c)) if b64}
    return ObjectInfo(key, int(size), sums)


class _MultipartBody:
    """A multipart/related body (metadata, then the bytes) that requests streams with a Content-Length."""

    def __init__(self, key: str, src: BinaryIO, size: int, chunk_size: int) -> None:
        self.boundary = "==" + os.urandom(16).hex() + "=="
        self._head = (
            f"--{self.boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
            f"{json.dumps({'name': key})}\r\n"
            f"--{self.boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).encode()
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._parts = iter_parts(src, size, chunk_size)
        self._size = size

    def __len__(self) -> int:
        return len(self._head) + self._size + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self._head
        yield from self._parts
        yield self._tail


class GCSStore(Store):
    """One bucket. Credentials: Google's standard chain (ADC), or anonymous for an emulator."""

    kind = "gcs"

    def __init__(
        self,
        name: str,
        *,
        bucket: str,
        project: str | None = None,
        endpoint: str | None = None,
        anonymous: bool = False,
        signing_key_env: str | None = None,
        chunk_size: int = 8 << 20,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        retry_deadline: float = 5.0,
    ) -> None:
        self.name = name
        self.bucket = bucket
        self.chunk_size = chunk_size
        self._endpoint = (endpoint or _DEFAULT_ENDPOINT).rstrip("/")
        self._timeout = (connect_timeout, read_timeout)
        self._retry = DEFAULT_RETRY.with_timeout(retry_deadline).with_delay(initial=0.2, maximum=1.0)
        with self._errors("open"):
            if anonymous:
                credentials, default_project = AnonymousCredentials(), None
            else:
                credentials, default_project = google.auth.default(scopes=_SCOPES)
        # Without a key of its own, presign signs with the default credentials (a service account).
        self._signer = self._load_signer(signing_key_env) if signing_key_env else None
        self._can_sign = self._signer is not None or not anonymous
        self._http = AuthorizedSession(credentials)
        self._client = storage.Client(
            project=project or default_project, credentials=credentials, _http=self._http,
            client_options={"api_endpoint": self._endpoint} if endpoint else None)
        self._bucket = self._client.bucket(bucket)

    def _load_signer(self, variable: str) -> service_account.Credentials:
        """A service-account key from the environment: the JSON itself, or a path to it."""
        raw = secret_from_env(self.name, variable)
        try:
            text = raw if raw.lstrip().startswith("{") else Path(raw).read_text()
            return service_account.Credentials.from_service_account_info(json.loads(text))
        except (OSError, ValueError) as exc:
            raise Denied(self.name, f"{variable} holds no usable service-account key ({type(exc).__name__})") from None

    def _errors(self, what: str, precondition: type[StoreError] = AlreadyExists) -> AbstractContextManager[None]:
        return translating(self.name, what, functools.partial(_classify, precondition=precondition))

    def put(self, key: str, src: BinaryIO, size: int) -> ObjectInfo:
        check_key(key)
        body = _MultipartBody(key, src, size, self.chunk_size)
        with self._errors(f"put {key!r}"):
            resp = self._http.request(
                "POST", f"{self._endpoint}/upload/storage/v1/b/{self.bucket}/o",
                params={"uploadType": "multipart", "ifGenerationMatch": "0"},
                headers={"Content-Type": f'multipart/related; boundary="{body.boundary}"'},
                data=body, timeout=self._timeout)
            if resp.status_code != 200:
                raise from_http_response(resp)
            resource = resp.json()
            info = _info(key, resource["size"], resource.get("md5Hash"), resource.get("crc32c"))
        if info.size != size:
            raise StoreError(self.name, f"put {key!r}: stored {info.size} bytes, sent {size}")
        return info

    def get(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        check_range(start, length)
        with self._errors(f"get {key!r}"):
            blob = self._bucket.get_blob(check_key(key), retry=self._retry, timeout=self._timeout)
        if blob is None:
            raise NotFound(self.name, f"get {key!r}: no such object")
        end = blob.size if length is None else min(blob.size, start + length)
        return self._ranges(blob, start, end)

    def _ranges(self, blob: storage.Blob, pos: int, end: int) -> Iterator[bytes]:
        """One ranged request per chunk, pinned to the generation first seen (replaced => NotFound)."""
        while pos < end:
            n = min(self.chunk_size, end - pos)
            with self._errors(f"get {blob.name!r}", precondition=NotFound):
                data = blob.download_as_bytes(
                    start=pos, end=pos + n - 1, checksum=None, if_generation_match=blob.generation,
                    retry=self._retry, timeout=self._timeout)
            if len(data) != n:
                raise Unavailable(self.name, f"get {blob.name!r}: short read at {pos}")
            pos += n
            yield data

    def stat(self, key: str) -> ObjectInfo:
        with self._errors(f"stat {key!r}"):
            blob = self._bucket.get_blob(check_key(key), retry=self._retry, timeout=self._timeout)
        if blob is None:
            raise NotFound(self.name, f"stat {key!r}: no such object")
        return _info(key, blob.size, blob.md5_hash, blob.crc32c)

    def list(self, prefix: str = "") -> Iterator[str]:
        with self._errors(f"list {prefix!r}"):
            for blob in self._client.list_blobs(self._bucket, prefix=prefix, retry=self._retry,
                                                timeout=self._timeout):
                yield blob.name

    def delete(self, key: str) -> None:
        # No retry: a retried delete that had succeeded would report NotFound.
        with self._errors(f"delete {key!r}"):
            self._bucket.delete_blob(check_key(key), retry=None, timeout=self._timeout)

    def presign(self, key: str, expires: timedelta) -> str:
        seconds = link_seconds(expires)
        blob = self._bucket.blob(check_key(key))
        try:
            if not self._can_sign:
                raise AttributeError("anonymous credentials")
            return blob.generate_signed_url(
                version="v4", method="GET", expiration=timedelta(seconds=seconds),
                credentials=self._signer, api_access_endpoint=self._endpoint)
        except AttributeError:  # what the SDK raises for credentials that hold no private key
            raise Denied(self.name, "presign needs a service-account key (signing_key_env)") from None

    def close(self) -> None:
        self._http.close()
