"""One job, one output: a dataset name held by a job in progress is refused, an earlier run's
files are kept under runs/<job id>/, and a job id is never reused."""

from __future__ import annotations

import json

import pytest
import redis

from autotrain.errors import NameInUse
from autotrain.jobs import store as store_module
from autotrain.jobs.job import JobState
from autotrain.jobs.store import JobStore
from autotrain.spec import JobSpec
from autotrain.trainers.outputs import claim_output_dir
from autotrain.workspace import Workspace
from tests.conftest import copy_example, job_id_in


def test_a_name_held_by_a_job_in_progress_is_refused(cluster, tmp_path):
    dataset = copy_example(tmp_path)
    first = cluster.submit(dataset, "--dataset-name", "dup")
    again = cluster.cli("pipeline", "run", "--dataset-path", str(dataset), "--profile", "TinyTest",
                        "--dataset-name", "dup")  # fmt: skip
    assert again.returncode == 1
    assert f"in use by job {first}" in again.stderr and "--dataset-name" in again.stderr
    assert len(cluster.store().redis.zrange(JobStore.INDEX, 0, -1)) == 1  # nothing queued
    # another profile does not share the folder either
    other = cluster.cli("pipeline", "run", "--dataset-path", str(dataset), "--profile", "Tiny",
                        "--dataset-name", "dup")  # fmt: skip
    assert other.returncode == 1 and "in use" in other.stderr
    cluster.cli("train", "cancel", "--job", first, check=True)
    third = cluster.submit(dataset, "--dataset-name", "dup")  # a final job lets go of its name
    assert third != first


def test_the_batch_queues_the_others_and_names_the_one_refused(cluster, tmp_path):
    parent = tmp_path / "sets"
    for name in ("a", "b"):
        copy_example(parent, name)
    held = cluster.submit(parent / "a")
    batch = cluster.cli("pipeline", "batch", "--datasets-dir", str(parent), "--profile", "TinyTest")
    assert batch.returncode == 0, batch.stderr
    assert "1 jobs" in batch.stdout and f"in use by job {held}" in batch.stderr
    assert job_id_in(batch.stdout) != held


def test_an_earlier_runs_outputs_move_under_runs(tmp_path):
    ws = Workspace(tmp_path)
    assert claim_output_dir(ws, "cat", "job-1", "Tiny") is None
    model = ws.model_dir("cat")
    model.mkdir(parents=True)
    (model / "cat.safetensors").write_bytes(b"first run")
    (ws.output_dir("cat") / "run.json").write_text("{}")
    assert claim_output_dir(ws, "cat", "job-1", "Tiny") is None  # a retry of the same job keeps it
    assert (model / "cat.safetensors").is_file()
    note = claim_output_dir(ws, "cat", "job-2", "SDXL")
    archive = ws.output_dir("cat") / "runs" / "job-1"
    assert note and str(archive) in note
    assert (archive / "model" / "cat.safetensors").read_bytes() == b"first run"
    assert (archive / "run.json").is_file()
    owner = json.loads((ws.output_dir("cat") / "job.json").read_text())
    assert owner["job"] == "job-2" and owner["profile"] == "SDXL"
    assert not (model / "cat.safetensors").exists()


def test_a_colliding_job_id_gets_a_new_one(redis_server, monkeypatch, tmp_path):
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    client.flushall()
    store = JobStore(client)
    ids = iter(["20261201-000000-aaaaaa", "20261201-000000-aaaaaa", "20261201-000000-bbbbbb"])
    real = store_module._new_job_id
    monkeypatch.setattr(store_module, "_new_job_id", lambda: next(ids, None) or real())
    one = store.create(JobSpec(dataset_path=tmp_path, name="one", profile="Tiny"))
    two = store.create(JobSpec(dataset_path=tmp_path, name="two", profile="Tiny"))
    assert (one.id, two.id) == ("20261201-000000-aaaaaa", "20261201-000000-bbbbbb")
    assert store.get(one.id).name == "one"  # never merged
    with pytest.raises(NameInUse):
        store.create(JobSpec(dataset_path=tmp_path, name="one", profile="Tiny"))
    store.set_state(one.id, JobState.FAILED)
    assert store.create(JobSpec(dataset_path=tmp_path, name="one", profile="Tiny"))
