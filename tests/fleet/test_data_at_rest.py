"""Data at rest on a shared GPU host, tried from another local user's side (`nobody`).

The embedded Redis' append-only file holds every job record and spec (webhook tokens in
notify_urls included); its password, config and logs sit beside it. Another user of the host must
read none of it, and the Procfile's Redis must be as locked as the embedded one.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import redis

from autotrain.fleet import cluster
from autotrain.fleet.doctor import check_private_state
from autotrain.jobs.store import JobStore
from autotrain.logs import setup_logging
from autotrain.settings import load_settings
from autotrain.spec import JobSpec
from tests.conftest import free_port, wait_for

needs_a_second_user = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("runuser"),
    reason="needs root and runuser to try the files as the user nobody",
)


@pytest.fixture
def shared_host_workspace():
    """A workspace other users can reach (0755 parents), as on a shared GPU server; pytest's own
    tmp_path sits in a 0700 folder, which would hide everything from `nobody` by accident."""
    parent = Path(tempfile.mkdtemp(prefix="autotrain-shared-"))
    parent.chmod(0o755)
    yield parent / "ws"
    shutil.rmtree(parent, ignore_errors=True)


def as_nobody(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "nobody", "--", *argv], capture_output=True, text=True)


@needs_a_second_user
def test_another_user_reads_nothing_of_the_embedded_cluster(shared_host_workspace):
    settings = load_settings(shared_host_workspace)
    status = cluster.up(settings, workers=False)
    try:
        store = JobStore(redis.Redis.from_url(status.redis_url, decode_responses=True))
        secret = "ntfy://token-abc123@ntfy.example/topic"
        spec = JobSpec(dataset_path=Path("/data/cat"), name="cat", profile="Tiny")
        store.create(spec.model_copy(update={"notify_urls": [secret]}))
        state = shared_host_workspace / ".autotrain"
        aof = wait_for(lambda: [p for p in state.rglob("*.aof") if secret.encode() in p.read_bytes()],
                       10, "the job record in the append-only file")  # fmt: skip
        setup_logging(shared_host_workspace)
        logs = sorted((shared_host_workspace / "logs").iterdir())
        assert (
            as_nobody("ls", str(shared_host_workspace)).returncode == 0
        )  # the workspace is reachable
        for path in [
            *aof,
            state / "redis.password",
            state / "redis.conf",
            state / "redis.log",
            *logs,
        ]:
            read = as_nobody("cat", str(path))
            assert read.returncode != 0 and "Permission denied" in read.stderr, path
        assert as_nobody("ls", str(state)).returncode != 0
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        for path in [*state.rglob("*"), *logs]:
            assert not stat.S_IMODE(path.lstat().st_mode) & 0o077, path
    finally:
        cluster.down(settings)


def test_an_older_state_folder_is_tightened_on_the_next_start(shared_host_workspace):
    state = shared_host_workspace / ".autotrain" / "redis"
    state.mkdir(parents=True, mode=0o755)
    state.parent.chmod(0o755)
    (state / "appendonly.aof").write_text("*1\r\n$4\r\nPING\r\n")
    (state / "appendonly.aof").chmod(0o644)
    settings = load_settings(shared_host_workspace)
    assert not check_private_state(settings)[0].ok  # doctor sees it before
    cluster.up(settings, workers=False)
    try:
        assert stat.S_IMODE(state.parent.stat().st_mode) == 0o700
        # Redis 7 moves an old appendonly.aof into appendonlydir/ (the file, its mode kept).
        kept = [path for path in state.rglob("appendonly.aof*") if path.is_file()]
        assert kept and all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in kept), kept
        check = check_private_state(settings)[0]
        assert check.ok, check.detail
    finally:
        cluster.down(settings)


def test_doctor_warns_about_a_redis_without_password(tmp_path):
    checks = {c.name: c for c in check_private_state(
        load_settings(tmp_path, redis_url="redis://queue-host:6379/0"))}  # fmt: skip
    assert not checks["redis password"].ok and "requirepass" in checks["redis password"].fix
    checks = {c.name: c for c in check_private_state(
        load_settings(tmp_path, redis_url="redis://:s3cret@queue-host:6379/0"))}  # fmt: skip
    assert checks["redis password"].ok


def test_the_procfile_redis_has_a_password_and_no_config_command(shared_host_workspace):
    procfile = (Path(__file__).resolve().parent.parent.parent / "Procfile").read_text()
    line = next(x for x in procfile.splitlines() if x.startswith("redis:"))
    assert line.split(":", 1)[1].split()[:2] == ["autotrain", "redis"]
    port = free_port()
    env = {**os.environ, "AUTOTRAIN_WORKSPACE": str(shared_host_workspace)}
    env.pop("AUTOTRAIN_REDIS_URL", None)
    shared_host_workspace.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "autotrain.cli", "redis", "--port", str(port)],
                            env=env, cwd=shared_host_workspace, stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        settings = load_settings(shared_host_workspace)
        stranger = redis.Redis(port=port)
        wait_for(lambda: _answers(stranger), 10, "the Procfile's Redis to answer")
        with pytest.raises(redis.AuthenticationError):
            stranger.config_set("dir", "/tmp")
        owner = redis.Redis.from_url(cluster.embedded_redis_url(settings))
        assert owner.ping()
        with pytest.raises(redis.ResponseError, match="unknown command"):
            owner.config_set("dir", "/tmp")
        state = shared_host_workspace / ".autotrain"
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
    finally:
        proc.terminate()
        proc.wait(10)


def _answers(client: redis.Redis) -> bool:
    try:
        client.ping()
    except redis.AuthenticationError:
        return True  # it answers, and asks for the password
    except redis.ConnectionError:
        time.sleep(0.1)
        return False
    return True
