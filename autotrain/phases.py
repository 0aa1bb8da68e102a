"""The five phases as plain functions, shared by the Celery tasks and `--immediate` mode.

Each phase takes what the earlier ones produced and returns a JSON-safe result, so a task can
store it on the job record and the next task (maybe on another host) can pick it up.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autotrain.errors import TrainingError
from autotrain.plan import TrainPlan
from autotrain.profile import Profile, load_profile
from autotrain.progress import ProgressEvent
from autotrain.settings import Settings
from autotrain.spec import JobSpec
from autotrain.trainers import get_backend, newest_state_dir
from autotrain.training import TrainerRun, run_trainer
from autotrain.workspace import Workspace

__all__ = [
    "profile_for",
    "validate_phase",
    "prepare_phase",
    "configure_phase",
    "trainer_command",
    "train_phase",
    "report_phase",
]


def profile_for(spec: JobSpec, settings: Settings) -> Profile:
    return load_profile(spec.profile, Workspace(settings.workspace).templates_dir)


# progress(phase, done, total), for long phases on large datasets
PhaseProgress = Callable[[str, int, int], None]


def validate_phase(spec: JobSpec, settings: Settings, progress: PhaseProgress | None = None):
    """Phase 1: the dataset, profile and host checked; raises ValidationError on anything fatal."""
    from autotrain.validate import validate_dataset

    profile = profile_for(spec, settings)
    profile.load_template()  # "Configuration file not found" belongs to validation
    report = validate_dataset(spec, settings, profile, progress=_for_phase(progress, "validate"))
    report.raise_for_errors()
    return report


def prepare_phase(
    spec: JobSpec,
    report,
    settings: Settings,
    *,
    dry_run: bool = False,
    progress: PhaseProgress | None = None,
):
    """Phase 2: the valid images staged atomically under input/<name>/."""
    from autotrain.stage import stage_dataset

    return stage_dataset(
        report,
        Workspace(settings.workspace),
        min_images=spec.min_images,
        skip_copy=spec.skip_copy,
        force=spec.force,
        dry_run=dry_run,
        progress=_for_phase(progress, "stage"),
    )


def _for_phase(progress: PhaseProgress | None, phase: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(phase, done, total)


def configure_phase(
    spec: JobSpec, report, settings: Settings, *, dry_run: bool = False
) -> TrainPlan:
    """Phase 3: the trainer config, dataset config and sample prompts (only rendered in a dry run)."""
    from autotrain.configure import render_plan, write_plan

    plan = render_plan(spec, profile_for(spec, settings), settings, report)
    if not dry_run:
        write_plan(plan)
    return plan


def trainer_command(
    spec: JobSpec,
    plan: TrainPlan,
    settings: Settings,
    resume_from: Path | None = None,
    gpus: list[int] | None = None,
) -> list[str]:
    """The trainer's argument list; `gpus` are the physical GPUs it runs on (default: pinned ones)."""
    profile = profile_for(spec, settings)
    gpus = spec.gpu_ids if gpus is None else gpus
    return get_backend(profile).command(plan, profile, settings, gpus, resume_from)


def train_phase(
    spec: JobSpec,
    plan: TrainPlan,
    settings: Settings,
    *,
    on_event: Callable[[ProgressEvent], None] | None = None,
    on_output: Callable[[str], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    gpus: list[int] | None = None,
    resume_since: float | None = None,
) -> tuple[TrainerRun, list[str], Path | None]:
    """Phase 4: run the trainer, resuming from the newest saved state when one exists.

    `gpus` are the physical GPUs the trainer may use; None keeps the caller's own view (a CPU
    worker, or `--immediate`). Only states saved since `resume_since` (the job's first training
    attempt) are resumed. Returns the run, the command and the state it resumed from.
    """
    resume_from = newest_state_dir(plan.model_dir, since=resume_since or time.time())
    command = trainer_command(spec, plan, settings, resume_from, gpus)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # sd-scripts logs through rich, which wraps at 80 columns when not on a terminal.
    env.setdefault("COLUMNS", "200")
    if gpus is not None:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    run = run_trainer(
        command,
        log_path=plan.log_dir / "trainer.log",
        env=env,
        cwd=settings.workspace,
        on_event=on_event,
        on_output=on_output,
        should_cancel=should_cancel,
        grace_seconds=settings.cancel_grace_seconds,
    )
    return run, command, resume_from


def raise_for_trainer(run: TrainerRun, plan: TrainPlan) -> None:
    """A failed run becomes a TrainingError quoting the line that explains it."""
    if run.succeeded or run.cancelled:
        return
    log = plan.log_dir / "trainer.log"
    if run.error_event:
        message = run.error_event.get("message") or "trainer error"
        raise TrainingError(
            f"{message}\n  > {run.error_event.get('line', '').strip()}\n  (log: {log})"
        )
    last = "\n  > ".join(run.tail[-5:]) or "(no output)"
    raise TrainingError(
        f"Trainer exited with code {run.returncode}. Last output:\n  > {last}\n  (log: {log})"
    )


def report_phase(
    spec: JobSpec, plan: TrainPlan, settings: Settings, run_info: dict[str, Any]
) -> dict[str, Any]:
    """Phase 5: verify the weights, write run.json and the loss curve; returns the manifest."""
    from autotrain.report import write_run_report

    return write_run_report(spec, plan, settings, run_info)


def host_info() -> dict[str, str]:
    return {"host": socket.gethostname(), "python": sys.version.split()[0]}
