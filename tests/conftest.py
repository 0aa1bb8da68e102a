"""Fixtures that start the real thing: a redis-server and `autotrain worker` processes on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import tomli_w

from autotrain.jobs import keys
from autotrain.jobs.local_redis import find_redis_server

REPO = Path(__file__).resolve().parent.parent

# A shell starts a background job with SIGINT ignored, and an ignored signal stays ignored in
# every child: the CLI under test would then never see the Ctrl+C the monitor tests send. With
# a handler here, children start with the default again (exec resets handlers, not SIG_IGN).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
EXAMPLE_DATASET = REPO / "examples" / "datasets" / "tiny_shapes"


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    """Poll until `condition()` is truthy; fail the test saying what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[str]:
    """A real redis-server on a free loopback port, AOF on, for the whole session."""
    data = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = subprocess.Popen(
        redis_server_command(port, data, "--appendonly", "yes", "--maxmemory-policy", "noeviction"),
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    wait_for(lambda: redis_answers(client), 10, "redis-server to answer")
    yield url
    proc.terminate()
    proc.wait(10)


def redis_server_command(port: int, data: Path, *options: str) -> list[str]:
    """A redis-server on loopback `port` that keeps its files in `data`, no RDB snapshots."""
    return [find_redis_server(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
            "--save", "", *options]  # fmt: skip


def redis_answers(client: redis.Redis) -> bool:
    """True once the server answers a PING; False while it is down or still starting."""
    try:
        return client.ping()
    except redis.RedisError:
        return False


def free_port() -> int:
    """A loopback port nothing listens on (the kernel picks it): for a server a test starts, or
    for an address that must refuse connections."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_tiny_profile(
    workspace: Path, name: str, profile: dict[str, object] | None = None, **base: object
) -> str:
    """A copy of the built-in Tiny profile in `workspace`'s templates, as `name`: `base` changes
    its base.toml (steps, saves, samples), `profile` its profile.toml. Returns `name`."""
    target = workspace / "templates" / name
    shutil.copytree(REPO / "templates" / "Tiny", target)
    for file, changes in (("profile.toml", profile), ("base.toml", base)):
        if changes:
            data = tomllib.loads((target / file).read_text())
            data.update(changes)
            (target / file).write_text(tomli_w.dumps(data))
    return name


class Cluster:
    """A workspace wired to the test Redis, plus helpers to start workers and run the CLI."""

    def __init__(
        self, root: Path, redis_url: str, env: dict[str, str], marked_slow: bool = True
    ) -> None:
        self.root, self.redis_url, self.env = root, redis_url, env
        self.marked_slow = marked_slow  # workers may start only in a test marked `slow`
        self.workers: list[subprocess.Popen] = []
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)

    def cli(
        self, *args: str, timeout: float = 120, check: bool = False
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [sys.executable, "-m", "autotrain.cli", *args],
            env=self.env, cwd=self.root, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if check and proc.returncode != 0:
            pytest.fail(
                f"autotrain {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def submit(self, dataset: Path, *extra: str, profile: str = "TinyTest") -> str:
        """`pipeline run` for a dataset; returns the job id it printed."""
        run = self.cli(
            "pipeline",
            "run",
            "--dataset-path",
            str(dataset),
            "--profile",
            profile,
            *extra,
            check=True,
        )
        return job_id_in(run.stdout)

    def start_worker(self, host: str, *extra: str) -> subprocess.Popen:
        self._must_be_slow()
        log = open(self.root / f"worker-{host}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "autotrain.cli", "worker", "--cpu", "--host", host, *extra],
            env=self.env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.workers.append(proc)
        wait_for(
            lambda: self.redis.exists(keys.worker(f"cpu@{host}")),
            60,
            f"worker cpu@{host} to start",
        )
        return proc

    def start_gpu_host(self, host: str, sizes: list[float]) -> None:
        """A stand-in GPU host (tests/standins/gpu_host.py) with GPUs of `sizes` GiB; returns
        once its GPU workers reported their memory in their heartbeat."""
        self._must_be_slow()
        log = open(self.root / f"{host}.log", "ab")  # noqa: SIM115
        script = Path(__file__).parent / "standins" / "gpu_host.py"
        proc = subprocess.Popen(
            [sys.executable, str(script), host, str(len(sizes)), ",".join(map(str, sizes))],
            env=self.env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.workers.append(proc)
        names = [f"gpu{i}@{host}" for i in range(len(sizes))] + [f"prep@{host}"]

        def announced() -> bool:
            raw = [self.redis.get(keys.worker(n)) for n in names]
            return all(raw) and all("memory_total" in json.loads(r) for r in raw[:-1])

        wait_for(announced, 60, f"the workers of {host} to report their GPUs")

    def _must_be_slow(self) -> None:
        """`pytest -m "not slow"` is the quick subset: a test that runs workers is not quick."""
        if not self.marked_slow:
            pytest.fail("this test starts workers: mark it @pytest.mark.slow")

    def worker_pids(self, name: str) -> list[int]:
        """PIDs of this workspace's Celery worker processes named `name` (main process first)."""
        return pids_of(f"--hostname {name}", self.root)

    def short_profile(self, name: str, steps: int) -> str:
        """A Tiny profile that trains `steps` steps (saving every half): quick queue tests."""
        half = max(1, steps // 2)
        return write_tiny_profile(self.root, name, max_train_steps=steps, save_every_n_steps=half,
                                  sample_every_n_steps=steps, save_last_n_steps_state=half)  # fmt: skip

    def store(self):
        from autotrain.jobs.store import JobStore

        return JobStore(self.redis)

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def cluster(tmp_path, redis_server, request) -> Iterator[Cluster]:
    """A fresh workspace on the shared test Redis (flushed), with `TinyTest`: Tiny, 60 steps.

    Set `cluster.env` entries before starting workers: they inherit it.
    """
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    root = tmp_path / "ws"
    root.mkdir()
    write_tiny_profile(root, "TinyTest", max_train_steps=60, save_every_n_steps=20,
                       sample_every_n_steps=30)  # fmt: skip
    env = {
        **os.environ,
        "AUTOTRAIN_WORKSPACE": str(root),
        "AUTOTRAIN_REDIS_URL": redis_server,
        "AUTOTRAIN_LEASE_SECONDS": "3",
        "AUTOTRAIN_MIN_FREE_DISK_GB": "0",
        "AUTOTRAIN_CANCEL_GRACE_SECONDS": "2",
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "200",  # tables and messages as wide as in a log, whatever runs the tests
    }
    c = Cluster(root, redis_server, env, request.node.get_closest_marker("slow") is not None)
    yield c
    c.stop()


@pytest.fixture
def kohya_settings(tmp_path):
    """Settings of a workspace in tmp_path whose kohya backend runs the sd-scripts stand-in
    (tests/standins/sd_scripts/), with placeholder model files."""
    from tests.helpers_kohya import standin_settings

    return standin_settings(tmp_path)


def pids_of(pattern: str, workspace: Path) -> list[int]:
    """PIDs whose command line matches `pattern` and that work for `workspace` (by their
    AUTOTRAIN_WORKSPACE): tests running side by side never touch each other's processes."""
    out = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True).stdout
    mine = f"AUTOTRAIN_WORKSPACE={workspace}".encode()
    found = []
    for pid in map(int, out.split()):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if mine in environ:
            found.append(pid)
    return found


def job_id_in(output: str) -> str:
    """The job id (YYYYMMDD-HHMMSS-xxxxxx) a command printed."""
    for word in output.split():
        if word.count("-") == 2 and word[:8].isdigit():
            return word
    pytest.fail(f"no job id in output:\n{output}")


def copy_example(dest: Path, name: str = "tiny_shapes") -> Path:
    target = dest / name
    shutil.copytree(EXAMPLE_DATASET, target)
    return target


# The real S3 server (SeaweedFS) of the tests that use a store: a fixture defined beside.
from tests.s3_server import s3_server  # noqa: E402,F401
