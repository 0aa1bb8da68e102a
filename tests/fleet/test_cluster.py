"""The embedded Redis of `autotrain up` (a real redis-server): locked to this user's commands."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import redis

from autotrain.fleet import cluster
from autotrain.jobs import keys
from autotrain.settings import load_settings


@pytest.fixture
def embedded(tmp_path):
    settings = load_settings(tmp_path / "ws")
    status = cluster.up(settings, workers=False)
    yield settings, status
    cluster.down(settings)


def test_the_embedded_redis_needs_its_password_and_refuses_config(embedded):
    settings, status = embedded
    password_file = Path(settings.workspace) / ".autotrain" / "redis.password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    password = password_file.read_text().strip()
    port = int(status.redis_url.rsplit(":", 1)[1].split("/")[0])
    stranger = redis.Redis(port=port)
    with pytest.raises(redis.AuthenticationError):
        stranger.set(keys.job("x"), "rewritten")
    owner = redis.Redis.from_url(cluster.embedded_redis_url(settings))
    assert owner.ping()
    with pytest.raises(redis.ResponseError, match="unknown command"):
        owner.config_set("dir", "/tmp")  # the way to write files as this user
    # the password is on no command line
    cmdline = Path(f"/proc/{status.redis_pid}/cmdline").read_bytes().decode()
    assert password not in cmdline
    assert password not in cluster.redact(status.redis_url)


def test_a_restart_keeps_the_password(embedded):
    settings, _status = embedded
    before = cluster.embedded_password(settings)
    cluster.down(settings)
    cluster.up(settings, workers=False)
    assert cluster.embedded_password(settings) == before
    assert redis.Redis.from_url(cluster.embedded_redis_url(settings)).ping()


def test_down_refuses_while_a_job_trains_unless_forced(embedded):
    import os
    import subprocess
    import sys

    from autotrain.jobs.job import JobState
    from autotrain.jobs.store import JobStore
    from autotrain.spec import JobSpec

    settings, _status = embedded
    store = JobStore(
        redis.Redis.from_url(cluster.embedded_redis_url(settings), decode_responses=True)
    )
    job = store.create(JobSpec(dataset_path="/data/cat", name="cat", profile="Tiny"),
                       state=JobState.WAITING_GPU)  # fmt: skip
    store.set_state(job.id, JobState.TRAINING, step=40, total=200)
    env = {**os.environ, "AUTOTRAIN_WORKSPACE": str(settings.workspace)}
    env.pop("AUTOTRAIN_REDIS_URL", None)

    def down(*extra):
        return subprocess.run([sys.executable, "-m", "autotrain.cli", "down", *extra], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    refused = down()
    assert refused.returncode == 1
    assert f"1 job(s) training: {job.id} (cat, 40/200)" in refused.stderr
    assert "--force" in refused.stderr
    assert cluster.cluster_status(settings).redis_running, "nothing was stopped"
    forced = down("--force")
    assert forced.returncode == 0 and "redis" in forced.stdout


def test_up_with_the_dashboard_serves_the_embedded_cluster_and_down_stops_it(tmp_path):
    import os
    import subprocess
    import sys
    import urllib.request

    from tests.conftest import free_port, wait_for

    port = free_port()
    env = {**os.environ, "AUTOTRAIN_WORKSPACE": str(tmp_path / "ws"),
           "AUTOTRAIN_DASHBOARD_PORT": str(port)}  # fmt: skip
    env.pop("AUTOTRAIN_REDIS_URL", None)
    env.pop("AUTOTRAIN_DASHBOARD_TOKEN", None)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "autotrain.cli", *args], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    up = cli("up", "--no-workers", "--dashboard")
    assert up.returncode == 0, up.stderr
    assert f"Dashboard: http://127.0.0.1:{port}" in up.stdout
    token = (tmp_path / "ws" / ".autotrain" / "dashboard.token").read_text().strip()
    assert f"Dashboard: http://127.0.0.1:{port}/?token={token} " in up.stdout, "a link to open"

    def page() -> str | None:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/",
                                         headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        try:
            return urllib.request.urlopen(request, timeout=5).read().decode()
        except OSError:
            return None

    assert "No jobs yet" in wait_for(page, 30, "the dashboard of the embedded cluster")
    down = cli("down")
    assert down.returncode == 0 and "dashboard (pid" in down.stdout, down.stdout + down.stderr
    wait_for(lambda: page() is None, 10, "the dashboard to stop")
