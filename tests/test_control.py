"""Steering jobs after they were queued, through real Redis and real workers: retry and resume,
`train show`, and the history of attempts."""

from __future__ import annotations

import json

from autotrain.job import JobState
from tests.conftest import copy_example, wait_for


def test_a_cancelled_job_retried_resumes_from_its_saved_state_and_ends_at_100(cluster, tmp_path):
    cluster.env["AUTOTRAIN_TINY_STEP_DELAY"] = "0.1"
    cluster.start_worker("h1")
    job_id = cluster.submit(copy_example(tmp_path))
    store = cluster.store()
    model_dir = cluster.root / "output" / "tiny_shapes" / "model"
    wait_for(lambda: list(model_dir.glob("*-state")), 120, "a saved training state")
    cluster.cli("train", "cancel", "--job", job_id, check=True)
    wait_for(lambda: store.get(job_id).state == JobState.CANCELLED, 30, "the job to be cancelled")
    stopped_at = store.get(job_id).step
    assert 0 < stopped_at < 60

    refused = cluster.cli("train", "retry", "--job", job_id[:15] + "x")
    assert refused.returncode == 1 and "No job with id" in refused.stderr
    retry = cluster.cli("train", "retry", "--job", job_id, check=True)
    assert "again as attempt 2" in retry.stdout
    wait_for(lambda: store.get(job_id).is_final, 120, "the retried job to end")
    job = store.get(job_id)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.step == job.total == 60 and job.attempt == 2
    assert "-state" in store.get_data(job_id, "run")["resumed_from"]
    progress = cluster.root / "output" / "tiny_shapes" / "log" / "progress.jsonl"
    steps = [e["step"] for e in map(json.loads, progress.read_text().splitlines())
             if e["kind"] == "step"]  # fmt: skip
    restart = next(i for i in range(1, len(steps)) if steps[i] < steps[i - 1])
    assert steps[restart] > 1, "the second attempt started over instead of resuming"

    again = cluster.cli("train", "retry", "--job", job_id)
    assert again.returncode == 1 and "succeeded: there is nothing to retry" in again.stderr
    shown = json.loads(cluster.cli("train", "show", "--job", job_id, "--json", check=True).stdout)
    assert shown["state"] == "succeeded" and shown["step"] == 60 and shown["attempt"] == 2
    assert shown["created_at"].endswith("+00:00") and "T" in shown["finished_at"]
    events = [(e["attempt"], e["event"]) for e in shown["history"]]
    assert events == [(1, "cancelled"), (2, "retried"), (2, "succeeded")]
