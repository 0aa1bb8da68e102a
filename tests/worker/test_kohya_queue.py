"""FluxLORA jobs through the real queue, trained by the sd-scripts stand-in.

The real sd-scripts cannot run here (no GPU, no Flux weights), so the configured sd-scripts
directory is tests/standins/sd_scripts/: a test double that reads the generated configs, prints
sd-scripts' exact output, saves checkpoints and states, honours --resume and fails on cue. It is
started through the same `python -m accelerate.commands.launch` command a GPU host runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w

from autotrain.jobs.job import JobState
from autotrain.profile import builtin_templates_dir
from autotrain.trainers.progress import parse_text
from tests.conftest import copy_example, pids_of, wait_for
from tests.helpers_kohya import write_placeholder_weights

pytestmark = pytest.mark.slow

STANDIN = Path(__file__).parent.parent / "standins" / "sd_scripts"


@pytest.fixture
def kohya(cluster):
    """The cluster's workspace set up for kohya: stand-in sd-scripts, model files, a quick profile."""
    models = cluster.root / "models"
    models.mkdir()
    for name in ("flux_model", "clip_l", "t5xxl", "ae"):
        path = models / f"{name}.safetensors"
        write_placeholder_weights(path)
        cluster.env[f"AUTOTRAIN_{name.upper()}"] = str(path)
    cluster.env["AUTOTRAIN_SD_SCRIPTS_DIR"] = str(STANDIN)
    cluster.env["AUTOTRAIN_SD_SCRIPTS_PYTHON"] = sys.executable
    target = cluster.root / "templates" / "LoraQuick"
    target.mkdir(parents=True)
    (target / "profile.toml").write_text(
        (builtin_templates_dir() / "FluxLORA" / "profile.toml").read_text()
    )
    template = tomllib.loads((builtin_templates_dir() / "FluxLORA" / "base.toml").read_text())
    template.pop("max_train_epochs", None)
    template.update(
        max_train_steps=30,
        save_every_n_steps=10,
        save_last_n_steps_state=10,
        sample_every_n_steps=10,
    )
    (target / "base.toml").write_text(tomli_w.dumps(template))
    return cluster


def _submit(cluster, tmp_path) -> str:
    dataset = copy_example(tmp_path, "cat")
    run = cluster.cli(
        "pipeline", "run", "--dataset-path", str(dataset), "--profile", "LoraQuick", check=True
    )
    return next(w for w in run.stdout.split() if w.count("-") == 2 and w[:8].isdigit())


def test_fluxlora_job_trains_reports_and_lists_samples(kohya, tmp_path):
    kohya.start_worker("h1")
    job_id = _submit(kohya, tmp_path)
    monitor = kohya.cli("train", "monitor", "--job", job_id, timeout=180)
    assert monitor.returncode == 0, monitor.stdout + monitor.stderr
    assert "Succeeded" in monitor.stdout
    assert "sample:" in monitor.stdout  # sample images are listed as they appear
    job = kohya.store().get(job_id)
    assert (job.step, job.total) == (30, 30)
    manifest = json.loads((kohya.root / "output" / "cat" / "run.json").read_text())
    assert manifest["result"] == "succeeded"
    assert manifest["weights"][0]["path"].endswith("cat.safetensors")
    assert manifest["samples"] and all(Path(p).is_file() for p in manifest["samples"])
    assert "accelerate.commands.launch" in manifest["trainer"]["command"]
    logs = kohya.cli("train", "logs", "--job", job_id, check=True)
    assert "steps:" in logs.stdout and "Newest samples" in logs.stdout


def test_a_job_through_a_store_trains_on_the_host_that_submitted_it(kohya, s3_server, tmp_path):
    """A home GPU submits and trains: its own submit claimed output/<name>/ first, and the
    train phase's plan files (the sample prompts flux_train_network.py opens before its first
    step) must survive the train phase claiming the folder for the job."""
    kohya.env.update(s3_server.env, AUTOTRAIN_STORAGE_URL=s3_server.fresh_url())
    kohya.start_worker("h1")
    job_id = _submit(kohya, tmp_path)
    wait_for(lambda: kohya.store().get(job_id).is_final, 180, "the job to end")
    job = kohya.store().get(job_id)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.result["weights"].startswith(kohya.env["AUTOTRAIN_STORAGE_URL"])
    manifest = json.loads((kohya.root / "output" / "cat" / "run.json").read_text())
    assert manifest["storage"]["phases"]["train"]["uploaded_files"] > 0


def test_worker_killed_mid_run_resumes_without_repeating_saved_steps(kohya, tmp_path):
    kohya.env["STANDIN_SLEEP_PER_STEP"] = "0.15"
    kohya.start_worker("h1")
    job_id = _submit(kohya, tmp_path)
    model_dir = kohya.root / "output" / "cat" / "model"
    wait_for(lambda: list(model_dir.glob("cat-step*-state")), 120, "the first saved state")
    for pid in kohya.worker_pids("cpu@h1"):
        os.kill(pid, signal.SIGKILL)
    store = kohya.store()
    wait_for(lambda: store.get(job_id).is_final, 180, "the job to end after the crash")
    job = store.get(job_id)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.attempt == 2
    assert (job.step, job.total) == (30, 30)
    log = (kohya.root / "output" / "cat" / "log" / "trainer.log").read_text(errors="replace")
    runs = log.split("\n$ ")
    assert len(runs) == 3, "two trainer invocations were logged"
    resumed = runs[2].split("\n", 1)
    assert "--resume" in resumed[0] and "--skip_until_initial_step" in resumed[0]
    saved = int(resumed[0].split("-step")[-1].split("-state")[0])
    bar = [e.step for e in parse_text(resumed[1]) if e.kind == "step"]
    # sd-scripts' own bar restarts at 0; it trains only the steps after the saved state
    assert saved >= 10 and min(bar) == 0 and max(bar) == 30 - saved
    # the job record showed true steps all along
    events = [e for _id, e in store.read_events(job_id) if e.get("kind") == "step"]
    assert events[-1]["step"] == 30 and min(e["step"] for e in events) >= 0
    names = sorted(p.name for p in model_dir.glob("cat-step*.safetensors"))
    assert names and not [p for p in model_dir.iterdir() if ".r2" in p.name]
    manifest = json.loads((kohya.root / "output" / "cat" / "run.json").read_text())
    assert manifest["trainer"]["attempts"] == 2
    attempts = manifest["trainer"]["attempts_log"]
    assert attempts[-1]["resume"]["saved_step"] == saved
    assert manifest["trainer"]["version"]["accelerate"]
    assert [a["attempt"] for a in attempts] == [1, 2]  # the killed worker's attempt too
    # checkpoints and samples are shown under their final names, each once
    shown = [e["path"] for _id, e in store.read_events(job_id)
             if e.get("kind") in ("checkpoint", "sample") and e.get("path")]  # fmt: skip
    samples = [p for _id, e in store.read_events(job_id) if e.get("kind") == "sample"
               for p in [e.get("path")] if p]  # fmt: skip
    assert shown and not [p for p in shown if ".r2" in p]
    assert len(samples) == len(set(samples))
    assert all(Path(p).exists() for p in samples)
    assert set(samples) <= set(manifest["samples"])


def test_a_killed_worker_leaves_no_trainer_behind(kohya, tmp_path):
    """Killed while the trainer loads its models (silent, as real model loading is)."""
    kohya.env["STANDIN_LOAD_SECONDS"] = "120"
    kohya.start_worker("h1")
    _submit(kohya, tmp_path)
    script = str(STANDIN / "flux_train_network.py")

    def trainers() -> list[int]:
        return pids_of(script, kohya.root)

    wait_for(trainers, 60, "the trainer to start loading")
    for pid in kohya.worker_pids("cpu@h1"):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not trainers(), 10, "no trainer process left after the worker died")


def test_a_killed_guard_takes_the_whole_trainer_tree_and_the_job_resumes(kohya, tmp_path):
    """`kill -9` of the guard under `accelerate launch` and its training script: the worker
    kills both within seconds, and the job resumes from its newest state as attempt 2."""
    kohya.env["STANDIN_SLEEP_PER_STEP"] = "0.15"
    kohya.start_worker("h1")
    job_id = _submit(kohya, tmp_path)
    model_dir = kohya.root / "output" / "cat" / "model"
    wait_for(lambda: list(model_dir.glob("cat-step*-state")), 120, "the first saved state")
    (guard,) = pids_of("autotrain.trainers.guard", kohya.root)
    tree = pids_of(str(STANDIN), kohya.root)
    assert len(tree) >= 2, "accelerate launch and its training script"
    os.kill(guard, signal.SIGKILL)
    # these processes, not the next attempt's, which may start within the same seconds
    wait_for(lambda: not set(tree) & set(pids_of(str(STANDIN), kohya.root)), 5,
             "the trainer's tree to be killed")  # fmt: skip
    store = kohya.store()
    wait_for(lambda: store.get(job_id).is_final, 180, "the job to end")
    job = store.get(job_id)
    assert job.state == JobState.SUCCEEDED and job.attempt == 2, job.error
    assert (job.step, job.total) == (30, 30)
    manifest = json.loads((kohya.root / "output" / "cat" / "run.json").read_text())
    attempts = manifest["trainer"]["attempts_log"]
    assert [a["cause"] for a in attempts] == ["guard lost", None]
    assert attempts[1]["resume"]["saved_step"] >= 10


def test_out_of_memory_becomes_a_clear_job_error(kohya, tmp_path):
    """A 4 GB GPU: no variant of the ladder fits (the leanest needs 8 GB)."""
    kohya.env["STANDIN_GPU_MEMORY_GB"] = "4"
    kohya.start_worker("h1")
    job_id = _submit(kohya, tmp_path)
    store = kohya.store()
    wait_for(lambda: store.get(job_id).is_final, 120, "the job to fail")
    job = store.get(job_id)
    assert job.state == JobState.FAILED and job.attempt == 5
    assert "out of memory" in job.error.lower()
    assert "every leaner variant of LoraQuick was tried" in job.error
    assert "torch.OutOfMemoryError: CUDA out of memory" in job.error  # the trainer's line, quoted
    listing = kohya.cli("train", "list", "--json", check=True)
    assert json.loads(listing.stdout)[0]["state"] == "failed"


def test_a_sigkilled_trainer_says_it_is_usually_the_out_of_memory_killer(kohya, tmp_path):
    """The trainer (not its guard) dies of SIGKILL, as under the kernel's OOM killer: nothing in
    its output says why, so the job's error says what it usually is and what the profile needs."""
    profile = kohya.root / "templates" / "LoraQuick" / "profile.toml"
    profile.write_text("host_memory_gb = 7\n" + profile.read_text())
    kohya.env["STANDIN_CRASH_AT_STEP"] = "5"
    kohya.start_worker("h1")
    job_id = _submit(kohya, tmp_path)
    store = kohya.store()
    wait_for(lambda: store.get(job_id).is_final, 120, "the job to fail")
    job = store.get(job_id)
    assert job.state == JobState.FAILED and job.attempt == 1, job.error
    assert job.error.startswith("The trainer was killed by SIGKILL (exit code 1)")
    assert "died with <Signals.SIGKILL: 9>" in job.error  # accelerate's line, quoted
    assert "out-of-memory killer" in job.error and "host RAM" in job.error
    assert "LoraQuick profile peaks at about 7 GiB of host memory" in job.error
    assert "max_data_loader_n_workers" in job.error and "leaner variant" in job.error


def test_a_bad_model_file_fails_at_once_quoting_the_trainer_and_is_not_retried(kohya, tmp_path):
    """The Flux checkpoint is a Git LFS pointer, not weights: sd-scripts (here its stand-in)
    fails reading its header. Bad data fails the same way on every GPU, so no attempt follows."""
    flux = kohya.root / "models" / "flux_model.safetensors"
    flux.write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:4f1c\nsize 23802932552\n"
    )
    kohya.start_gpu_host("g3", [24, 24])
    job_id = _submit(kohya, tmp_path)
    store = kohya.store()
    wait_for(lambda: store.get(job_id).is_final, 120, "the job to fail")
    job = store.get(job_id)
    assert job.state == JobState.FAILED and job.attempt == 1, job.error
    assert "Error while deserializing header: HeaderTooLarge" in job.error
    assert "Git LFS" in job.error  # the hint: download it again
    events = [e["event"] for e in store.history(job_id)]
    assert "gpu failure" not in events and "out of memory" not in events
    status = json.loads(kohya.cli("status", "--json", check=True).stdout)
    assert all(not w.get("gpu_failures") for w in status["workers"]), "a GPU was blamed"


def test_the_documented_script_integration_runs_as_written(kohya, tmp_path):
    """The snippet of the pipeline's documentation, verbatim but for the dataset path; the
    workspace's own FluxLORA profile (30 steps) overrides the built-in one."""
    shutil.copytree(kohya.root / "templates" / "LoraQuick", kohya.root / "templates" / "FluxLORA")
    kohya.start_worker("h1")
    dataset = copy_example(tmp_path)
    script = tmp_path / "train_overnight.py"
    script.write_text(
        "from autotrain_sdk.pipeline import run_pipeline, run_batch_pipeline\n"
        f'success = run_pipeline(dataset_path={str(dataset)!r}, profile="FluxLORA", monitor=True, min_images=10)\n'
        "print('success' if success else 'failure', success.job.state.value, success.job.step)\n"
    )
    done = subprocess.run([sys.executable, str(script)], env=kohya.env, cwd=kohya.root,
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == "success succeeded 30"


def test_a_hung_trainer_is_stopped_and_its_job_resumes_from_its_state(kohya, tmp_path):
    """The stand-in hangs silently before step 15 (a stuck collective); the watchdog's budget is
    6x its recent step time, floored at 1 s for the test."""
    kohya.env.update(STANDIN_SLEEP_PER_STEP="0.05", STANDIN_HANG_AT_STEP="15",
                     AUTOTRAIN_STALL_FLOOR_SECONDS="1", AUTOTRAIN_STALL_STARTUP_SECONDS="30")  # fmt: skip
    kohya.start_worker("h1")
    job_id = _submit(kohya, tmp_path)
    store = kohya.store()
    wait_for(lambda: store.get(job_id).is_final, 120, "the hung job to end")
    job = store.get(job_id)
    assert job.state == JobState.SUCCEEDED, job.error
    assert (job.attempt, job.step, job.total) == (2, 30, 30)
    stalled = [e for e in store.history(job_id) if e["event"] == "stalled"]
    assert (
        len(stalled) == 1 and stalled[0]["step"] == 14 and "made no progress" in stalled[0]["error"]
    )
    attempts = json.loads((kohya.root / "output" / "cat" / "run.json").read_text())["trainer"]
    first, second = attempts["attempts_log"]
    assert 1 <= first["stalled_seconds"] < 10 and second["stalled_seconds"] is None
    assert second["resume"]["saved_step"] == 10, "resumed from the newest state, not step 0"


def test_out_of_memory_steps_down_the_ladder_until_a_variant_fits(kohya, tmp_path):
    """The stand-in GPU has 13 GB: FluxLORA as is (24 GB) and with 8 swapped blocks (16 GB) run
    out of memory at their first step (sd-scripts' VRAM table); 16 swapped blocks (12 GB) fit."""
    kohya.env["STANDIN_GPU_MEMORY_GB"] = "13"
    kohya.start_worker("h1")
    job_id = _submit(kohya, tmp_path)
    store = kohya.store()
    wait_for(lambda: store.get(job_id).is_final, 120, "the job to end")
    job = store.get(job_id)
    assert job.state == JobState.SUCCEEDED, job.error
    assert (job.attempt, job.variant, job.step) == (3, 2, 30)
    steps_down = [e["variant"] for e in store.history(job_id) if e["event"] == "out of memory"]
    assert steps_down == ["blocks_to_swap 8", "blocks_to_swap 16"]
    manifest = json.loads((kohya.root / "output" / "cat" / "run.json").read_text())
    attempts = manifest["trainer"]["attempts_log"]
    assert [(a["variant"], a["cause"]) for a in attempts] == [
        ("as is", "oom"),
        ("blocks_to_swap 8", "oom"),
        ("blocks_to_swap 16", None),
    ]
    assert manifest["config"]["values"]["blocks_to_swap"] == 16


@pytest.mark.parametrize(("fault", "quoted"), [("NCCL", "NCCL error"),
                                              ("ECC", "uncorrectable ECC error")])  # fmt: skip
def test_a_gpu_failure_moves_the_job_to_another_gpu_and_marks_the_first(kohya, tmp_path, fault,
                                                                         quoted):  # fmt: skip
    """Stand-in GPU 0 is broken: every run there fails with torch's NCCL error, or with its CUDA
    error for an uncorrectable ECC error (an Xid 48)."""
    kohya.env.update({f"STANDIN_{fault}_ERROR_ON_GPU": "0", "STANDIN_SLEEP_PER_STEP": "0.1",
                      "AUTOTRAIN_SUSPECT_GPU_FAILURES": "1"})  # fmt: skip
    kohya.start_gpu_host("g1", [24, 24])
    store = kohya.store()
    busy = kohya.cli("pipeline", "run", "--dataset-path", str(copy_example(tmp_path, "busy")),
                     "--profile", "LoraQuick", "--gpu-ids", "1", "--host", "g1", check=True)  # fmt: skip
    busy_id = next(w for w in busy.stdout.split() if w.count("-") == 2 and w[:8].isdigit())
    wait_for(lambda: store.get(busy_id).step > 0, 60, "GPU 1 to be busy")
    job_id = _submit(kohya, tmp_path)  # GPU 0 takes it and fails
    wait_for(lambda: store.get(job_id).is_final, 120, "the job to end")
    job = store.get(job_id)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.train_worker == "gpu1@g1" and job.attempt == 2 and job.avoid_gpus == ["g1:0"]
    failure = next(e for e in store.history(job_id) if e["event"] == "gpu failure")
    assert failure["gpu"] == "g1:0" and quoted in failure["error"]
    status = json.loads(kohya.cli("status", "--json", check=True).stdout)
    gpu0 = next(w for w in status["workers"] if w["name"] == "gpu0@g1")
    assert gpu0["gpu_failures"] == 1 and gpu0["suspect"]
