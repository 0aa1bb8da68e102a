"""The embedded Redis of `autotrain up` (a real redis-server): locked to this user's commands."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import redis

from autotrain import cluster
from autotrain.settings import load_settings
from tests.conftest import copy_example


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
        stranger.set("autotrain:job:x", "rewritten")
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

    from autotrain.job import JobState, JobStore
    from autotrain.spec import JobSpec

    settings, _status = embedded
    store = JobStore(
        redis.Redis.from_url(cluster.embedded_redis_url(settings), decode_responses=True)
    )
    job = store.create(JobSpec(dataset_path="/data/cat", name="cat", profile="Tiny"))
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


@pytest.mark.slow
def test_flower_lists_the_workers_with_auth_and_keeps_the_password_off_ps(tmp_path):
    """HTTP-level: a fresh `autotrain up` + `autotrain flower` answers Flower's worker API."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from tests.conftest import wait_for

    env = {k: v for k, v in os.environ.items() if k != "AUTOTRAIN_REDIS_URL"}
    env["AUTOTRAIN_WORKSPACE"] = str(tmp_path / "ws")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env.update(AUTOTRAIN_FLOWER_PORT=str(port), AUTOTRAIN_FLOWER_PASSWORD="s3cret-pw")
    cli = [sys.executable, "-m", "autotrain.cli"]
    subprocess.run([*cli, "up", "--cpu"], env=env, check=True, capture_output=True, timeout=120)
    flower = subprocess.Popen([*cli, "flower"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/api/workers?refresh=1"
        auth = urllib.request.Request(url, headers={"Authorization": "Basic YWRtaW46czNjcmV0LXB3"})

        def workers():
            try:
                with urllib.request.urlopen(auth, timeout=20) as reply:
                    return json.loads(reply.read())
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return None

        started = time.monotonic()
        found = wait_for(
            lambda: (w := workers()) and {"cpu", "prep"} <= {n.split("@")[0] for n in w} and w,
            60,
            "Flower to list the workers",
        )
        assert time.monotonic() - started < 30
        assert any(name.startswith("prep@") for name in found)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=20)
        assert refused.value.code == 401
        argv = Path(f"/proc/{flower.pid}/cmdline").read_bytes().decode()
        assert "s3cret-pw" not in argv
        # a job's tasks say which dataset and profile they are about
        dataset = copy_example(tmp_path)
        subprocess.run([*cli, "pipeline", "run", "--dataset-path", str(dataset), "--profile",
                        "Tiny"], env=env, check=True, capture_output=True, timeout=120)  # fmt: skip
        tasks_url = f"http://127.0.0.1:{port}/api/tasks"
        tasks = urllib.request.Request(tasks_url, headers=auth.headers)

        def described() -> bool:
            with urllib.request.urlopen(tasks, timeout=20) as reply:
                listing = json.loads(reply.read())
            return any("dataset=tiny_shapes profile=Tiny" in (t.get("args") or "")
                       for t in listing.values())  # fmt: skip

        wait_for(described, 60, "Flower to show the job's task with its dataset and profile")
    finally:
        os.killpg(flower.pid, 9)
        subprocess.run([*cli, "down", "--force"], env=env, capture_output=True, timeout=120)
