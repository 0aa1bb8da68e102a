"""A Redis restart at the worst moment for a new job: right after `pipeline run` queued it.

The job's first moves (taking the message, validating, handing on to the next phase) happen
within a second of "Queued job"; a real redis-server of its own (not the session's: this one is
killed) is SIGKILLed then, on its default append-only settings (`appendfsync everysec`), and
started again on the same port and data a few seconds later. The job must end `succeeded`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from autotrain.jobs import keys
from autotrain.jobs.job import JobState
from autotrain.jobs.local_redis import find_redis_server
from tests.conftest import copy_example, job_id_in, wait_for

pytestmark = pytest.mark.slow

DOWN_SECONDS = float(os.environ.get("AUTOTRAIN_TEST_DOWN_SECONDS", "3.5"))


def _final(store, job_id: str, timeout: float):
    """The job once final; a failure that says where it stopped otherwise."""
    deadline = time.monotonic() + timeout
    while not (job := store.get(job_id)).is_final and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job.is_final, (
        f"not final after {timeout}s: {job.state.value}, owner {job.owner!r}, phase {job.phase}"
    )
    return job


class PrivateRedis:
    """A redis-server on its own port and data folder, to be killed and started again."""

    def __init__(self, data: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.argv = [find_redis_server(), "--bind", "127.0.0.1", "--port", str(self.port),
                     "--dir", str(data), "--appendonly", "yes", "--save", ""]  # fmt: skip
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis.from_url(self.url, decode_responses=True)
        self.proc = self.start()

    def start(self) -> subprocess.Popen:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL)
        wait_for(self.answers, 10, "the private redis-server to answer")
        return self.proc

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def answers(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False


@pytest.mark.parametrize("moment", ["next-take", "0.1s"])
def test_job_queued_as_redis_restarts_succeeds(cluster, tmp_path, moment):
    """Redis SIGKILLed within a second of "Queued job", back 3-4 s later: the job succeeds.

    `next-take`: killed the moment a worker takes the job for its next phase (the first lease
    deadline written after "Queued job"), before the worker has read the job it took;
    `0.1s`: a tenth of a second after, while validation or staging writes its progress."""
    data = tmp_path / "redis-data"
    data.mkdir()
    server = PrivateRedis(data)
    cluster.env["AUTOTRAIN_REDIS_URL"] = server.url
    cluster.redis = server.client
    leases = _lease_writes(server.client)
    try:
        cluster.start_worker("h1")
        run = subprocess.Popen(
            [sys.executable, "-m", "autotrain.cli", "pipeline", "run", "--dataset-path",
             str(copy_example(tmp_path)), "--profile", cluster.short_profile("Short", 10)],
            env=cluster.env, cwd=cluster.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        job_id = job_id_in(_until_queued(run))
        if moment == "next-take":
            while leases.get_message(timeout=0):  # the takes before "Queued job"
                pass
            _next_lease_taken(leases, within=1.0)
        else:
            time.sleep(float(moment.rstrip("s")))
        server.kill()
        time.sleep(DOWN_SECONDS)
        server.start()
        run.communicate(timeout=30)
        job = _final(cluster.store(), job_id, timeout=90)
        assert job.state == JobState.SUCCEEDED, job.error
        assert Path(job.result["weights"]).is_file()
        assert job.step == job.total
    finally:
        cluster.stop()
        server.kill()


def _lease_writes(client: redis.Redis):
    """A subscription that hears every write of a lease deadline (a worker taking a job)."""
    client.config_set("notify-keyspace-events", "Kz")
    leases = client.pubsub()
    leases.subscribe(f"__keyspace@0__:{keys.LEASES}")
    return leases


def _next_lease_taken(leases, within: float) -> None:
    """Return as a lease deadline is written (a take or a renewal), or after `within` seconds."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        event = leases.get_message(ignore_subscribe_messages=True, timeout=left)
        if event and event["data"] == "zadd":
            return


def _until_queued(run: subprocess.Popen) -> str:
    """`pipeline run`'s output up to its "Queued job" line."""
    output = ""
    for line in run.stdout:
        output += line
        if "Queued job" in line:
            return output
    pytest.fail(f"`pipeline run` queued nothing:\n{output}")
