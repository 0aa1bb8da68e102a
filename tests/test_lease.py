"""Coordination in Redis (real redis-server): GPU locks, batch slots, job states and the reaper."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from autotrain.job import JobState, JobStore
from autotrain.lease import (
    acquire_batch_slot,
    acquire_gpus,
    create_batch,
    gpu_lock_key,
    hold_lease,
    lease_key,
    release_batch_slot,
    release_gpus,
)
from autotrain.spec import JobSpec


@pytest.fixture
def client(redis_server):
    c = redis.Redis.from_url(redis_server, decode_responses=True)
    c.flushall()
    return c


def spec(name: str = "ds") -> JobSpec:
    return JobSpec(dataset_path="/data/" + name, name=name, profile="Tiny")


def test_a_gpu_held_by_one_job_waits_for_another(client):
    assert acquire_gpus(client, "h", [0, 1], "job-a", 5, should_stop=lambda: False)
    got = []
    waiter = threading.Thread(
        target=lambda: got.append(
            acquire_gpus(client, "h", [1], "job-b", 5, should_stop=lambda: False)
        )
    )
    waiter.start()
    time.sleep(1.5)
    assert not got, "job-b must not start on GPU 1 while job-a holds it"
    release_gpus(client, "h", [0, 1], "job-a")
    waiter.join(5)
    assert got == [True]
    assert client.get(gpu_lock_key("h", 1)) == "job-b"


def test_waiting_for_a_gpu_gives_up_when_cancelled(client):
    acquire_gpus(client, "h", [0], "job-a", 5, should_stop=lambda: False)
    assert not acquire_gpus(client, "h", [1, 0], "job-b", 5, should_stop=lambda: True)
    assert client.get(gpu_lock_key("h", 1)) is None, "a job that gives up releases what it took"


def test_gpu_locks_expire_with_a_dead_host(client):
    acquire_gpus(client, "h", [0], "job-a", 0.5, should_stop=lambda: False)
    time.sleep(0.7)
    assert acquire_gpus(client, "h", [0], "job-b", 5, should_stop=lambda: False)


def test_batch_slots_admit_at_most_n_and_hand_on_in_order(client):
    create_batch(client, "b1", 1)
    assert acquire_batch_slot(client, "b1", "j1", 1)
    assert not acquire_batch_slot(client, "b1", "j3", 3)
    assert not acquire_batch_slot(client, "b1", "j2", 2)
    assert acquire_batch_slot(client, "b1", "j1", 1), "a job that holds a slot keeps it"
    assert release_batch_slot(client, "b1", "j1") == "j2", "the earliest parked job goes next"
    assert acquire_batch_slot(client, "b1", "j2", 2), "its slot was kept for it"
    assert release_batch_slot(client, "b1", "j2") == "j3"
    assert release_batch_slot(client, "b1", "j3") is None


def test_a_final_job_never_leaves_its_state(client):
    store = JobStore(client)
    job = store.create(spec())
    assert store.set_state(job.id, JobState.CANCELLED)
    assert not store.set_state(job.id, JobState.TRAINING)
    assert store.get(job.id).state == JobState.CANCELLED


def test_lease_is_renewed_while_held_and_removed_after(client):
    with hold_lease(client, "j1", "w1", seconds=0.6) as lease:
        time.sleep(1.0)  # longer than the lease: only renewal keeps it
        assert client.get(lease_key("j1")) == lease.owner and lease.owner.startswith("w1/")
        assert not lease.lost.is_set()
    assert client.get(lease_key("j1")) is None


def test_job_ids_resolve_by_unique_prefix_with_clear_errors(client):
    store = JobStore(client)
    job = store.create(spec())
    assert store.get(job.id[:-2]).id == job.id
    with pytest.raises(Exception, match="No job with id 'nope'"):
        store.get("nope")


def _orphaned_training_job(store: JobStore, attempt: int) -> str:
    job = store.create(spec(), queue="gpu")
    store.set_state(
        job.id, JobState.TRAINING, attempt=attempt, worker="cpu@gone", started_at=time.time() - 60
    )
    return job.id


def test_reaper_requeues_a_job_whose_worker_died(client, redis_server, tmp_path):
    from autotrain.celery_app import configure_app
    from autotrain.queue import reap_expired
    from autotrain.settings import load_settings

    settings = load_settings(tmp_path, redis_url=redis_server, lease_seconds=1, max_attempts=3)
    configure_app(settings)
    store = JobStore(client)
    job_id = _orphaned_training_job(store, attempt=1)
    assert reap_expired(store, settings) == [], "a missing lease is first only suspected"
    time.sleep(0.6)  # the grace is half a lease
    assert reap_expired(store, settings) == [job_id]
    assert store.get(job_id).state == JobState.QUEUED
    assert client.llen("gpu") == 1, "a train task was sent to the gpu queue"
    assert reap_expired(store, settings) == [], "the lease claim stops a second reaper"


def test_reaper_fails_a_job_that_keeps_killing_its_worker(client, redis_server, tmp_path):
    from autotrain.queue import reap_expired
    from autotrain.settings import load_settings

    settings = load_settings(tmp_path, redis_url=redis_server, lease_seconds=1, max_attempts=3)
    store = JobStore(client)
    job_id = _orphaned_training_job(store, attempt=3)
    reap_expired(store, settings)
    time.sleep(0.6)
    reap_expired(store, settings)
    job = store.get(job_id)
    assert job.state == JobState.FAILED
    assert "interrupted 3 times" in job.error and "max_attempts=3" in job.error


def test_reaper_leaves_a_job_whose_worker_renews_in_time(client, redis_server, tmp_path):
    """After a Redis restart a live worker's lease may be briefly gone: a renewal within the
    grace keeps its job from being re-queued (and trained twice)."""
    from autotrain.queue import reap_expired
    from autotrain.settings import load_settings

    settings = load_settings(tmp_path, redis_url=redis_server, lease_seconds=1, max_attempts=3)
    store = JobStore(client)
    job_id = _orphaned_training_job(store, attempt=1)
    assert reap_expired(store, settings) == []
    client.set(lease_key(job_id), "cpu@alive", px=1000)  # the worker renews
    time.sleep(0.6)
    assert reap_expired(store, settings) == []
    client.delete(lease_key(job_id))
    assert reap_expired(store, settings) == [], "suspicion starts afresh after a renewal"
    assert store.get(job_id).state == JobState.TRAINING


def test_a_lease_taken_over_is_let_go_not_overwritten(client):
    with hold_lease(client, "j2", "w1", seconds=0.6) as lease:
        client.set(lease_key("j2"), "cpu@new/abcd", px=5000)  # the reaper re-queued it elsewhere
        time.sleep(0.5)
        assert lease.lost.is_set()
        assert client.get(lease_key("j2")) == "cpu@new/abcd"
    assert client.get(lease_key("j2")) == "cpu@new/abcd", "stopping must not delete another's lease"
