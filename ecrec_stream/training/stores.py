"""Object stores for the model registry, so that a trainer and index replicas on different
hosts share published models without a shared directory.

A store holds plain objects under keys (``<version>/<file>``, ``CURRENT``); it does not verify
anything: the registry checks every file it downloads against the version's manifest and the
weights against the version digest, exactly as for a local directory, so a store that serves a
changed object cannot make a replica load it.

Only S3-compatible stores are built in (AWS S3, MinIO, Ceph, R2, and moto's server in the tests),
through boto3, which reads credentials and the endpoint the standard way (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``, or a profile).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from ecrec_stream.exceptions import EcrecError


class StoreError(EcrecError):
    """The object store could not be reached or refused a request (the message says which)."""


class ObjectStore(Protocol):
    """What the registry needs of a remote store."""

    url: str

    def put_file(self, key: str, path: Path) -> None: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_file(self, key: str, path: Path) -> None: ...

    def get_bytes(self, key: str) -> bytes | None:
        """The object's bytes, ``None`` if there is no such key."""

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix``."""


class S3Store:
    """An S3 bucket and key prefix, from a URL ``s3://bucket/prefix``.

    >>> store = S3Store("s3://models/shop-a", client=object())
    >>> store.bucket, store.prefix, store._key("CURRENT")
    ('models', 'shop-a/', 'shop-a/CURRENT')
    """

    def __init__(self, url: str, *, client: Any = None) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise StoreError(f"not an S3 URL (s3://bucket/prefix): {url!r}")
        self.url = url
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/") + "/" if parsed.path.strip("/") else ""
        if client is None:
            import boto3

            client = boto3.client("s3")
        self._client = client

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise KeyError(kwargs.get("Key")) from exc
            raise StoreError(f"{self.url}: {what} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"{self.url}: {what} failed: {exc}") from exc

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as fh:
            self._call("upload", self._client.put_object, Key=self._key(key), Body=fh)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("upload", self._client.put_object, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            answer = self._call("download", self._client.get_object, Key=self._key(key))
        except KeyError:
            return None
        return bytes(answer["Body"].read())

    def get_file(self, key: str, path: Path) -> None:
        data = self.get_bytes(key)
        if data is None:
            raise StoreError(f"{self.url}: no object {key!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def list_keys(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call(
                "list", self._client.list_objects_v2, Prefix=self._key(prefix), **extra
            )
            out += [obj["Key"][len(self.prefix) :] for obj in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]


def open_store(url: str) -> ObjectStore:
    """The store a registry URL names (only ``s3://`` so far)."""
    if url.startswith("s3://"):
        return S3Store(url)
    raise StoreError(f"unsupported registry URL {url!r} (use s3://bucket/prefix or a directory)")
