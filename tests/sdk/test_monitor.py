"""The progress lines users read, in the exact formats DESIGN.md gives."""

from __future__ import annotations

from dataclasses import replace

from autotrain.formatting import format_eta
from autotrain.jobs.job import Job, JobState
from autotrain.jobs.owners import PARKED, queue_owner, worker_owner
from autotrain.monitor import batch_line, job_line
from autotrain.spec import JobSpec


def job(name: str, state: JobState, step: int = 0, total: int | None = None, **fields) -> Job:
    spec = JobSpec(dataset_path=f"/data/{name}", name=name, profile="FluxLORA")
    return Job(id=f"id-{name}", spec=spec, state=state, step=step, total=total, **fields)


def test_single_job_line():
    training = job("cat", JobState.TRAINING, 1870, 2000, loss=0.0234, eta_seconds=323)
    assert job_line(training, queue_depth=0) == (
        "[============================--] 93.5% (1870/2000) | ETA: 00:05:23 | Loss: 0.0234 | Queue: 0"
    )


def test_single_job_line_before_training_says_the_state():
    assert job_line(job("cat", JobState.QUEUED)).endswith("| Queue: 0 | queued")
    validating = job("cat", JobState.VALIDATING, files=[640, 1200])
    assert job_line(validating).endswith("| Queue: 0 | validating 640/1200 files")


def test_batch_line_with_queue_next_and_overall_progress():
    jobs = [
        job("dataset_a", JobState.SUCCEEDED, 500, 500),
        job("dataset_b", JobState.FAILED),
        job("dataset_character", JobState.TRAINING, 350, 500, loss=0.0156, eta_seconds=615),
        job("dataset_style", JobState.WAITING_GPU),
        job("dataset_z", JobState.QUEUED),
    ]
    assert batch_line(jobs[2], jobs) == (
        "🟢 dataset_character: [==============------] 70.0% (350/500) | ETA: 00:10:15 | "
        "Loss: 0.0156 | Queue: 2 (next: dataset_style) | Progress: 2/5 (40.0%)"
    )


def test_eta_with_hours_and_unknown():
    assert format_eta(3 * 3600 + 61) == "03:01:01"
    assert format_eta(None) == "--:--:--"


def test_a_waiting_job_says_why_and_how_to_fix_it():
    from autotrain.fleet.registry import WorkerRecord
    from autotrain.fleet.waiting import why_waiting

    queued = job("cat", JobState.QUEUED, owner=queue_owner("t1"), next_task={"queue": "gpu"})
    assert "no live worker is connected" in why_waiting(queued, [])
    assert "autotrain worker" in why_waiting(queued, [])
    prep_only = [WorkerRecord(name="prep@a", queues=["prep.ongoing", "prep"])]
    assert "no live worker takes queue 'gpu'" in why_waiting(queued, prep_only)
    busy = [
        WorkerRecord(name="gpu0@a", queues=["gpu.a.0", "gpu"], jobs=["20261202-000000-aaaaaa"])
    ]  # as registry.live_workers reads them
    assert "busy: gpu0@a (job 20261202-000000-aaaaaa)" in why_waiting(queued, busy)
    assert why_waiting(queued, [replace(busy[0], jobs=[])]) is None, "an idle worker"
    packed = [replace(busy[0], slots=2)]
    assert why_waiting(queued, packed) is None, "a worker with a free slot will take it"
    parked = job("dog", JobState.WAITING_GPU, owner=PARKED)
    assert "slot of its batch (--max-concurrent 2)" in why_waiting(parked, busy, batch_limit=2)
    held = job(
        "owl", JobState.WAITING_GPU, owner=worker_owner("gpu1@a/x"), waiting_for="waits for GPU 1"
    )
    assert why_waiting(held, busy) == "waits for GPU 1"
    assert why_waiting(job("done", JobState.SUCCEEDED, waiting_for="stale"), busy) is None
