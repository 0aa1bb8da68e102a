"""A fleet whose hosts share no folder, only an S3 store (SeaweedFS) and Redis: two stand-in
hosts with their own workspaces train a batch, one is killed mid-training and one is told to
stop (SIGTERM), and their jobs go on from the store on the other; a third folder pulls it all."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import pytest

from autotrain.jobs.job import JobState
from autotrain.storage.layout import job_prefix
from tests.conftest import Cluster, copy_example, pids_of, wait_for, write_tiny_profile

# The batch's jobs are short; the jobs interrupted mid-training long enough that a state saved
# at step 20 is in the store (settled, uploaded, marked: a few seconds) well before they end.
PROFILE, STEPS = "FleetTiny", 60
LONG, LONG_STEPS = "FleetLong", 200


@pytest.fixture
def fleet(cluster, s3_server, tmp_path):
    """Workspaces that share nothing: host-a, host-b (workers), the submitter and a reader."""
    url = s3_server.fresh_url()
    places: dict[str, Cluster] = {}
    for name in ("host-a", "host-b", "submitter", "reader"):
        root = tmp_path / name
        root.mkdir()
        write_tiny_profile(root, LONG, max_train_steps=LONG_STEPS, save_every_n_steps=20,
                           sample_every_n_steps=100, save_last_n_steps_state=40)  # fmt: skip
        write_tiny_profile(root, PROFILE, max_train_steps=STEPS, save_every_n_steps=20,
                           sample_every_n_steps=50, save_last_n_steps_state=40)  # fmt: skip
        env = {**cluster.env, **s3_server.env, "AUTOTRAIN_WORKSPACE": str(root),
               "AUTOTRAIN_STORAGE_URL": url, "AUTOTRAIN_TINY_STEP_DELAY": "0.05"}  # fmt: skip
        places[name] = Cluster(root, cluster.redis_url, env)
    yield places, s3_server.client(), url
    for place in places.values():
        place.stop()


def _job(place: Cluster, job_id: str):
    return place.store().get(job_id)


def _state_in_store(client, url: str, job_id: str) -> bool:
    """Whether a complete saved state of the job (its marker) is in the store."""
    bucket, _, prefix = url[len("s3://") :].partition("/")
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{job_prefix(job_id)}")
    return any(o["Key"].endswith("-state/.complete") for o in listed.get("Contents", []))


def _training_with_a_state(place, client, url, job_id) -> str | None:
    job = _job(place, job_id)
    if job.state == JobState.TRAINING and _state_in_store(client, url, job_id):
        return job.host
    return None


def _pulled_run(reader: Cluster, job_id: str) -> dict:
    """`autotrain pull --job` into the reader's folder; its run.json, weights checked."""
    reader.cli("pull", "--job", job_id, check=True)
    name = _job(reader, job_id).name
    output = reader.root / "output" / name
    run = json.loads((output / "run.json").read_text())
    weights = output / "model" / f"{name}.safetensors"
    assert weights.is_file() and (output / "samples.png").is_file()
    recorded = run["weights"][0]
    if "sha256" in recorded:
        assert hashlib.sha256(weights.read_bytes()).hexdigest() == recorded["sha256"]
    assert run["steps"]["done"] == (STEPS if run["profile"] == PROFILE else LONG_STEPS)
    return run


def _read_from_elsewhere(reader: Cluster, job_id: str, monkeypatch) -> None:
    """A host that never ran the job reads its log (`train logs`), and the dashboard's job page
    shows its log tail, loss curve and samples, all from the store; its result names the store."""
    logs = reader.cli("train", "logs", "--job", job_id, check=True).stdout
    assert "running training" in logs and "$ " in logs  # the trainer's own output
    from autotrain.dashboard.views import job_page
    from autotrain.settings import Settings

    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, reader.env[key])
    settings = Settings(workspace=reader.root, redis_url=reader.redis_url,
                        storage_url=reader.env["AUTOTRAIN_STORAGE_URL"])  # fmt: skip
    page = job_page(settings, job_id)
    assert any("model saved." in line for line in page["log"])  # the log's tail, to its end
    assert page["gallery"] and len(page["points"]) > 10
    result = _job(reader, job_id).result
    assert result["weights"].startswith(
        f"{reader.env['AUTOTRAIN_STORAGE_URL']}/{job_prefix(job_id)}"
    )
    assert result["pull"] == f"autotrain pull --job {job_id}"


@pytest.mark.slow
def test_a_fleet_that_shares_only_a_store(fleet, tmp_path, monkeypatch):
    places, client, url = fleet
    hosts = {"host-a": places["host-a"], "host-b": places["host-b"]}
    submitter, reader = places["submitter"], places["reader"]
    for name, place in hosts.items():
        place.start_worker(name)
    datasets = tmp_path / "datasets"
    for name in ("cats", "dogs"):
        copy_example(datasets, name)

    # A batch trains, one job per host, every dataset uploaded once by the submitter.
    batch = submitter.cli("pipeline", "batch", "--datasets-dir", str(datasets), "--profile",
                          PROFILE, "--max-concurrent", "2", check=True)  # fmt: skip
    batch_jobs = [w for w in batch.stdout.split() if w.count("-") == 2 and w[:8].isdigit()]
    assert len(batch_jobs) == 2
    wait_for(lambda: all(_job(submitter, j).is_final for j in batch_jobs), 240, "the batch")
    assert [_job(submitter, j).state for j in batch_jobs] == [JobState.SUCCEEDED] * 2
    assert not (submitter.root / "output" / "cats" / "model" / "cats.safetensors").exists()

    # A host killed mid-training: its job resumes on the other from the newest state in the store.
    killed_job = submitter.submit(copy_example(tmp_path / "k", "birds"), profile=LONG)
    victim = wait_for(lambda: _training_with_a_state(submitter, client, url, killed_job), 120,
                      "the job to train with a saved state in the store")  # fmt: skip
    for pid in pids_of("", hosts[victim].root):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _job(submitter, killed_job).is_final, 240, "the killed host's job to end")
    killed = _job(submitter, killed_job)
    assert killed.state == JobState.SUCCEEDED, killed.error
    events = [e["event"] for e in submitter.store().history(killed_job)]
    assert "worker lost" in events

    # SIGTERM: the host gives its running job back at once, as the next attempt.
    hosts[victim].start_worker(victim)
    moved_job = submitter.submit(copy_example(tmp_path / "m", "fish"), profile=LONG)
    leaving = wait_for(lambda: _training_with_a_state(submitter, client, url, moved_job), 120,
                       "the second job to train with a saved state in the store")  # fmt: skip
    supervisor = next(p for p in hosts[leaving].workers if p.poll() is None)
    supervisor.send_signal(signal.SIGTERM)
    wait_for(lambda: "preempted" in [e["event"] for e in submitter.store().history(moved_job)],
             30, "the job to be given back")  # fmt: skip
    assert supervisor.wait(60) == 0
    wait_for(lambda: _job(submitter, moved_job).is_final, 240, "the given-back job to end")
    moved = _job(submitter, moved_job)
    assert moved.state == JobState.SUCCEEDED, moved.error
    assert moved.host != leaving

    # A third folder reads logs and samples, then pulls complete outputs; each job trained to
    # the end once, resumes counted as attempts.
    _read_from_elsewhere(reader, killed_job, monkeypatch)
    for job_id in batch_jobs:
        assert _pulled_run(reader, job_id)["trainer"]["attempts"] == 1
    for job_id, event in ((killed_job, "worker lost"), (moved_job, "preempted")):
        assert event in [e["event"] for e in submitter.store().history(job_id)]
        run = _pulled_run(reader, job_id)
        assert run["trainer"]["attempts"] == 2
        first, second = run["trainer"]["attempts_log"][-2:]
        assert second["resumed_from"], f"attempt 2 of {job_id} did not resume: {second}"
        assert second["host"] != first["host"]
        assert run["storage"]["total"]["uploaded_files"] > 0
    pulled = reader.cli("pull", "--batch", _job(submitter, batch_jobs[0]).spec.batch_id, check=True)
    assert pulled.stdout.count("files new or changed") == 2
    assert Path(reader.root / "output" / "dogs" / "run.json").is_file()

    # `worker --drain` from another folder stops a host's workers, as SIGTERM does there.
    staying = next(p for p in hosts[moved.host].workers if p.poll() is None)
    drained = submitter.cli("worker", "--drain", "--host", moved.host, check=True).stdout
    assert f"The workers of {moved.host} stopped." in drained
    assert staying.wait(30) == 0
