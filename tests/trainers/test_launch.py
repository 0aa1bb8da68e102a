"""The trainer's launch: autotrain's own accelerate config, and a process tree that never outlives
the worker that started it (autotrain.trainers.guard). Real processes, the real accelerate launcher."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotrain.trainers.guard import device_records, kill_recorded_trainers, record_trainer
from autotrain.trainers.kohya import KohyaBackend
from tests.conftest import wait_for
from tests.helpers_kohya import (
    launch_files,
    output_of,
    quick_profile,
    run,
    staged_plan,
)

# What `accelerate config default` writes on a host with two GPUs.
MULTI_GPU_DEFAULT = """\
compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
num_processes: 2
gpu_ids: all
mixed_precision: 'no'
num_machines: 1
machine_rank: 0
use_cpu: false
"""


@pytest.mark.slow
def test_a_multi_gpu_default_config_does_not_break_a_single_gpu_job(kohya_settings, tmp_path):
    hf_home = tmp_path / "hf"
    (hf_home / "accelerate").mkdir(parents=True)
    (hf_home / "accelerate" / "default_config.yaml").write_text(MULTI_GPU_DEFAULT)
    profile = quick_profile(kohya_settings, max_train_steps=4, save_every_n_steps=2)
    plan = staged_plan(kohya_settings, profile)
    command = launch_files(KohyaBackend(), plan, profile, kohya_settings, [1])
    # the same launch without autotrain's own config file: the user's file decides, and fails
    at = command.index("--config_file")
    plain = run(command[:at] + command[at + 2 :], HF_HOME=str(hf_home))
    assert plain.returncode != 0
    assert "Less than two GPU ids were configured" in output_of(plain)
    owned = run(command, HF_HOME=str(hf_home))
    assert owned.returncode == 0, output_of(owned)
    assert (plan.model_dir / "cat.safetensors").is_file()


def _processes_with(marker: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def test_a_killed_worker_takes_the_whole_trainer_tree(tmp_path):
    """Like torch's elastic agent, the trainer starts a rank in a session of its own, then is
    silent (model loading): PR_SET_PDEATHSIG alone would leave both running."""
    marker = f"rank-of-{tmp_path.name}"
    trainer = tmp_path / "trainer.py"
    trainer.write_text(
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', '{marker}'],"
        " start_new_session=True)\n"
        "time.sleep(120)\n"
    )
    worker = (
        "import sys\nfrom pathlib import Path\nfrom autotrain.trainers.training import run_trainer\n"
        f"run_trainer([sys.executable, {str(trainer)!r}], log_path=Path({str(tmp_path / 'log')!r}))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", worker])
    wait_for(lambda: _processes_with(marker), 30, "the trainer's rank to start")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_for(lambda: not _processes_with(marker), 10, "the rank to be killed with its worker")
    wait_for(
        lambda: not _processes_with(str(trainer)), 10, "the trainer to be killed with its worker"
    )


def test_recorded_trainer_sessions_are_killed_and_reused_pids_spared(tmp_path):
    leftover = subprocess.Popen(["sleep", "120"], start_new_session=True)
    records = device_records(tmp_path, "h1", [0, 1], "job-1")
    record_trainer(records, leftover.pid, "job-1")
    assert all(path.is_file() for path in records)
    assert device_records(tmp_path, "h1", [0, 1]) == records
    packed = subprocess.Popen(["sleep", "120"], start_new_session=True)  # beside it on GPU 0
    record_trainer(device_records(tmp_path, "h1", [0], "job-9"), packed.pid, "job-9")
    done = kill_recorded_trainers(device_records(tmp_path, "h1", [0, 1]), spare={"job-9"})
    assert packed.poll() is None, "a packed job's trainer is spared"
    packed.kill()
    assert leftover.wait(10) == -signal.SIGKILL
    assert "job job-1" in done[0]
    assert not any(path.exists() for path in records)
    records = device_records(tmp_path, "h1", [0, 1], "job-2")
    # a record whose pid now belongs to another process (other start time) kills nothing
    bystander = subprocess.Popen(["sleep", "120"], start_new_session=True)
    record_trainer(records[:1], bystander.pid, "job-2")
    stale = records[0].read_text().replace('"started": ', '"started": 1')
    records[0].write_text(stale)
    assert kill_recorded_trainers(records[:1]) == []
    time.sleep(0.2)
    assert bystander.poll() is None
    bystander.kill()


def test_guard_passes_on_the_exit_status(tmp_path):
    from autotrain.trainers.training import run_trainer

    result = run_trainer(
        [sys.executable, "-c", "import sys; print('bye'); sys.exit(3)"], log_path=tmp_path / "log"
    )
    assert result.returncode == 3 and "bye" in result.tail
    log = Path(tmp_path / "log").read_text()
    assert log.endswith("sys.exit(3)\nbye\n")  # the trainer's own command, then its output
