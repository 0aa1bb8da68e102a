"""Placement by GPU memory and packing, on stand-in GPUs whose memory the test sets
(tests/standins/gpu_host.py: real workers, made-up GPUs; the Tiny trainer runs on the CPU)."""

from __future__ import annotations

import json
import shutil
import tomllib

import tomli_w

from autotrain.job import JobState
from tests.conftest import copy_example, wait_for


def _profile(cluster, name: str, vram_gb: float, steps: int = 60, **profile) -> str:
    """TinyTest with a declared VRAM need (optionally a ladder) and `steps` steps."""
    target = cluster.root / "templates" / name
    shutil.copytree(cluster.root / "templates" / "TinyTest", target)
    data = tomllib.loads((target / "profile.toml").read_text())
    data.update(vram_gb=vram_gb, **profile)
    (target / "profile.toml").write_text(tomli_w.dumps(data))
    base = tomllib.loads((target / "base.toml").read_text())
    base.update(max_train_steps=steps, save_every_n_steps=steps, sample_every_n_steps=steps)
    (target / "base.toml").write_text(tomli_w.dumps(base))
    return name


def _steps(cluster, name: str) -> list[float]:
    log = cluster.root / "output" / name / "log" / "progress.jsonl"
    return [e["ts"] for e in map(json.loads, log.read_text().splitlines()) if e["kind"] == "step"]


def test_a_job_too_big_for_a_gpu_waits_for_one_that_fits_and_submit_knows_the_fleet(
    cluster, tmp_path
):
    cluster.env["AUTOTRAIN_TINY_STEP_DELAY"] = "0.1"
    cluster.start_gpu_host("g1", [8, 24])
    store = cluster.store()
    # at submit: a profile no GPU holds is refused, naming the GPUs; one whose leaner variant
    # fits starts with that variant
    huge = _profile(cluster, "TinyHuge", 80)
    refused = cluster.cli("pipeline", "run", "--dataset-path", str(copy_example(tmp_path, "b")),
                          "--profile", huge)  # fmt: skip
    assert refused.returncode == 1
    assert (
        "needs 80 GiB" in refused.stderr and "gpu1@g1 (24 GiB), gpu0@g1 (8 GiB)" in refused.stderr
    )
    ladder = [
        {"name": "batch 1", "vram_gb": 6, "source": "test", "overrides": {"train_batch_size": 1}}
    ]
    lean = _profile(cluster, "TinyLadder", 30, steps=4, ladder=ladder)
    run = cluster.cli("pipeline", "run", "--dataset-path", str(copy_example(tmp_path, "a")),
                      "--profile", lean, check=True)  # fmt: skip
    assert "starts with batch 1 (6 GiB)" in run.stderr
    wait_for(lambda: store.list() and all(j.is_final for j in store.list()), 60, "the lean job")
    # at training: a job too big for the free GPU waits for the one that fits
    busy = cluster.submit(copy_example(tmp_path, "busy"), "--gpu-ids", "1", "--host", "g1")
    wait_for(lambda: store.get(busy).step > 0, 60, "the 24 GiB GPU to be busy")
    big = cluster.submit(copy_example(tmp_path, "big"), profile=_profile(cluster, "TinyBig", 12, 8))
    wait_for(lambda: store.get(big).is_final, 120, "the big job to train")
    job, first = store.get(big), store.get(busy)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.train_worker == "gpu1@g1", "it trained on the 8 GiB GPU"
    assert job.training_started_at >= first.training_finished_at
    placed = [e for e in store.history(big) if e["event"] == "placed"]
    assert placed and placed[0]["queue"] == "gpu.g1.1"


def test_small_jobs_pack_onto_one_gpu_while_they_fit_and_a_third_waits(cluster, tmp_path):
    cluster.env.update(AUTOTRAIN_TINY_STEP_DELAY="0.1", AUTOTRAIN_MAX_JOBS_PER_GPU="3")
    cluster.start_gpu_host("g2", [24])
    half = _profile(cluster, "TinyHalf", 10)  # 10 + 0.5 margin: two fit in 24 GiB, not three
    names = ["one", "two", "three"]
    ids = [cluster.submit(copy_example(tmp_path, n), profile=half) for n in names]
    store = cluster.store()
    wait_for(lambda: all(store.get(i).is_final for i in ids), 180, "the three jobs to train")
    assert all(store.get(i).state == JobState.SUCCEEDED for i in ids)
    spans = sorted((_steps(cluster, n)[0], _steps(cluster, n)[-1]) for n in names)
    assert spans[1][0] < spans[0][1], f"the first two did not train at the same time: {spans}"
    assert spans[2][0] >= min(spans[0][1], spans[1][1]), f"the third did not wait: {spans}"
