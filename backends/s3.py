"""S3 and S3-compatible stores (AWS, MinIO, Ceph RGW, R2) through boto3.

Conditional create is `If-None-Match: *` on PutObject and on CompleteMultipartUpload, so
the server needs conditional writes (AWS since 2024, MinIO, Ceph Squid, R2). Large objects
go up as multipart uploads, their parts in buffers from the process's part budget
(`budget.SHARED`); a failed upload is aborted so no parts linger (and none is ever
visible: an uncompleted upload is not an object). Bodies are handed to botocore as
bytearrays: it appends a `bytes` body to the request head, a copy of every part.
"""
from __future__ import annotations

import base64
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
import threading
from contextlib import AbstractContextManager, suppress
from datetime import timedelta
from typing import Any, BinaryIO, Iterator

import boto3
import botocore.exceptions as bce
from botocore.config import Config
from urllib3.exceptions import HTTPError as Urllib3Error

from .budget import SHARED, PartBudget, fill, first_buffer, wait_ready
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

_MAX_PARTS = 10_000
_READ_CHUNK = 1 << 20
#: Single-request bodies from this size on are read into a budget buffer (no copies).
_BUFFERED_PUT = 1 << 20
_UNAVAILABLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                      "ServiceUnavailable", "InternalError", "ConditionalRequestConflict"}
_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                 "ExpiredToken", "InvalidToken", "AccountProblem"}


def _status(exc: bce.ClientError) -> int | None:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _classify(exc: BaseException) -> type[StoreError] | None:
    if isinstance(exc, bce.ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("PreconditionFailed",) or _status(exc) == 412:
            return AlreadyExists
        if code in ("NoSuchKey", "NoSuchBucket", "NotFound"):
            return NotFound
        if code in _UNAVAILABLE_CODES:
            return Unavailable
        if code in _DENIED_CODES:
            return Denied
        return classify_status(_status(exc))
    if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError)):
        return Denied
    if isinstance(exc, (bce.EndpointConnectionError, bce.ConnectionError, bce.HTTPClientError,
                        bce.IncompleteReadError, bce.ResponseStreamingError, Urllib3Error)):
        return Unavailable  # refused, timed out, cut off mid-body
    if isinstance(exc, bce.BotoCoreError):
        return StoreError
    return None


_SESSIONS: dict[str | None, boto3.session.Session] = {}
_SESSIONS_LOCK = threading.Lock()


def _session(profile: str | None) -> boto3.session.Session:
    """One boto3 session per profile for the whole process: each session parses and keeps
    its own copy of the S3 service model (about 13 MiB), so stores share one and pass
    their own keys and region to their client."""
    with _SESSIONS_LOCK:
        if profile not in _SESSIONS:
            _SESSIONS[profile] = boto3.session.Session(profile_name=profile)
        return _SESSIONS[profile]


class S3Store(Store):
    """One bucket. Credentials: boto3's standard chain, a profile, or env variables named here."""

    kind = "s3"

    def __init__(
        self,
        name: str,
        *,
        bucket: str,
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: str = "auto",
        profile: str | None = None,
        access_key_id_env: str | None = None,
        secret_access_key_env: str | None = None,
        session_token_env: str | None = None,
        part_size: int = 8 << 20,
        concurrency: int = 4,
        checksum_algorithm: str | None = "SHA256",
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        max_attempts: int = 2,
        budget: PartBudget | None = None,
    ) -> None:
        self.name = name
        self.budget = budget or SHARED
        self.bucket = bucket
        self.part_size = part_size
        self.concurrency = max(1, concurrency)
        if bool(access_key_id_env) != bool(secret_access_key_env):
            raise ValueError("access_key_id_env and secret_access_key_env go together")
        keys: dict[str, str] = {}
        if access_key_id_env and secret_access_key_env:
            keys["aws_access_key_id"] = secret_from_env(name, access_key_id_env)
            keys["aws_secret_access_key"] = secret_from_env(name, secret_access_key_env)
            if session_token_env:
                keys["aws_session_token"] = secret_from_env(name, session_token_env)
        config = Config(
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            signature_version="s3v4",
            max_pool_connections=32,  # parallel parts of several parallel uploads
            s3={"addressing_style": addressing_style},
            # Servers without flexible checksums: set checksum_algorithm to None.
            request_checksum_calculation="when_supported" if checksum_algorithm else "when_required",
        )
        self._s3 = _session(profile).client("s3", endpoint_url=endpoint_url, config=config,
                                            region_name=region, **keys)
        self._checksum = {"ChecksumAlgorithm": checksum_algorithm} if checksum_algorithm else {}
        # Parts are checked with CRC32, whatever the setting: a multipart object's SHA-256
        # is only a digest of its part digests (never the object's), so per part SHA-256
        # would buy transfer integrity that CRC32 gives for a fraction of the CPU.
        self._part_checksum = {"ChecksumAlgorithm": "CRC32"} if checksum_algorithm else {}

    def _errors(self, what: str) -> AbstractContextManager[None]:
        return translating(self.name, what, _classify)

    @staticmethod
    def _sums(resp: dict[str, Any]) -> dict[str, str]:
        etag = resp.get("ETag", "").strip('"')
        sums = {"etag": etag} if etag else {}
        sha = resp.get("ChecksumSHA256")
        # A multipart object's ETag ends in -N, and its SHA-256 is over the part checksums
        # (AWS marks it COMPOSITE and appends -N; moto does neither): keep only whole-object ones.
        if sha and "-" not in etag and "-" not in sha and resp.get("ChecksumType") != "COMPOSITE":
            sums["sha256"] = base64.b64decode(sha).hex()
        return sums

    def put(self, key: str, src: BinaryIO, size: int) -> ObjectInfo:
        check_key(key)
        with self._errors(f"put {key!r}"):
            if size > self.part_size:
                return self._put_multipart(key, src, size)
            if size < _BUFFERED_PUT:
                return self._put_one(key, read_exact(src, size), size)
            buf = self._first_buffer(src, size, size)
            try:
                fill(src, buf, size)
                return self._put_one(key, buf, size)
            finally:
                self.budget.give(buf)

    def _first_buffer(self, src: BinaryIO, size: int, n: int) -> bytearray:
        return first_buffer(self.budget, src, size, n)

    def _put_one(self, key: str, body: bytes | bytearray, size: int) -> ObjectInfo:
        resp = self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*",
                                   **self._checksum)
        return ObjectInfo(key, size, self._sums(resp))

    def _put_multipart(self, key: str, src: BinaryIO, size: int) -> ObjectInfo:
        """Parts are read in order into buffers from the budget (backends/budget.py): up
        to `concurrency` of them upload at once, any beyond the first only while the
        process's parts fit the budget (else the oldest is waited for first)."""
        part_size = max(self.part_size, -(-size // _MAX_PARTS))
        where = {"Bucket": self.bucket, "Key": key}
        upload_id = self._s3.create_multipart_upload(**where, **self._part_checksum)["UploadId"]

        def send(number: int, body: bytearray) -> dict[str, Any]:
            resp = self._s3.upload_part(**where, UploadId=upload_id, PartNumber=number, Body=body,
                                        **self._part_checksum)
            part = {"PartNumber": number, "ETag": resp["ETag"]}
            if "ChecksumCRC32" in resp:
                part["ChecksumCRC32"] = resp["ChecksumCRC32"]
            return part

        budget = self.budget
        parts: list[dict[str, Any]] = []
        inflight: deque[tuple[Future[dict[str, Any]], bytearray]] = deque()
        spare: list[bytearray] = []  # taken, not (or no longer) sent

        def settle_oldest() -> None:
            fut, buf = inflight.popleft()
            spare.append(buf)  # given back even if the part failed
            parts.append(fut.result())
            budget.give(spare.pop(), part_size)

        try:
            with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                try:
                    for number, offset in enumerate(range(0, size, part_size), start=1):
                        n = min(part_size, size - offset)
                        buf = None
                        while buf is None:
                            if not inflight:
                                buf = self._first_buffer(src, part_size, n)
                            elif len(inflight) < self.concurrency:
                                wait_ready(src, n)
                                buf = budget.take(part_size, False, n)
                            if buf is None:
                                settle_oldest()
                        spare.append(buf)
                        fill(src, buf, n)
                        spare.pop()
                        inflight.append((pool.submit(send, number, buf), buf))
                    while inflight:
                        settle_oldest()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
            resp = self._s3.complete_multipart_upload(**where, UploadId=upload_id, IfNoneMatch="*",
                                                      MultipartUpload={"Parts": parts})
        except BaseException:
            with suppress(Exception):  # best effort: a lifecycle rule should sweep what this misses
                self._s3.abort_multipart_upload(**where, UploadId=upload_id)
            raise
        finally:  # the pool has finished with every buffer by now
            for buf in spare + [b for _, b in inflight]:
                budget.give(buf, part_size)
        return ObjectInfo(key, size, self._sums(resp))

    def get(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        check_key(key)
        check_range(start, length)
        if length == 0:
            self.stat(key)
            return iter(())
        extra = {}
        if start or length is not None:
            extra["Range"] = f"bytes={start}-{'' if length is None else start + length - 1}"
        with self._errors(f"get {key!r}"):
            try:
                body = self._s3.get_object(Bucket=self.bucket, Key=key, **extra)["Body"]
            except bce.ClientError as exc:
                if _status(exc) == 416:  # range starts past the end (or the object is empty)
                    return iter(())
                raise
        return self._stream(key, body)

    def _stream(self, key: str, body: Any) -> Iterator[bytes]:
        with self._errors(f"get {key!r}"):
            try:
                yield from body.iter_chunks(_READ_CHUNK)
            finally:
                body.close()

    def stat(self, key: str) -> ObjectInfo:
        check_key(key)
        with self._errors(f"stat {key!r}"):
            head = self._s3.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        return ObjectInfo(key, head["ContentLength"], self._sums(head))

    def list(self, prefix: str = "") -> Iterator[str]:
        with self._errors(f"list {prefix!r}"):
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", ()):
                    yield item["Key"]

    def delete(self, key: str) -> None:
        """S3 deletes absent keys silently, so look first (two concurrent deletes may both succeed)."""
        self.stat(key)
        with self._errors(f"delete {key!r}"):
            self._s3.delete_object(Bucket=self.bucket, Key=key)

    def presign(self, key: str, expires: timedelta) -> str:
        check_key(key)
        seconds = link_seconds(expires)
        with self._errors(f"presign {key!r}"):
            return self._s3.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=seconds)

    def close(self) -> None:
        self._s3.close()
