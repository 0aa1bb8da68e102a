"""Placement by GPU memory and packing, on stand-in GPUs whose memory the test sets
(tests/standins/gpu_host.py: real workers, made-up GPUs; the Tiny trainer runs on the CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w

from autotrain.jobs import keys
from autotrain.jobs.job import JobState
from tests.conftest import REPO, copy_example, wait_for, write_tiny_profile


def _profile(cluster, name: str, vram_gb: float, steps: int = 60, **profile) -> str:
    """TinyTest with a declared VRAM need (optionally a ladder) and `steps` steps."""
    return write_tiny_profile(cluster.root, name, {"vram_gb": vram_gb, **profile},
                              max_train_steps=steps, save_every_n_steps=steps,
                              sample_every_n_steps=steps)  # fmt: skip


def _steps(cluster, name: str) -> list[float]:
    log = cluster.root / "output" / name / "log" / "progress.jsonl"
    return [e["ts"] for e in map(json.loads, log.read_text().splitlines()) if e["kind"] == "step"]


@pytest.mark.slow
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


@pytest.mark.slow
def test_small_jobs_pack_onto_one_gpu_while_they_fit_and_a_third_waits(cluster, tmp_path):
    cluster.env.update(AUTOTRAIN_TINY_STEP_DELAY="0.1", AUTOTRAIN_MAX_JOBS_PER_GPU="3")
    cluster.start_gpu_host("g2", [24])
    half = _profile(cluster, "TinyHalf", 10)  # 10 + 0.5 margin: two fit in 24 GiB, not three
    names = ["one", "two", "three"]
    ids = [cluster.submit(copy_example(tmp_path, n), profile=half) for n in names]
    store = cluster.store()

    def two_on_gpu0() -> str | None:
        status = json.loads(cluster.cli("status", "--json", check=True).stdout)
        gpu0 = next(w for w in status["workers"] if w["name"] == "gpu0@g2")
        return gpu0["job"] if gpu0["job"] and gpu0["job"].count(",") == 1 else None

    packed = wait_for(two_on_gpu0, 120, "`status` to show two jobs training on gpu0@g2")
    assert set(packed.split(", ")) < set(ids)
    wait_for(lambda: all(store.get(i).is_final for i in ids), 180, "the three jobs to train")
    assert all(store.get(i).state == JobState.SUCCEEDED for i in ids)
    spans = sorted((_steps(cluster, n)[0], _steps(cluster, n)[-1]) for n in names)
    assert spans[1][0] < spans[0][1], f"the first two did not train at the same time: {spans}"
    assert spans[2][0] >= min(spans[0][1], spans[1][1]), f"the third did not wait: {spans}"


STANDIN_NVML = Path(__file__).parent.parent / "standins" / "nvml"


def _nvml(path: Path, used_gib: list[float]) -> None:
    """The stand-in NVML's view of two 24 GiB GPUs, `used_gib` held by another program."""
    gpus = [{"name": "NVIDIA GeForce RTX 4090", "uuid": f"GPU-nv-{i}", "total_gib": 24,
             "utilization": 97 if used else 0, "temperature": 61 if used else 38,
             "used_gib": used, "processes": [{"pid": 4242, "used_gib": used}] if used else []}
            for i, used in enumerate(used_gib)]  # fmt: skip
    path.write_text(json.dumps({"driver": "570.86.15", "gpus": gpus}))


@pytest.mark.slow
def test_memory_other_programs_hold_is_respected_as_nvml_measures_it(cluster, tmp_path):
    """The real `autotrain worker` discovers its GPUs and measures their free memory through
    NVML (a stand-in pynvml: no driver here). A 10 GiB job never starts where another program
    holds 20 of 24 GiB: it goes to a GPU with room, or waits until the memory is free."""
    nvml = tmp_path / "nvml.json"
    _nvml(nvml, [20, 0])
    cluster.env.update(AUTOTRAIN_TINY_STEP_DELAY="0.05", STANDIN_NVML_FILE=str(nvml),
                       PYTHONPATH=os.pathsep.join([str(STANDIN_NVML), str(REPO)]))  # fmt: skip
    log = open(cluster.root / "nv1.log", "ab")  # noqa: SIM115
    cluster.workers.append(subprocess.Popen(
        [sys.executable, "-m", "autotrain.cli", "worker", "--host", "nv1"], env=cluster.env,
        cwd=cluster.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip

    def heartbeat(name: str) -> dict:
        raw = cluster.redis.get(keys.worker(name))
        return json.loads(raw) if raw else {}

    wait_for(lambda: heartbeat("gpu0@nv1").get("memory_free") and heartbeat("gpu1@nv1"), 60,
             "both GPU workers to report NVML's memory")  # fmt: skip
    assert heartbeat("gpu0@nv1")["memory_free"] == 4 << 30
    assert heartbeat("gpu0@nv1")["gpu_name"] == "NVIDIA GeForce RTX 4090"
    assert heartbeat("gpu0@nv1")["temperature"] == 61 and heartbeat("gpu0@nv1")["utilization"] == 97
    profile = _profile(cluster, "TinyTen", 10, steps=20)
    store = cluster.store()
    sets = tmp_path / "sets"
    first = [cluster.submit(copy_example(sets, n), profile=profile) for n in ("a", "b")]
    wait_for(lambda: all(store.get(j).is_final for j in first), 180, "both jobs to end")
    for job_id in first:
        job = store.get(job_id)
        assert job.state == JobState.SUCCEEDED and job.train_worker == "gpu1@nv1", job.error

    _nvml(nvml, [20, 20])  # now both GPUs are held by other programs
    waiting = cluster.submit(copy_example(sets, "c"), profile=profile)
    wait_for(lambda: "GiB free there" in (store.get(waiting).waiting_for or ""), 60,
             "the job to wait for free memory")  # fmt: skip
    job = store.get(waiting)
    assert job.state != JobState.TRAINING and "NVML measures 4.0 GiB free" in job.waiting_for
    listed = cluster.cli("train", "list", check=True).stdout
    assert "other processes use the rest" in listed
    _nvml(nvml, [0, 20])
    wait_for(lambda: store.get(waiting).is_final, 120, "the job to train once memory is free")
    job = store.get(waiting)
    assert job.state == JobState.SUCCEEDED and job.train_worker in ("gpu0@nv1", "gpu1@nv1")
    assert job.train_worker == "gpu0@nv1" or any(
        e.get("event") == "placed" for e in store.history(waiting)
    )


def test_the_need_follows_resolution_batch_and_rank_of_a_profile_made_from_fluxlora(tmp_path):
    """A user's copy of FluxLORA training 768 px at batch 2 and rank 32: the built-in figures
    move by the profile's vram_scaling; the built-in settings keep the published figures."""
    from autotrain.fleet.placement import describe_needs, need_gb
    from autotrain.profile import builtin_templates_dir, load_profile

    builtin = load_profile("FluxLORA")
    assert need_gb(builtin, 0) == 24 and [need_gb(builtin, i) for i in (1, 2, 3, 4)] == [
        16,
        12,
        10,
        8,
    ]
    copy = tmp_path / "templates" / "MyFlux"
    shutil.copytree(builtin_templates_dir() / "FluxLORA", copy)
    descriptor = tomllib.loads((copy / "profile.toml").read_text())
    descriptor["resolution"] = 768
    (copy / "profile.toml").write_text(tomli_w.dumps(descriptor))
    base = tomllib.loads((copy / "base.toml").read_text())
    base.update(train_batch_size=2, network_dim=32)
    (copy / "base.toml").write_text(tomli_w.dumps(base))
    mine = load_profile("MyFlux", tmp_path / "templates")
    # 24 + 4 GiB x (2 x 0.5625 - 1) + 0.016 x 16 = 24.756
    assert need_gb(mine, 0) == 24.76
    # the variants set batch 1: their figures only move with the pixels and the rank
    assert need_gb(mine, 1) == round(16 + 4 * (0.5625 - 1) + 0.016 * 16, 2)
    lines = describe_needs(mine, current=1)
    assert lines[0].startswith("as is: about 24.76 GiB") and lines[1].endswith("<- now")
    assert "docs/flux_train_network.md:287" in lines[1]
