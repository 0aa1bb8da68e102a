"""Coordination in Redis (real redis-server): GPU locks, batch slots, job states and the reaper."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis

from autotrain.jobs import keys
from autotrain.jobs.job import JobState
from autotrain.jobs.lease import (
    GpuRoom,
    Lease,
    acquire_batch_slot,
    acquire_gpus,
    create_batch,
    gpu_holders,
    release_batch_slot,
    release_gpus,
)
from autotrain.jobs.owners import queue_owner, worker_owner
from autotrain.jobs.store import JobStore
from autotrain.spec import JobSpec
from tests.conftest import wait_for

DEAD_WORKER = worker_owner("cpu@gone/1234")  # the owner token of a worker that died


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
    assert gpu_holders(client, "h", 1) == ["job-b"]


def test_waiting_for_a_gpu_gives_up_when_cancelled(client):
    acquire_gpus(client, "h", [0], "job-a", 5, should_stop=lambda: False)
    assert not acquire_gpus(client, "h", [1, 0], "job-b", 5, should_stop=lambda: True)
    assert gpu_holders(client, "h", 1) == [], "a job that gives up releases what it took"


def test_gpu_locks_expire_with_a_dead_host(client):
    acquire_gpus(client, "h", [0], "job-a", 0.5, should_stop=lambda: False)
    time.sleep(0.7)
    assert acquire_gpus(client, "h", [0], "job-b", 5, should_stop=lambda: False)


def test_a_gpu_packs_jobs_while_they_fit_its_memory_and_count(client):
    gib = 1 << 30
    room = GpuRoom(need_bytes=8 * gib, max_jobs=2, capacity_bytes={0: 20 * gib})
    never = lambda: False  # noqa: E731
    assert acquire_gpus(client, "h", [0], "a", 5, never, room=room)
    assert acquire_gpus(client, "h", [0], "b", 5, never, room=room), "8 + 8 GiB fit in 20"
    third = GpuRoom(need_bytes=1 * gib, max_jobs=2, capacity_bytes={0: 20 * gib})
    assert not acquire_gpus(client, "h", [0], "c", 5, lambda: True, room=third), "two at most"
    release_gpus(client, "h", [0], "b")
    big = GpuRoom(need_bytes=16 * gib, max_jobs=2, capacity_bytes={0: 20 * gib})
    assert not acquire_gpus(client, "h", [0], "d", 5, lambda: True, room=big), "8 + 16 > 20"
    assert acquire_gpus(client, "h", [0], "c", 5, never, room=third)
    assert gpu_holders(client, "h", 0) == ["a", "c"]


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


def test_a_job_moves_only_along_the_allowed_moves(client):
    store = JobStore(client)
    job = store.create(spec(), owner=queue_owner("m1"), phase="validate")
    with pytest.raises(Exception, match="not an allowed move"):
        store.move(job.id, expected=None, owner=None, state=JobState.REPORTING)
    assert store.get(job.id).state == JobState.QUEUED, "a refused move changes nothing"
    assert store.set_state(job.id, JobState.VALIDATING)
    assert store.set_state(job.id, JobState.QUEUED), "handed on to prepare"


def test_job_ids_resolve_by_unique_prefix_with_clear_errors(client):
    store = JobStore(client)
    job = store.create(spec())
    assert store.get(job.id[:-2]).id == job.id
    with pytest.raises(Exception, match="No job with id 'nope'"):
        store.get("nope")


def _owned_by_worker(store: JobStore, lease_until: float, attempt: int = 1, phase="train"):
    """A job a worker took from the queue, with the lease deadline it last renewed to."""
    job = store.create(
        spec(), queue="gpu", owner=queue_owner("m1"), phase="train", attempt=attempt,
        state=JobState.WAITING_GPU,
    )  # fmt: skip
    moved = store.move(job.id, expected=queue_owner("m1"), owner=DEAD_WORKER,
                       state=JobState.TRAINING, lease_until=lease_until, phase=phase,
                       worker="cpu@gone")  # fmt: skip
    assert moved == 1
    return job.id


@pytest.fixture
def reaping(client, redis_server, tmp_path):
    from autotrain.jobs.celery_app import configure_app
    from autotrain.settings import load_settings

    settings = load_settings(tmp_path, redis_url=redis_server, lease_seconds=1, max_attempts=3)
    configure_app(settings)
    # the reaper waits a lease after Redis starts (workers renew first): let a lease pass
    wait_for(lambda: client.info("server")["uptime_in_seconds"] >= 2, 5, "Redis to be up 2 s")
    return JobStore(client), settings


def test_taking_a_job_is_atomic_and_by_message_id(client):
    store = JobStore(client)
    job = store.create(spec(), owner=queue_owner("m1"), phase="validate")
    # a stale or re-sent message (another id) finds the job owned by another: nothing happens
    assert store.move(job.id, expected=queue_owner("other"), owner=worker_owner("w2/1")) == 0
    assert (
        store.move(job.id, expected=queue_owner("m1"), owner=worker_owner("w1/1"), lease_until=1e10)
        == 1
    )
    assert store.move(job.id, expected=queue_owner("m1"), owner=worker_owner("w3/1")) == 0, (
        "taken only once"
    )
    assert store.get(job.id).owner == worker_owner("w1/1")
    assert client.zscore(keys.LEASES, job.id) == 1e10


def test_a_move_retried_after_its_answer_was_lost_counts_once(client):
    """Redis killed as it ran a take or a hand-off: the client's retry finds the move done."""
    store = JobStore(client)
    job = store.create(spec(), owner=queue_owner("m1"), phase="validate")
    take = dict(expected=queue_owner("m1"), owner=worker_owner("w1/1"), lease_until=1e10,
                state=JobState.VALIDATING)  # fmt: skip
    assert store.move(job.id, **take) == 1
    assert store.move(job.id, **take) == 1, "the same take again: this worker's job"
    hand_on = dict(expected=worker_owner("w1/1"), owner=queue_owner("m2"), state=JobState.QUEUED)
    assert store.move(job.id, **hand_on) == 1
    assert store.move(job.id, **hand_on) == 1, "the same hand-off again: sent once, by it"
    stranger = dict(expected=worker_owner("w2/1"), owner=queue_owner("m3"))
    assert store.move(job.id, **stranger) == 0, "not this one's"
    assert store.get(job.id).owner == queue_owner("m2")
    assert client.zscore(keys.LEASES, job.id) is None


def test_a_job_waiting_in_a_queue_for_longer_than_a_lease_is_never_reaped(reaping, client):
    from autotrain.jobs.reaper import reap

    store, settings = reaping
    job_id = _owned_by_worker(store, lease_until=time.time() + 60)
    # the phase ends and hands the job on; its next message then waits for a long time
    assert store.move(job_id, expected=DEAD_WORKER, owner=queue_owner("m2"),
                      state=JobState.QUEUED, phase="prepare") == 1  # fmt: skip
    assert client.zscore(keys.LEASES, job_id) is None
    assert not reap(store, settings, now=time.time() + 3600)
    assert store.get(job_id).owner == queue_owner("m2")


def test_the_reaper_requeues_the_phase_a_dead_worker_held_as_a_new_attempt(reaping, client):
    from autotrain.jobs.reaper import reap

    store, settings = reaping
    job_id = _owned_by_worker(store, lease_until=time.time() - 0.2)
    assert not reap(store, settings), "within the grace (half a lease) it may still renew"
    result = reap(store, settings, now=time.time() + 1)
    assert result.requeued == [job_id]
    job = store.get(job_id)
    assert (job.state, job.attempt, job.phase) == (JobState.WAITING_GPU, 2, "train")
    assert job.owner == queue_owner(job.next_task["id"])
    assert _waiting(client, "gpu") == 1, "a train message was sent to the gpu queue"
    assert not reap(store, settings, now=time.time() + 1), "requeued once, not twice"


def test_the_reaper_fails_a_job_out_of_attempts(reaping):
    from autotrain.jobs.reaper import reap

    store, settings = reaping
    job_id = _owned_by_worker(store, lease_until=time.time() - 5, attempt=3)
    assert reap(store, settings).failed == [job_id]
    job = store.get(job_id)
    assert job.state == JobState.FAILED
    assert "Interrupted 3 times" in job.error and "max_attempts=3" in job.error


def test_a_worker_renewing_in_time_keeps_its_job(reaping):
    """After a Redis restart a live worker renews within a third of a lease; the reaper's grace
    is half a lease past the deadline, so the job is not re-queued (and trained twice)."""
    from autotrain.jobs.reaper import reap

    store, settings = reaping
    job_id = _owned_by_worker(store, lease_until=time.time() - 0.3)
    assert store.renew(job_id, DEAD_WORKER, time.time() + 1)
    assert not reap(store, settings)
    assert store.get(job_id).state == JobState.TRAINING


def test_a_lease_moved_away_is_let_go(client):
    store = JobStore(client)
    job_id = _owned_by_worker(store, lease_until=time.time() + 1)
    lease = Lease(store, job_id, DEAD_WORKER, seconds=0.6).start()
    time.sleep(0.5)
    assert not lease.lost.is_set(), "renewed while it owns the job"
    store.move(job_id, expected=None, owner=queue_owner("m9"), state=JobState.WAITING_GPU)
    time.sleep(0.5)
    assert lease.lost.is_set()
    lease.stop()
    assert store.get(job_id).owner == queue_owner("m9"), "letting go never touches the new owner"


def test_an_unconfirmed_hand_off_is_sent_again_with_the_same_id(reaping, client):
    from autotrain.jobs.reaper import reap

    store, settings = reaping
    job_id = _owned_by_worker(store, lease_until=time.time() + 60)
    message = {"name": "autotrain.prepare", "id": "m2", "queue": "prep.ongoing"}
    # the worker moved the job to the queue, then died before sending the message
    store.move(job_id, expected=DEAD_WORKER, owner=queue_owner("m2"), state=JobState.QUEUED,
               phase="prepare", next_task=message, dispatch_until=time.time() + 1)  # fmt: skip
    assert not reap(store, settings)
    assert reap(store, settings, now=time.time() + 2).resent == [job_id]
    assert _waiting(client, "prep.ongoing") == 1
    assert not reap(store, settings, now=time.time() + 2), "confirmed: sent once more only"


def test_train_list_reads_one_page_of_ten_thousand_jobs(client):
    store = JobStore(client)
    pipe = client.pipeline(transaction=False)
    for i in range(10_000):
        job_id = f"20260101-{i:06d}-aaaaaa"
        pipe.hset(keys.job(job_id), mapping={"id": json.dumps(job_id),
                  "spec": json.dumps(spec(f"d{i}").model_dump(mode="json")),
                  "state": json.dumps("succeeded")})  # fmt: skip
        pipe.zadd(keys.JOBS, {job_id: i})
    pipe.execute()
    client.config_resetstat()
    jobs = store.page(limit=50)
    calls = client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)
    assert [j.id for j in jobs][:2] == ["20260101-009999-aaaaaa", "20260101-009998-aaaaaa"]
    assert len(jobs) == 50 and calls <= 100, f"{calls} job records read for one page"
    assert store.page(states={JobState.TRAINING}) == []  # the active index: nothing to read


def _waiting(client, queue: str) -> int:
    """Messages in a broker queue, over its priority lists (autotrain.jobs.keys.broker_lists)."""
    from autotrain.jobs import keys

    return sum(client.llen(name) for name in keys.broker_lists(queue))


def test_scripts_go_by_sha_and_survive_a_server_that_lost_them(client):
    """A restarted Redis has no scripts: the first call loads the source, later ones send the SHA."""
    create_batch(client, "b1", 1)
    client.script_flush()
    assert acquire_batch_slot(client, "b1", "j1", 1), "loaded again after the flush"
    before = client.info("commandstats").get("cmdstat_eval", {}).get("calls", 0)
    assert acquire_batch_slot(client, "b1", "j1", 1)
    assert client.info("commandstats").get("cmdstat_eval", {}).get("calls", 0) == before


def test_a_message_fetched_by_a_worker_that_died_before_starting_it_is_sent_again(reaping):
    """A worker (or Redis) killed between fetching a message and starting its task loses the
    message; the job waits for it, owned by it. Missing at two looks in a row, it is sent again
    with the same id; a message that waits in its list is never sent twice."""
    from autotrain.jobs.lost_messages import AUDIT_LEASES
    from autotrain.jobs.queue import submit_job
    from autotrain.jobs.reaper import reap

    store, settings = reaping
    lost, kept = submit_job(store, spec("lost")), submit_job(store, spec("kept"))
    lists = keys.broker_lists(lost.next_task["queue"])
    messages = [m for name in lists for m in store.redis.lrange(name, 0, -1)]
    assert len(messages) == 2
    fetched = next(m for m in messages if json.loads(m)["headers"]["id"] == lost.next_task["id"])
    for name in lists:  # what a worker's BRPOP does, and then it dies
        store.redis.lrem(name, 1, fetched)
    every = settings.lease_seconds * AUDIT_LEASES
    now = time.time()
    assert not reap(store, settings, now=now).resent, "a first look only notes it missing"
    assert reap(store, settings, now=now + every).resent == [lost.id]
    ids = [json.loads(m)["headers"]["id"] for n in lists for m in store.redis.lrange(n, 0, -1)]
    assert sorted(ids) == sorted([lost.next_task["id"], kept.next_task["id"]])  # same id again
    assert store.get(lost.id).owner == queue_owner(lost.next_task["id"])
    assert not reap(store, settings, now=now + 3 * every).resent, "both wait in their list now"
