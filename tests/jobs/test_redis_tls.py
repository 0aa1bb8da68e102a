"""Redis across the internet: a redis-server that speaks only TLS and asks for a password, reached
with `rediss://` by the CLI and a real `autotrain worker`, as the README's ACL user."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from autotrain.jobs.job import JobState
from autotrain.jobs.local_redis import find_redis_server
from tests.conftest import REPO, Cluster, copy_example, free_port, job_id_in

ADMIN_PASSWORD = "admin-s3cret-Zq81"
HOST_USER, HOST_PASSWORD = "gpu-host-1", "host-s3cret-Vd42"


@dataclass(frozen=True)
class TlsRedis:
    port: int
    ca: Path  # the CA certificate that signed the server's

    def url(self, user: str = "", password: str = ADMIN_PASSWORD, scheme: str = "rediss") -> str:
        query = f"?ssl_cert_reqs=required&ssl_ca_certs={self.ca}" if scheme == "rediss" else ""
        return f"{scheme}://{user}:{password}@localhost:{self.port}/0{query}"

    def admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.url(), decode_responses=True)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_certificates(folder: Path) -> None:
    """A throwaway CA, and a server certificate it signed for localhost and 127.0.0.1."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=folder)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", "server.key", "-out", "server.csr", cwd=folder)  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", "server.crt",
             cwd=folder)  # fmt: skip


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory) -> Iterator[TlsRedis]:
    """redis-server with TLS only (`--port 0`), a password, and the README's ACL user."""
    if not shutil.which("openssl"):
        pytest.skip("no openssl command to make the test certificates")
    folder = tmp_path_factory.mktemp("tls")
    _make_certificates(folder)
    port = free_port()
    proc = subprocess.Popen(
        [find_redis_server(), "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port),
         "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
         "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no",
         "--requirepass", ADMIN_PASSWORD, "--dir", str(folder), "--save", ""],
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    server = TlsRedis(port, folder / "ca.crt")
    admin = server.admin()
    deadline = time.monotonic() + 10
    while not _answers(admin):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.skip(f"{find_redis_server()} has no TLS (Debian's redis-server has): "
                        f"{(proc.communicate()[0] or '').strip()[-300:]}")  # fmt: skip
        time.sleep(0.05)
    admin.execute_command(*readme_acl_line(HOST_USER, HOST_PASSWORD))
    yield server
    proc.terminate()
    proc.wait(10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def readme_acl_line(user: str, password: str) -> list[str]:
    """The README's `ACL SETUSER` line for a worker host, as words, for `user` and `password`."""
    lines = [line.strip() for line in (REPO / "README.md").read_text().splitlines()]
    words = next(line for line in lines if line.startswith("ACL SETUSER gpu-host-1 ")).split()
    replace = {"gpu-host-1": user, ">HOST_PASSWORD": f">{password}"}
    return [replace.get(word, word) for word in words]


def _cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotrain.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _env(workspace: Path, url: str) -> dict[str, str]:
    return {**os.environ, "AUTOTRAIN_WORKSPACE": str(workspace), "AUTOTRAIN_REDIS_URL": url,
            "AUTOTRAIN_MIN_FREE_DISK_GB": "0", "AUTOTRAIN_LEASE_SECONDS": "3",
            "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}  # fmt: skip


@pytest.mark.slow
def test_a_job_runs_end_to_end_over_tls_as_an_acl_user(tls_redis, tmp_path):
    """The worker and the CLI reach Redis only through TLS (the server has no plain port), log
    in as the README's ACL user, and the job trains to the end with no command refused."""
    admin = tls_redis.admin()
    admin.execute_command("ACL", "LOG", "RESET")
    root = tmp_path / "ws"
    root.mkdir()
    url = tls_redis.url(HOST_USER, HOST_PASSWORD)
    cluster = Cluster(root, url, _env(root, url))
    profile = cluster.short_profile("TinyTls", steps=6)
    try:
        cluster.start_worker("tls1")
        run = cluster.cli("pipeline", "run", "--dataset-path", str(copy_example(tmp_path)),
                          "--profile", profile, "--monitor", check=True, timeout=300)  # fmt: skip
        job = cluster.store().get(job_id_in(run.stdout))
        assert job.state == JobState.SUCCEEDED and job.step == job.total > 0
        status = cluster.cli("status", check=True)
        assert "Redis (shared): up" in status.stdout and "cpu@tls1" in status.stdout
    finally:
        cluster.stop()
    assert admin.execute_command("ACL", "LOG") == []  # nothing the README's rights left out
    with pytest.raises(redis.exceptions.NoPermissionError):
        redis.Redis.from_url(url).flushall()  # and what a host never needs, it cannot do
    clients = admin.client_list()
    assert all(c["user"] in (HOST_USER, "default") for c in clients)
    log = (root / "worker-tls1.log").read_text()
    assert "rediss://gpu-host-1:**@localhost" in log  # Celery's banner, the password masked
    for text in (log, run.stdout, run.stderr, status.stdout):
        assert HOST_PASSWORD not in text


def test_config_show_and_status_mask_the_password(tls_redis, tmp_path):
    env = _env(tmp_path, tls_redis.url())
    status = _cli(env, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "Redis (shared): up rediss://:**@localhost" in status.stdout
    shown = _cli({**env, "COLUMNS": "400"}, "config", "show")  # the URL on one line
    assert f"rediss://:**@localhost:{tls_redis.port}/0?ssl_cert_reqs=required" in shown.stdout
    assert str(tls_redis.ca) in shown.stdout  # the CA file stays visible: a user checks it
    for text in (status.stdout, shown.stdout):
        assert ADMIN_PASSWORD not in text


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("plain", "speaks TLS on port"),
        ("wrong password", "refused the credentials"),
        ("no CA", "a certificate this host does not trust"),
    ],
)
def test_a_wrong_url_is_one_line_saying_what_to_fix(tls_redis, tmp_path, url, says):
    urls = {
        "plain": tls_redis.url(scheme="redis"),
        "wrong password": tls_redis.url(HOST_USER, "not-the-password"),
        "no CA": f"rediss://:{ADMIN_PASSWORD}@localhost:{tls_redis.port}/0",
    }
    env = _env(tmp_path, urls[url])
    for args in (("status",), ("train", "list"), ("worker", "--cpu", "--host", "tlsbad")):
        run = _cli(env, *args)
        output = run.stdout + run.stderr
        assert run.returncode == 1, output
        assert says in output and "Fix:" in output and "Traceback" not in output, output
        assert ADMIN_PASSWORD not in output and "not-the-password" not in output
