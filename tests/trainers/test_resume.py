"""Resume against sd-scripts' real arithmetic, through the stand-in and the real accelerate launcher.

The stand-in (tests/standins/sd_scripts/) does what sd-scripts 48d368fa does on `--resume`: the
LoRA script restarts its bar at 0 and its global_step inside the epoch, the full fine-tune
scripts run the whole schedule again. These tests show the defect with a plain `--resume`, and
that phase 4 turns it into a run that continues to the true total.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from autotrain.errors import TrainingError
from autotrain.trainers.kohya import KohyaBackend
from autotrain.trainers.progress import parse_text
from autotrain.trainers.report import finished_weights
from autotrain.trainers.resume import ResumeRecord, choose_state
from autotrain.worker import phases
from tests.helpers_kohya import (
    STANDIN,
    launch_files,
    output_of,
    quick_profile,
    run,
    staged_plan,
)

pytestmark = pytest.mark.slow

# 2 images x 10 repeats = 20 steps per epoch; 3 epochs = 60 steps; a save every 15 steps.
SCHEDULE = {"max_train_epochs": 3, "save_every_n_steps": 15, "save_last_n_steps_state": 15,
            "sample_every_n_steps": 15}  # fmt: skip


def _train(settings, plan, monkeypatch, **cues):
    """Phase 4 as a worker runs it; returns the run and every event the job record saw."""
    for name in (
        "STANDIN_CRASH_AT_STEP",
        "STANDIN_CRASH_IN_SAVE_AT_STEP",
        "STANDIN_SLEEP_PER_STEP",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in cues.items():
        monkeypatch.setenv(name, value)
    events = []
    spec = _spec(plan)
    run, command, resumed = phases.train_phase(
        spec, plan, settings, on_event=events.append, gpus=[0], resume_since=0, attempt=2
    )
    return run, [e for e in events if e.kind == "step"], resumed


def _spec(plan):
    from autotrain.spec import JobSpec

    return JobSpec(dataset_path=Path("/data/cat"), name=plan.name, profile=plan.profile)


def _files(plan) -> list[str]:
    return sorted(p.name for p in plan.model_dir.iterdir() if not p.name.startswith("."))


def test_lora_plain_resume_restarts_the_epoch_and_ends_short(kohya_settings):
    """What sd-scripts itself does (train_network.py:1270-1275): the defect autotrain works around."""
    profile = quick_profile(kohya_settings, **SCHEDULE)
    plan = staged_plan(kohya_settings, profile)
    backend = KohyaBackend()
    crashed = run(
        launch_files(backend, plan, profile, kohya_settings, [0]), STANDIN_CRASH_AT_STEP="37"
    )
    assert crashed.returncode != 0
    state = plan.model_dir / "cat-step00000030-state"
    assert json.loads((state / "train_state.json").read_text())["current_step"] == 30
    command = launch_files(backend, plan, profile, kohya_settings, [0]) + ["--resume", str(state)]
    resumed = run(command)
    assert resumed.returncode == 0, output_of(resumed)
    steps = [e for e in parse_text(output_of(resumed)) if e.kind == "step"]
    assert steps[0].step == 0 and (steps[-1].step, steps[-1].total) == (40, 60)  # ends short
    final = json.loads((plan.model_dir / "cat-state" / "train_state.json").read_text())
    assert final["current_step"] == 40  # counted from the restart, not 60


def test_lora_resume_continues_to_the_total_without_retraining(kohya_settings, monkeypatch):
    profile = quick_profile(kohya_settings, **SCHEDULE)
    plan = staged_plan(kohya_settings, profile)
    first, first_steps, _ = _train(kohya_settings, plan, monkeypatch, STANDIN_CRASH_AT_STEP="37")
    assert first.returncode != 0 and first_steps[-1].step == 36
    second, steps, resumed = _train(kohya_settings, plan, monkeypatch)
    assert second.succeeded, second.tail
    assert resumed == plan.model_dir / "cat-step00000030-state"
    assert second.resume["saved_step"] == 30 and second.resume["retrained_steps"] == 0
    # the job saw the true step: from 30 to 60 of 60, i.e. 30 steps trained, none twice
    assert (steps[0].step, steps[-1].step, steps[-1].total) == (30, 60, 60)
    assert sorted({e.step for e in steps} - {30}) == list(range(31, 61))
    files = _files(plan)
    # checkpoint names are true steps, in order; the first run's files are untouched
    assert [f for f in files if f.endswith(".safetensors")] == [
        "cat-step00000015.safetensors", "cat-step00000030.safetensors",
        "cat-step00000035.safetensors", "cat-step00000050.safetensors", "cat.safetensors",
    ]  # fmt: skip
    assert not [f for f in files if ".r2" in f]
    final = json.loads((plan.model_dir / "cat-state" / "train_state.json").read_text())
    assert final["current_step"] == 60
    samples = sorted(p.name[:10] for p in (plan.model_dir / "sample").iterdir())
    assert samples == ["cat_000015", "cat_000030", "cat_000035", "cat_000050"]


def test_full_finetune_resume_trains_only_the_epochs_left(kohya_settings, monkeypatch):
    profile = quick_profile(kohya_settings, name="QuickFlux", base="Flux", **SCHEDULE)
    plan = staged_plan(kohya_settings, profile)
    first, _, _ = _train(kohya_settings, plan, monkeypatch, STANDIN_CRASH_AT_STEP="37")
    assert first.returncode != 0
    assert not (plan.model_dir / "cat-step00000030-state" / "train_state.json").exists()
    second, steps, _ = _train(kohya_settings, plan, monkeypatch)
    assert second.succeeded, second.tail
    assert "--max_train_epochs" in second.resume["how"] or "epoch" in second.resume["how"]
    # weights and optimizer from step 30; the epoch holding it (steps 21-30) is trained again
    assert second.resume["retrained_steps"] == 10
    assert (steps[0].step, steps[-1].step, steps[-1].total) == (20, 60, 60)
    assert [f for f in _files(plan) if f.endswith(".safetensors")] == [
        "cat-step00000015.safetensors", "cat-step00000030.safetensors",
        "cat-step00000035.safetensors", "cat-step00000050.safetensors", "cat.safetensors",
    ]  # fmt: skip


def test_a_half_written_state_and_the_final_state_are_never_resumed(kohya_settings, monkeypatch):
    profile = quick_profile(kohya_settings, **SCHEDULE)
    plan = staged_plan(kohya_settings, profile)
    first, _, _ = _train(kohya_settings, plan, monkeypatch, STANDIN_CRASH_IN_SAVE_AT_STEP="30")
    assert first.returncode != 0
    half = plan.model_dir / "cat-step00000030-state"
    assert (half / "train_state.json").is_file() and not (half / "optimizer.bin").exists()
    assert choose_state(plan.model_dir, "cat", since=0) == plan.model_dir / "cat-step00000015-state"
    second, steps, _ = _train(kohya_settings, plan, monkeypatch)
    assert second.succeeded and steps[0].step == 15 and steps[-1].step == 60
    assert (plan.model_dir / "cat-state").is_dir()  # saved before the final model ...
    assert choose_state(plan.model_dir, "cat", since=0).name != "cat-state"  # ... never resumed


def test_resume_is_refused_when_the_trainer_changed(kohya_settings, monkeypatch, tmp_path):
    checkout = tmp_path / "sd-scripts"  # the stand-in as a git checkout
    (checkout / ".git").mkdir(parents=True)
    for script in STANDIN.glob("*.py"):
        (checkout / script.name).symlink_to(script)
    (checkout / ".git" / "HEAD").write_text("48d368fa557731ad0488c07304dfeba8c07910eb\n")
    kohya_settings = kohya_settings.model_copy(update={"sd_scripts_dir": checkout})
    profile = quick_profile(kohya_settings, **SCHEDULE)
    plan = staged_plan(kohya_settings, profile)
    first, _, _ = _train(kohya_settings, plan, monkeypatch, STANDIN_CRASH_AT_STEP="37")
    assert choose_state(plan.model_dir, "cat", since=0) is not None
    assert first.trainer_versions["sd_scripts_commit"].startswith("48d368fa")
    assert first.trainer_versions["accelerate"]  # what the trainer's Python has
    (checkout / ".git" / "HEAD").write_text("0123456789abcdef0123456789abcdef01234567\n")
    with pytest.raises(TrainingError, match="sd_scripts_commit 48d368fa.* -> 01234567"):
        _train(kohya_settings, plan, monkeypatch)
    assert ResumeRecord.load(plan.model_dir).attempts == {}  # nothing was started


def test_a_finished_training_whose_worker_died_is_not_trained_again(kohya_settings, monkeypatch):
    profile = quick_profile(kohya_settings, **SCHEDULE)
    plan = staged_plan(kohya_settings, profile)
    started = time.time() - 1
    first, _, _ = _train(kohya_settings, plan, monkeypatch)  # it finished; say the worker died then
    assert first.succeeded
    events = []
    again, command, _ = phases.train_phase(
        _spec(plan), plan, kohya_settings, on_event=events.append, gpus=[0], resume_since=started
    )
    assert again.succeeded and command == [] and not events, "no trainer was started"
    assert "not training it again" in (plan.log_dir / "trainer.log").read_text()
    # a final file cut short by a crash while writing it does not count
    final = plan.model_dir / "cat.safetensors"
    final.write_bytes(final.read_bytes()[:-2])
    assert finished_weights(plan, started) is None
    run, _steps, resumed = _train(kohya_settings, plan, monkeypatch)
    # trained again from the last state short of the end (one at step 60 could not resume)
    assert resumed == plan.model_dir / "cat-step00000045-state"
    assert run.succeeded and finished_weights(plan, started)
