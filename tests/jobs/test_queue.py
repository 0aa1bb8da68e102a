"""The queue end to end: real redis-server, real `autotrain worker` processes, the real Tiny trainer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotrain.jobs import keys
from autotrain.jobs.job import JobState
from tests.conftest import (
    EXAMPLE_DATASET,
    copy_example,
    free_port,
    job_id_in,
    pids_of,
    redis_answers,
    redis_server_command,
    wait_for,
)

pytestmark = pytest.mark.slow


def _trainer_pids(workspace: Path) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-f", "autotrain.tiny_trainer"], capture_output=True, text=True
    ).stdout
    pids = []
    for pid in map(int, out.split()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(workspace).encode() in cmdline:
            pids.append(pid)
    return pids


def test_single_run_trains_and_reports(cluster, tmp_path):
    cluster.start_worker("h1")
    dataset = copy_example(tmp_path)
    run = cluster.cli(
        "pipeline",
        "run",
        "--dataset-path",
        str(dataset),
        "--profile",
        "TinyTest",
        "--monitor",
        check=True,
    )
    assert "Succeeded" in run.stdout
    job = cluster.store().get(job_id_in(run.stdout))
    assert job.state == JobState.SUCCEEDED
    assert job.step == job.total and job.total > 0
    manifest = json.loads((cluster.root / "output" / "tiny_shapes" / "run.json").read_text())
    assert manifest["result"] == "succeeded"
    weights = Path(manifest["weights"][0]["path"])
    assert weights.suffix == ".safetensors" and weights.stat().st_size > 0
    assert len(manifest["dataset"]["files"]) >= 12
    assert (
        manifest["trainer"]["command"][0].endswith("python")
        or "python" in manifest["trainer"]["command"][0]
    )
    assert (cluster.root / "output" / "tiny_shapes" / "log" / "loss.png").stat().st_size > 0
    assert "TRAINING" not in run.stdout  # the bar, not an internal state name
    assert "(" in run.stdout and "/" in run.stdout and "Loss:" in run.stdout


def test_batch_respects_max_concurrent_and_isolates_a_broken_dataset(cluster, tmp_path):
    cluster.start_worker("h1")
    cluster.start_worker("h2", "--no-prep")
    root = tmp_path / "datasets"
    root.mkdir()
    copy_example(root, "alpha")
    copy_example(root, "beta")
    broken = root / "gamma"  # truncated PNGs: the header reads (so it is queued), decoding fails
    broken.mkdir()
    sample = next(EXAMPLE_DATASET.glob("*.png")).read_bytes()
    for i in range(3):
        (broken / f"img{i}.png").write_bytes(sample[: len(sample) // 2])
    run = cluster.cli("pipeline", "batch", "--datasets-dir", str(root), "--profile", "TinyTest",
                      "--max-concurrent", "1", "--monitor", timeout=300)  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr  # one dataset failed
    jobs = {j.name: j for j in cluster.store().list()}
    assert jobs["alpha"].state == JobState.SUCCEEDED
    assert jobs["beta"].state == JobState.SUCCEEDED
    assert jobs["gamma"].state == JobState.FAILED
    assert "img0.png" in jobs["gamma"].error or "No usable images" in jobs["gamma"].error
    spans = sorted(
        (j.training_started_at, j.training_finished_at) for j in (jobs["alpha"], jobs["beta"])
    )
    assert spans[0][1] <= spans[1][0], f"two jobs trained at once: {spans}"
    assert {jobs["alpha"].train_worker, jobs["beta"].train_worker} <= {"cpu@h1", "cpu@h2"}
    assert "Progress: 3/3 (100.0%)" in run.stdout
    summary = run.stdout.split("Progress: 3/3 (100.0%)")[-1]
    assert "queued" in summary and "training" in summary
    # the error in full on one line of its own, below the table, never cut at a width
    assert f"gamma ({jobs['gamma'].id}) failed: {jobs['gamma'].error}" in summary


def test_cancel_queued_job_never_starts(cluster, tmp_path):
    dataset = copy_example(tmp_path)
    job_id = cluster.submit(dataset)
    cancel = cluster.cli("train", "cancel", "--job", job_id, check=True)
    assert "cancelled" in cancel.stdout
    assert cluster.cli("train", "cancel", "--job", job_id).returncode == 0  # twice is fine
    cluster.start_worker("h1")
    time.sleep(3)
    job = cluster.store().get(job_id)
    assert job.state == JobState.CANCELLED
    assert job.training_started_at is None
    assert not (cluster.root / "output" / "tiny_shapes" / "log" / "trainer.log").exists()


def test_cancel_running_job_stops_the_trainer(cluster, tmp_path):
    cluster.env["AUTOTRAIN_TINY_STEP_DELAY"] = "0.2"
    cluster.start_worker("h1")
    dataset = copy_example(tmp_path)
    job_id = cluster.submit(dataset)
    store = cluster.store()
    wait_for(lambda: store.get(job_id).step > 2, 60, "training to make progress")
    assert _trainer_pids(cluster.root)
    cancelled_at = time.monotonic()
    cluster.cli("train", "cancel", "--job", job_id, check=True)
    wait_for(lambda: store.get(job_id).state == JobState.CANCELLED, 15, "the job to be cancelled")
    wait_for(lambda: not _trainer_pids(cluster.root), 10, "the trainer process to exit")
    assert time.monotonic() - cancelled_at < 10
    assert not cluster.redis.exists(keys.worker_jobs("cpu@h1"))  # the worker is free again


def test_monitor_attached_mid_run_sees_earlier_steps(cluster, tmp_path):
    cluster.env["AUTOTRAIN_TINY_STEP_DELAY"] = "0.05"
    cluster.start_worker("h1")
    dataset = copy_example(tmp_path)
    job_id = cluster.submit(dataset)
    store = cluster.store()
    wait_for(lambda: store.get(job_id).step >= 10, 60, "ten steps")
    events = [e for _, e in store.read_events(job_id) if e["kind"] == "step"]
    monitor = cluster.cli("train", "monitor", "--job", job_id, check=True, timeout=180)
    assert "Succeeded" in monitor.stdout
    steps = sorted({e["step"] for e in events})
    assert steps[0] <= 5, "the stream keeps the history from the first steps"
    replayed = [e for _, e in store.read_events(job_id) if e["kind"] == "step"]
    assert replayed[0]["step"] == events[0]["step"]


def test_worker_killed_mid_training_is_reaped_and_resumes(cluster, tmp_path):
    cluster.env["AUTOTRAIN_TINY_STEP_DELAY"] = "0.1"
    cluster.start_worker("h1")
    dataset = copy_example(tmp_path)
    job_id = cluster.submit(dataset)
    store = cluster.store()
    model_dir = cluster.root / "output" / "tiny_shapes" / "model"
    wait_for(lambda: list(model_dir.glob("*-state")), 120, "a saved training state")
    saved_step = store.get(job_id).step
    pids = cluster.worker_pids("cpu@h1")
    assert pids, "the worker's processes were not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: not _trainer_pids(cluster.root), 10, "the orphaned trainer to die with its worker"
    )
    # The supervisor restarts the worker; the reaper re-queues the job once its lease expires.
    wait_for(
        lambda: store.get(job_id).state == JobState.SUCCEEDED,
        180,
        "the job to finish after the crash",
    )
    job = store.get(job_id)
    assert job.attempt == 2
    run_info = store.get_data(job_id, "run")
    assert run_info["resumed_from"] and "-state" in run_info["resumed_from"]
    log = (cluster.root / "output" / "tiny_shapes" / "log" / "trainer.log").read_text(
        errors="replace"
    )
    assert "--resume" in log
    assert saved_step > 0
    manifest = json.loads((cluster.root / "output" / "tiny_shapes" / "run.json").read_text())
    logged = manifest["trainer"]["attempts_log"]
    assert [a["attempt"] for a in logged] == [1, 2]  # the attempt whose worker died too
    assert logged[0]["cause"] == "worker lost" and logged[0]["worker"] == "cpu@h1"
    assert logged[0]["last_step"] >= saved_step and logged[0]["started_at"]


def test_guard_killed_mid_training_is_not_the_trainers_failure(cluster, tmp_path):
    """A stray `kill -9` of the guard: its worker kills the trainer at once and the job goes on
    as the next attempt, from its newest saved state, instead of failing with the guard's -9."""
    cluster.env["AUTOTRAIN_TINY_STEP_DELAY"] = "0.1"
    cluster.start_worker("h1")
    dataset = copy_example(tmp_path)
    job_id = cluster.submit(dataset)
    store = cluster.store()
    model_dir = cluster.root / "output" / "tiny_shapes" / "model"
    wait_for(lambda: list(model_dir.glob("*-state")), 120, "a saved training state")
    guards = pids_of("autotrain.trainers.guard", cluster.root)
    assert len(guards) == 1, guards
    trainers = set(_trainer_pids(cluster.root))
    assert trainers
    os.kill(guards[0], signal.SIGKILL)
    killed_at = time.monotonic()
    # these processes, not the next attempt's, which may start within the same seconds
    wait_for(lambda: not trainers & set(_trainer_pids(cluster.root)), 5,
             "the unguarded trainer to be killed")  # fmt: skip
    assert time.monotonic() - killed_at < 5
    wait_for(lambda: store.get(job_id).is_final, 180, "the job to end")
    job = store.get(job_id)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.attempt == 2
    run_info = store.get_data(job_id, "run")
    assert run_info["resumed_from"] and "-state" in run_info["resumed_from"]
    assert [a["attempt"] for a in run_info["attempts_log"]] == [1, 2]
    assert run_info["attempts_log"][0]["cause"] == "guard lost"
    assert any(e.get("event") == "guard lost" for e in store.history(job_id))


@pytest.mark.parametrize(
    ("kill_at_step", "down_seconds"), [(5, 2), (57, 4)], ids=["mid-training", "as-it-ends"]
)
def test_redis_restart_mid_training_loses_nothing(cluster, tmp_path, kill_at_step, down_seconds):
    """Redis killed (SIGKILL) while a job trains, then restarted on its data: the job finishes.

    Killed as the trainer ends and down for longer than the lease (3 s here), finishing the
    phase waits for Redis: the finished training is recorded, not trained again."""
    data = tmp_path / "redis-data"
    data.mkdir()
    port = free_port()
    argv = redis_server_command(port, data, "--appendonly", "yes", "--appendfsync", "always")
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    cluster.env["AUTOTRAIN_REDIS_URL"] = url
    cluster.env["AUTOTRAIN_TINY_STEP_DELAY"] = "0.1"
    cluster.redis = __import__("redis").Redis.from_url(url, decode_responses=True)
    wait_for(lambda: redis_answers(cluster.redis), 10, "the private redis-server")
    try:
        cluster.start_worker("h1")
        dataset = copy_example(tmp_path)
        job_id = cluster.submit(dataset)
        store = cluster.store()
        wait_for(lambda: store.get(job_id).step >= kill_at_step, 60, "training to get there")
        server.kill()
        server.wait(10)
        time.sleep(down_seconds)
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        wait_for(lambda: redis_answers(cluster.redis), 10, "redis-server to come back")
        wait_for(lambda: store.get(job_id).is_final, 120, "the job to end after the restart")
        job = store.get(job_id)
        assert job.state == JobState.SUCCEEDED, job.error
        assert job.attempt == 1, "the trainer went on through the restart; nothing was retried"
        assert job.step == job.total
        assert (cluster.root / "output" / "tiny_shapes" / "run.json").is_file()
        log = (cluster.root / "output" / "tiny_shapes" / "log" / "trainer.log").read_text()
        assert log.count("\n$ ") == 1, "the trainer ran once"
    finally:
        cluster.stop()
        server.kill()


def test_pinned_jobs_hold_every_gpu_they_use(cluster, tmp_path):
    """--gpu-ids "0,1" trains on GPU 0's worker holding both GPUs; a job pinned to GPU 1 waits."""
    cluster.env["AUTOTRAIN_TINY_STEP_DELAY"] = "0.1"
    log = open(cluster.root / "gpu-host.log", "ab")  # noqa: SIM115
    host = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent.parent / "standins" / "gpu_host.py"), "g1", "2"],
        env=cluster.env, cwd=cluster.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    cluster.workers.append(host)
    for name in ("gpu0@g1", "gpu1@g1", "prep@g1"):
        wait_for(lambda n=name: cluster.redis.exists(keys.worker(n)), 60, f"{name} to start")
    both = copy_example(tmp_path, "both")
    one = copy_example(tmp_path, "one")
    first_id = cluster.submit(both, "--gpu-ids", "0,1", "--host", "g1")
    store = cluster.store()
    wait_for(lambda: store.get(first_id).state == JobState.TRAINING, 60, "the two-GPU job to train")
    second_id = cluster.submit(one, "--gpu-ids", "1", "--host", "g1")
    # `train list` says why the second job waits, and for whom
    held = f"{second_id} one waits for GPU 1 of g1, held by job {first_id}"
    wait_for(lambda: held in cluster.cli("train", "list").stdout, 30, "train list to say why")
    wait_for(
        lambda: store.get(second_id).is_final and store.get(first_id).is_final,
        120,
        "both jobs to end",
    )
    a, b = store.get(first_id), store.get(second_id)
    assert a.state == b.state == JobState.SUCCEEDED, (a.error, b.error)
    assert (a.train_worker, a.gpu) == ("gpu0@g1", "0,1")
    assert (b.train_worker, b.gpu) == ("gpu1@g1", "1")
    steps_a, steps_b = (
        _step_times(cluster.root / "output" / n / "log" / "progress.jsonl") for n in ("both", "one")
    )
    assert steps_a[-1] < steps_b[0], "the job pinned to GPU 1 trained while the two-GPU job held it"


def _step_times(progress_file: Path) -> list[float]:
    events = [json.loads(line) for line in progress_file.read_text().splitlines()]
    return [e["ts"] for e in events if e["kind"] == "step"]
