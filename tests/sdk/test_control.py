"""Steering jobs after they were queued, through real Redis and real workers: retry and resume,
`train show`, and the history of attempts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from autotrain.jobs import keys
from autotrain.jobs.job import JobState
from autotrain.jobs.owners import is_queue_owner
from tests.conftest import copy_example, wait_for

pytestmark = pytest.mark.slow


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


def test_a_batch_is_one_unit_to_watch_cancel_and_retry(cluster, tmp_path):
    cluster.env["AUTOTRAIN_TINY_STEP_DELAY"] = "0.1"
    cluster.start_worker("h1")
    sets = tmp_path / "sets"
    copy_example(sets, "alpha")
    copy_example(sets, "beta")
    quick = cluster.short_profile("TinyQuick", 40)
    queued = cluster.cli("pipeline", "batch", "--datasets-dir", str(sets), "--profile", quick,
                         "--name", "night", check=True)  # fmt: skip
    batch_id = next(w for w in queued.stdout.split() if w.startswith("b2"))
    assert "(night)" in queued.stdout
    assert f"autotrain train monitor --batch {batch_id}" in queued.stdout
    store = cluster.store()
    wait_for(lambda: any(j.step > 0 for j in store.list(batch_id=batch_id)), 60, "training")

    trained = next(j for j in store.list(batch_id=batch_id) if j.step > 0)  # one at a time
    cluster.cli("train", "cancel", "--batch", batch_id, check=True)
    wait_for(lambda: all(j.state == JobState.CANCELLED for j in store.list(batch_id=batch_id)),
             30, "every job of the batch to be cancelled")  # fmt: skip
    listed = json.loads(cluster.cli("train", "list", "--batch", batch_id, "--json").stdout)
    assert sorted(r["name"] for r in listed) == ["alpha", "beta"]
    assert {r["state"] for r in listed} == {"cancelled"}

    nothing = cluster.cli("train", "retry", "--batch", batch_id, "--failed")
    assert "no job to retry" in nothing.stdout
    retried = cluster.cli("train", "retry", "--batch", batch_id, "--from-scratch", check=True)
    assert retried.stdout.count("from scratch") == 2

    monitor = subprocess.Popen(
        [sys.executable, "-m", "autotrain.cli", "train", "monitor", "--batch", batch_id],
        env=cluster.env, cwd=cluster.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(3)
    monitor.send_signal(signal.SIGINT)
    out, err = monitor.communicate(timeout=20)
    assert monitor.returncode == 130 and "Detached; the jobs go on" in out, out + err
    assert "alpha:" in out and "beta:" in out
    done = cluster.cli("train", "monitor", "--batch", batch_id, timeout=180)  # re-attached
    assert done.returncode == 0, done.stdout + done.stderr
    assert {j.state for j in store.list(batch_id=batch_id)} == {JobState.SUCCEEDED}
    # from scratch: the cancelled run's files stepped aside, and training began at step 1
    output = cluster.root / "output" / trained.name
    assert (output / "runs" / f"{trained.id}-attempt1" / "log" / "progress.jsonl").is_file()
    steps = [e["step"] for e in map(json.loads, (output / "log" / "progress.jsonl").read_text()
             .splitlines()) if e["kind"] == "step"]  # fmt: skip
    assert steps[0] <= 1 and steps == sorted(steps) and steps[-1] == 40


def test_prune_removes_old_records_and_keeps_the_outputs(cluster, tmp_path):
    cluster.start_worker("h1")
    job_id = cluster.submit(copy_example(tmp_path), profile=cluster.short_profile("TinyQuick", 4))
    store = cluster.store()
    wait_for(lambda: store.get(job_id).is_final, 120, "the job to end")
    weights = cluster.root / "output" / "tiny_shapes" / "model" / "tiny_shapes.safetensors"
    assert weights.is_file()
    status = json.loads(cluster.cli("status", "--json", check=True).stdout)
    assert status["redis"]["running"] and "gpu" in status["queues"]
    assert {"cpu@h1", "prep@h1"} <= {w["name"] for w in status["workers"]}
    run_json = json.loads((weights.parent.parent / "run.json").read_text())
    assert run_json["written_at"].endswith("+00:00")
    assert run_json["timings"]["training_started_at"].endswith("+00:00")
    kept = cluster.cli("train", "prune", "--older-than", "1h", check=True)
    assert "Removed 0 job(s)" in kept.stdout and store.get(job_id)
    assert cluster.cli("train", "prune", "--older-than", "1x").returncode == 2
    pruned = cluster.cli("train", "prune", "--older-than", "0s", check=True)
    assert f"{job_id}  tiny_shapes  succeeded" in pruned.stdout
    assert not [k for k in cluster.redis.keys(keys.job(job_id) + "*")]
    assert cluster.redis.zscore(keys.JOBS, job_id) is None
    assert "No jobs yet" in cluster.cli("train", "list").stdout
    assert weights.is_file(), "outputs stay unless --outputs"


def _positions(cluster) -> dict[str, str]:
    """{name: the `next` column} of `train list`."""
    rows = cluster.cli("train", "list", check=True).stdout.splitlines()
    header, shown = rows[0].split(), {}
    for row in rows[1:]:  # the table, then a line per waiting job: keep the table's
        if row[:8].isdigit():
            shown.setdefault(row.split()[1], row.split()[header.index("next")])
    return shown


def test_priorities_move_hold_and_release_decide_who_starts_next(cluster, tmp_path):
    cluster.env["AUTOTRAIN_TINY_STEP_DELAY"] = "0.2"  # busy trains while the queue is steered
    cluster.start_worker("h1")
    store = cluster.store()
    quick = cluster.short_profile("TinyQuick", 8)
    busy = cluster.submit(copy_example(tmp_path, "busy"))
    wait_for(lambda: store.get(busy).step > 0, 60, "the one GPU to be busy")
    ids = {name: cluster.submit(copy_example(tmp_path, name), "--priority", priority,
                                profile=quick)
           for name, priority in (("low1", "low"), ("high1", "high"), ("norm1", "normal"))}  # fmt: skip

    def all_waiting() -> bool:
        return all(store.get(i).phase == "train" and is_queue_owner(store.get(i).owner)
                   for i in ids.values())  # fmt: skip

    wait_for(all_waiting, 60, "the three jobs to wait for the GPU")
    assert _positions(cluster) == {"busy": "-", "high1": "1", "norm1": "2", "low1": "3"}
    cluster.cli("train", "move", "--job", ids["low1"], "--top", check=True)
    assert _positions(cluster) == {"busy": "-", "low1": "1", "high1": "2", "norm1": "3"}
    moved = store.get(ids["low1"])
    assert (moved.priority, moved.spec.priority) == (0, "high"), "one priority, not two"
    cluster.cli("train", "move", "--job", ids["norm1"], "--before", ids["high1"], check=True)
    assert _positions(cluster) == {"busy": "-", "low1": "1", "norm1": "2", "high1": "3"}
    cluster.cli("train", "hold", "--job", ids["high1"], check=True)
    assert _positions(cluster) == {"busy": "-", "low1": "1", "norm1": "2", "high1": "-"}
    listing = cluster.cli("train", "list").stdout.replace("\n", " ")
    assert f"held: it starts after `autotrain train release --job {ids['high1']}`" in listing

    cluster.cli("train", "cancel", "--job", busy, check=True)
    others = [ids[n] for n in ("low1", "norm1")]
    wait_for(lambda: all(store.get(i).is_final for i in others), 120, "the two to train")
    assert store.get(ids["high1"]).training_started_at is None, "a held job started"
    cluster.cli("train", "release", "--job", ids["high1"], check=True)
    wait_for(lambda: store.get(ids["high1"]).is_final, 60, "the released job to train")
    jobs = [store.get(ids[n]) for n in ("low1", "norm1", "high1")]
    assert all(j.state == JobState.SUCCEEDED for j in jobs), [j.error for j in jobs]
    started = [j.training_started_at for j in jobs]
    assert started == sorted(started), "jobs did not start in the order train list showed"
