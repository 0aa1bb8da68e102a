"""The first ten minutes, as a new user meets them: README command 1 and the seed's Python snippet
in a fresh workspace with nothing started by hand (each starts the embedded cluster itself), and a
wait that never advises starting what is already starting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from autotrain.fleet.registry import announce_starting
from autotrain.fleet.waiting import NO_WORKER, waiting_reasons
from autotrain.jobs.owners import queue_owner
from autotrain.jobs.store import JobStore
from autotrain.spec import JobSpec
from tests.conftest import copy_example, free_port, redis_answers, redis_server_command, wait_for

SNIPPET = """
from autotrain_sdk.pipeline import run_pipeline
success = run_pipeline(dataset_path="{dataset}", profile="Tiny", monitor=True, min_images=10)
assert success, success
print("trained:", success.job.result["weights"])
"""


def _fresh_env(workspace: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOTRAIN_")}
    env.update(AUTOTRAIN_WORKSPACE=str(workspace), AUTOTRAIN_MIN_FREE_DISK_GB="0")
    return env


def _in_a_fresh_workspace(tmp_path: Path, *argv: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run `argv` (`{dataset}` is the example dataset's copy) in a new workspace with no Redis
    configured and nothing started, then stop whatever it started."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    env = _fresh_env(workspace)
    dataset = str(copy_example(tmp_path))
    try:
        run = subprocess.run([a.replace("{dataset}", dataset) for a in argv], env=env,
                             cwd=workspace, capture_output=True, text=True, timeout=600)  # fmt: skip
    finally:
        subprocess.run([sys.executable, "-m", "autotrain.cli", "down", "--force"], env=env,
                       cwd=workspace, capture_output=True, timeout=120)  # fmt: skip
    return run, workspace


@pytest.mark.slow
def test_readme_command_one_starts_what_it_needs_and_ends_with_the_samples(tmp_path):
    run, workspace = _in_a_fresh_workspace(
        tmp_path, sys.executable, "-m", "autotrain.cli", "pipeline", "run", "--dataset-path",
        "{dataset}", "--profile", "Tiny", "--monitor",
    )  # fmt: skip
    said = run.stdout + run.stderr
    assert run.returncode == 0, said[-3000:]
    assert "Starting the local cluster" in said
    assert "no live worker" not in said  # it is starting them itself
    sheet = workspace / "output" / "tiny_shapes" / "samples.png"
    assert sheet.is_file() and str(sheet) in said.replace("\n", "")


@pytest.mark.slow
def test_the_seed_snippet_runs_verbatim_in_a_fresh_workspace(tmp_path):
    run, workspace = _in_a_fresh_workspace(tmp_path, sys.executable, "-c", SNIPPET)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert "trained:" in run.stdout
    # it started the workspace's own embedded Redis (whose password file outlives `down`)
    assert (workspace / ".autotrain" / "redis.password").is_file()


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test alone: no worker of another test heartbeats into it."""
    port = free_port()
    proc = subprocess.Popen(redis_server_command(port, tmp_path), stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port, decode_responses=True)
    wait_for(lambda: redis_answers(client), 10, "redis-server to answer")
    yield client
    proc.terminate()
    proc.wait(10)


def test_a_wait_says_workers_are_starting_while_a_host_starts_them(private_redis):
    client = private_redis
    store = JobStore(client)
    spec = JobSpec(dataset_path=Path("/data/cat"), name="cat", profile="Tiny")
    job = store.create(spec, owner=queue_owner("m-start"), phase="validate",
                       next_task={"id": "m-start", "queue": "prep"})  # fmt: skip
    assert waiting_reasons(client, [job])[job.id] == NO_WORKER
    announce_starting(client, "h1", ["cpu@h1", "prep@h1"])
    assert waiting_reasons(client, [job])[job.id] == "starting 2 workers (cpu@h1, prep@h1)"
    announce_starting(client, "h1", ["cpu@h1"], seconds=-1)  # long past: no longer starting
    assert waiting_reasons(client, [job])[job.id] == NO_WORKER
