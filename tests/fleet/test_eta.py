"""The queue ETA: measured paces, the replay of the queue on the fleet, and what `train list` and
`train show` say, with real Redis, a real worker and the Tiny trainer."""

from __future__ import annotations

import json

import pytest

from autotrain.fleet.eta import _Slot
from autotrain.fleet.registry import WorkerRecord
from autotrain.jobs import keys
from autotrain.jobs.job import JobState
from autotrain.settings import Settings
from tests.conftest import copy_example, wait_for

GIB = 1 << 30


def test_a_job_waits_for_room_on_a_gpu_slot_by_count_and_by_memory():
    settings = Settings(workspace=".", vram_margin_gb=0)
    gpu = _Slot(WorkerRecord(name="gpu0@h", gpu="0", slots=2, memory_total=24 * GIB), settings)
    gpu.book(0, 100, 16 * GIB, "big")
    gpu.book(0, 50, 4 * GIB, "small")
    # two slots, both busy: the first end makes room
    assert gpu.earliest(10, 30, 2 * GIB) == (50, "small")
    # 10 GiB fits beside the big job only; it must wait for the big one, though a slot frees at 50
    assert gpu.earliest(10, 30, 10 * GIB) == (100, "big")
    # a worker starts what it takes in order: nothing starts before the last job booked
    gpu.book(60, 200, 4 * GIB, "later")
    # "small" ended at 50, but "later" started at 60: at 60 both slots are full, until 100
    assert gpu.earliest(10, 30, 2 * GIB) == (100, "big")
    assert gpu.earliest(10, 30, 21 * GIB) == (200, "later"), "4 + 21 GiB do not fit in 24"
    # larger than the GPU: never
    assert gpu.earliest(0, 1, 30 * GIB)[0] == float("inf")


@pytest.mark.slow
def test_queued_jobs_show_when_they_start_and_the_pace_is_learned(cluster, tmp_path):
    cluster.env["AUTOTRAIN_TINY_STEP_DELAY"] = "0.05"
    quick = cluster.short_profile("TinyEta", 30)
    cluster.start_worker("h1")
    sets = tmp_path / "sets"
    ids = [cluster.submit(copy_example(sets, name), profile=quick) for name in ("a", "b", "c")]
    store = cluster.store()
    wait_for(lambda: store.get(ids[0]).state == JobState.TRAINING and store.get(ids[0]).rate,
             120, "the first job to train at a live rate")  # fmt: skip
    wait_for(lambda: all(store.get(i).plan for i in ids), 60, "every job configured")

    listed = {
        j["id"]: j for j in json.loads(cluster.cli("train", "list", "--json", check=True).stdout)
    }
    first, second, third = (listed[i]["forecast"] for i in ids)
    assert first["finishes_at"] is not None and "live rate" in first["why"]
    # one worker: each queued job starts when the one before it ends
    assert second["starts_at"] == first["finishes_at"]
    assert third["starts_at"] == second["finishes_at"] > second["starts_at"]
    assert f"when job {ids[1]} ends" in third["why"]
    table = cluster.cli("train", "list", check=True).stdout
    assert table.count("starts 00:") == 2, table

    shown = cluster.cli("train", "show", "--job", ids[2], check=True).stdout
    assert "forecast" in shown and "starts in 00:" in shown and "cpu@h1" in shown
    wait_for(lambda: all(store.get(i).is_final for i in ids), 180, "the three jobs to end")
    assert all(store.get(i).state == JobState.SUCCEEDED for i in ids)
    paces = cluster.redis.hgetall(keys.PACE)
    measured = json.loads(paces[f"{quick}\tcpu"])
    assert measured["runs"] == 3 and 0.04 < measured["seconds_per_step"] < 1.0
    assert measured["steps"] == 30
