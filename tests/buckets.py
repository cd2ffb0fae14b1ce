"""Buckets on the test servers and the settings that reach them: plain helpers, imported
by conftest.py's fixtures and by tests that make their own buckets."""
from __future__ import annotations

import uuid
from typing import Any

from servers import AZURITE_ACCOUNT, Emulator

#: Environment variables holding the test credentials; store settings name them.
S3_KEY_ID_ENV = "DISPERSIOND_TEST_S3_KEY_ID"
S3_SECRET_ENV = "DISPERSIOND_TEST_S3_SECRET"
GCS_SIGNER_ENV = "DISPERSIOND_TEST_GCS_SIGNING_KEY"
AZURE_KEY_ENV = "DISPERSIOND_TEST_AZURE_KEY"

STORE_KINDS = ("local", "s3", "gcs", "azure")


def unique_bucket() -> str:
    return "t" + uuid.uuid4().hex[:20]


def create_bucket(server: Emulator, bucket: str) -> None:
    """Buckets are made with the SDKs directly: creating them is not a store's job."""
    if server.kind == "s3":
        import boto3

        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    elif server.kind == "gcs":
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        storage.Client(project="test", credentials=AnonymousCredentials(),
                       client_options={"api_endpoint": server.endpoint}).create_bucket(bucket)
    else:
        from azure.storage.blob import BlobServiceClient

        BlobServiceClient.from_connection_string(server.connection_string).create_container(bucket)


def store_settings(server: Emulator, bucket: str, signer_env: str | None = None) -> dict[str, Any]:
    """Settings for `open_store` that reach `server` with the test credentials."""
    if server.kind == "s3":
        return {"bucket": bucket, "endpoint_url": server.endpoint, "region": "us-east-1",
                "addressing_style": "path", "access_key_id_env": S3_KEY_ID_ENV,
                "secret_access_key_env": S3_SECRET_ENV}
    if server.kind == "gcs":
        return {"bucket": bucket, "endpoint": server.endpoint, "anonymous": True, "project": "test",
                "signing_key_env": signer_env}
    return {"container": bucket, "account_url": server.endpoint, "account_name": AZURITE_ACCOUNT,
            "account_key_env": AZURE_KEY_ENV}
