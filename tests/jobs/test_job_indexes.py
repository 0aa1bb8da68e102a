"""Filters answered from indexes: by profile, by final state, by batch. A filter that matches
nothing reads no job record, however long the history (real redis-server)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from autotrain.jobs import keys
from autotrain.jobs.job import JobState
from autotrain.jobs.owners import NOBODY, queue_owner
from autotrain.jobs.prune import prune_jobs
from autotrain.jobs.store import JobStore
from autotrain.spec import JobSpec


@pytest.fixture
def store(redis_server) -> JobStore:
    client = redis.Redis.from_url(redis_server, decode_responses=True)
    client.flushall()
    return JobStore(client)


def _job(store: JobStore, name: str, profile: str, state: JobState | None = None) -> str:
    spec = JobSpec(dataset_path=Path("/data") / name, name=name, profile=profile)
    job = store.create(spec, owner=queue_owner(f"m-{name}"), phase="validate")
    if state is not None:  # ends it, as a cancel of a queued job does
        assert store.move(job.id, expected=queue_owner(f"m-{name}"), owner=NOBODY,
                          state=state) == 1  # fmt: skip
    return job.id


def _records_read(store: JobStore, page) -> tuple[list, int]:
    before = store.redis.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)
    jobs = page()
    after = store.redis.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)
    return jobs, after - before


def test_a_filter_that_matches_nothing_reads_no_job(store):
    history = [_job(store, f"old{i}", "FluxLORA", JobState.CANCELLED) for i in range(150)]
    tiny = _job(store, "cat", "Tiny")
    jobs, read = _records_read(store, lambda: store.page(profile="nope"))
    assert jobs == [] and read == 0
    jobs, read = _records_read(store, lambda: store.page(states={JobState.FAILED}))
    assert jobs == [] and read == 0
    jobs, read = _records_read(store, lambda: store.page(profile="Tiny"))
    assert [j.id for j in jobs] == [tiny] and read == 1
    jobs, _ = _records_read(store, lambda: store.page(states={JobState.CANCELLED}, limit=500))
    assert {j.id for j in jobs} == set(history)


def test_a_retry_leaves_the_final_index_and_prune_leaves_every_index(store):
    job_id = _job(store, "cat", "Tiny", JobState.FAILED)
    assert [j.id for j in store.page(states={JobState.FAILED})] == [job_id]
    store.reopen(job_id, owner=queue_owner("m-retry"), state=JobState.QUEUED, dispatch_until=1e10)
    assert store.page(states={JobState.FAILED}) == []
    assert store.move(job_id, expected=queue_owner("m-retry"), owner=NOBODY,
                      state=JobState.CANCELLED) == 1  # fmt: skip
    prune_jobs(store, older_than_seconds=-1)
    assert store.page(profile="Tiny") == [] and store.page(states={JobState.CANCELLED}) == []
    assert not store.redis.zcard(keys.profile_jobs("Tiny"))


def test_jobs_from_before_the_indexes_are_found_once_backfilled(store):
    job_id = _job(store, "cat", "Tiny", JobState.FAILED)
    store.redis.delete(keys.profile_jobs("Tiny"), keys.state_jobs("failed"), keys.INDEXED)
    assert [j.id for j in store.page(profile="Tiny")] == [job_id]
    assert [j.id for j in store.page(states={JobState.FAILED})] == [job_id]
