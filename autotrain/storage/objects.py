"""The S3 client every store operation goes through, and the traffic it counts.

boto3 reads the endpoint and credentials the standard AWS way (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE and ~/.aws/{config,credentials}), so any
S3-compatible service works: AWS, R2, B2, Wasabi, MinIO, SeaweedFS. Every failure becomes a
StorageError that names the store as the user spelled it and what to do.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from autotrain.errors import AutotrainError
from autotrain.settings import parse_storage_url

__all__ = [
    "ObjectStore",
    "ObjectInfo",
    "StorageError",
    "Traffic",
    "store_at",
]


class StorageError(AutotrainError):
    """The store could not be reached or refused a request; the message says which and why."""


@dataclass
class Traffic:
    """What store operations moved: files and bytes each way, requests sent, seconds spent."""

    uploaded_files: int = 0
    uploaded_bytes: int = 0
    downloaded_files: int = 0
    downloaded_bytes: int = 0
    requests: int = 0
    seconds: float = 0.0  # what the job waited for the store
    background_seconds: float = 0.0  # uploads while the trainer ran on (the write-through)

    def add(self, other: Traffic) -> Traffic:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def minus(self, earlier: Traffic) -> Traffic:
        return Traffic(**{f.name: getattr(self, f.name) - getattr(earlier, f.name)
                          for f in fields(self)})  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"seconds": round(self.seconds, 3),
                               "background_seconds": round(self.background_seconds, 3)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Traffic:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})

    def summary(self) -> str:
        """One line for people: `up 12 files (3.4 MB), down 0 files, 41 requests, 0.8 s`."""
        return (
            f"up {self.uploaded_files} files ({_mb(self.uploaded_bytes)}), down "
            f"{self.downloaded_files} files ({_mb(self.downloaded_bytes)}), {self.requests} "
            f"requests, {self.seconds:.1f} s waited"
            + (
                f" (+{self.background_seconds:.1f} s while training)"
                if self.background_seconds
                else ""
            )
        )


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


MULTIPART_FROM = 8 * 2**20  # boto3's own multipart threshold: below it, one PUT


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store's prefix
    size: int


@lru_cache(maxsize=4)
def store_at(url: str) -> ObjectStore:
    """One client per store URL and process (boto3 clients are thread-safe and pool connections)."""
    return ObjectStore(url)


class ObjectStore:
    """Files in and out of one bucket prefix; `traffic` counts everything this client moved."""

    def __init__(self, url: str):
        self.url = url
        try:
            self.location = parse_storage_url(url)
        except ValueError as exc:
            raise StorageError(f"{exc}.") from exc
        self.traffic = Traffic()
        self._lock = threading.Lock()
        self._client: Any = None

    # Reads
    def check(self) -> None:
        """Reach the bucket once, so a wrong endpoint, key or bucket is said before any work."""
        with self._errors(f"reaching the bucket {self.location.bucket!r}"):
            self.client.head_bucket(Bucket=self.location.bucket)

    def exists(self, key: str) -> bool:
        with self._errors(f"looking for {key}", missing_ok=True) as missing:
            self.client.head_object(Bucket=self.location.bucket, Key=self._full(key))
        return not missing

    def get_bytes(self, key: str) -> bytes | None:
        """The object's content, None when there is no such object."""
        with self._errors(f"reading {key}", missing_ok=True):
            answer = self.client.get_object(Bucket=self.location.bucket, Key=self._full(key))
            data = answer["Body"].read()
            self._count(downloaded=len(data))
            return data
        return None

    def get_file(self, key: str, dest: Path) -> int:
        """Download to `dest` (built aside, renamed into place, its recorded mtime restored);
        returns the size."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(f".{dest.name}.partial")
        with self._errors(f"downloading {key}"):
            answer = self.client.get_object(Bucket=self.location.bucket, Key=self._full(key))
            with open(partial, "wb") as out:
                shutil.copyfileobj(answer["Body"], out, 1 << 20)
        os.replace(partial, dest)
        if mtime := answer.get("Metadata", {}).get("mtime"):
            os.utime(dest, ns=(int(mtime), int(mtime)))
        size = dest.stat().st_size
        self._count(downloaded=size)
        return size

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object under `prefix` (relative to the store's own prefix)."""
        found: list[ObjectInfo] = []
        with self._errors(f"listing {prefix}"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=self._full(prefix)
            )
            for page in pages:
                for item in page.get("Contents", []):
                    rel = item["Key"][len(self.location.prefix) :]
                    found.append(ObjectInfo(rel, int(item["Size"])))
        return found

    # Writes
    def put_file(self, path: Path, key: str) -> int:
        """Upload `path`, its mtime kept as metadata; returns the size. A small file goes in one
        request; a large one in parallel parts (boto3's transfer manager)."""
        stat = path.stat()
        metadata = {"mtime": str(stat.st_mtime_ns)}
        with self._errors(f"uploading {path.name} to {key}"):
            if stat.st_size < MULTIPART_FROM:
                with open(path, "rb") as body:
                    self.client.put_object(Bucket=self.location.bucket, Key=self._full(key),
                                           Body=body, Metadata=metadata)  # fmt: skip
            else:
                self.client.upload_file(str(path), self.location.bucket, self._full(key),
                                        ExtraArgs={"Metadata": metadata})  # fmt: skip
        self._count(uploaded=stat.st_size)
        return stat.st_size

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._errors(f"writing {key}"):
            self.client.put_object(Bucket=self.location.bucket, Key=self._full(key), Body=data)
        self._count(uploaded=len(data))

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": self._full(k)} for k in keys[start : start + 1000]]
            with self._errors(f"deleting {len(chunk)} objects"):
                self.client.delete_objects(
                    Bucket=self.location.bucket, Delete={"Objects": chunk, "Quiet": True}
                )

    # The client
    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        custom = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        config = Config(
            retries={"mode": "standard", "max_attempts": 5},
            connect_timeout=10,
            read_timeout=60,
            max_pool_connections=16,
            # Services other than AWS serve buckets as paths, not as host names.
            s3={"addressing_style": "path"} if custom else None,
        )
        client = boto3.session.Session().client("s3", config=config)
        client.meta.events.register("before-send.s3", self._count_request)
        return client

    def _count_request(self, **_kwargs: Any) -> None:
        with self._lock:
            self.traffic.requests += 1

    def _count(self, uploaded: int | None = None, downloaded: int | None = None) -> None:
        with self._lock:
            if uploaded is not None:
                self.traffic.uploaded_files += 1
                self.traffic.uploaded_bytes += uploaded
            if downloaded is not None:
                self.traffic.downloaded_files += 1
                self.traffic.downloaded_bytes += downloaded

    def snapshot(self) -> Traffic:
        with self._lock:
            return Traffic(**asdict(self.traffic))

    @contextmanager
    def measuring(self) -> Iterator[Traffic]:
        """What this client moves inside the block, and the block's seconds, filled in on exit
        (other threads of the process using the same client count too)."""
        started, before, measured = time.monotonic(), self.snapshot(), Traffic()
        try:
            yield measured
        finally:
            measured.add(self.snapshot().minus(before))
            measured.seconds = time.monotonic() - started

    def _full(self, key: str) -> str:
        return self.location.prefix + key

    @contextmanager
    def _errors(self, doing: str, missing_ok: bool = False) -> Iterator[list[bool]]:
        """botocore's exceptions as a StorageError that says what to do; with `missing_ok`, a
        missing object is not an error (the yielded list gets True instead)."""
        from botocore.exceptions import BotoCoreError, ClientError

        missing: list[bool] = []
        try:
            yield missing
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if missing_ok and code in ("404", "NoSuchKey", "NotFound"):
                missing.append(True)
                return
            raise StorageError(self._explain(doing, code, str(exc))) from exc
        except BotoCoreError as exc:
            raise StorageError(self._explain(doing, type(exc).__name__, str(exc))) from exc

    def _explain(self, doing: str, code: str, detail: str) -> str:
        where = f"The store {self.url}"
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        fixes = {
            "NoCredentialsError": "no credentials were found: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE with ~/.aws/credentials) on this host",
            "EndpointConnectionError": f"its endpoint {endpoint or '(AWS)'} cannot be reached: "
            "check AWS_ENDPOINT_URL and that the service is up",
            "NoSuchBucket": f"the bucket {self.location.bucket!r} does not exist: create it "
            "(e.g. `aws s3 mb s3://" + self.location.bucket + "`) or fix storage_url",
            "404": f"the bucket {self.location.bucket!r} does not exist: create it or fix "
            "storage_url",
            "403": "access was refused: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and that "
            "they may use this bucket",
            "AccessDenied": "access was refused: check the credentials' rights on this bucket",
            "InvalidAccessKeyId": "the access key is unknown to the service: check "
            "AWS_ACCESS_KEY_ID",
            "SignatureDoesNotMatch": "the secret key is wrong: check AWS_SECRET_ACCESS_KEY",
        }
        fix = fixes.get(code, detail)
        return f"{where} failed while {doing}: {fix}."
