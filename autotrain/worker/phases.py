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
from autotrain.profile import Profile, profile_for
from autotrain.settings import Settings
from autotrain.spec import JobSpec
from autotrain.trainers import get_backend
from autotrain.trainers.failures import killed_by_sigkill, sigkill_message
from autotrain.trainers.plan import TrainPlan
from autotrain.trainers.progress import ProgressEvent
from autotrain.trainers.resume import (
    ResumeLaunch,
    ResumeRecord,
    choose_state,
    fold_resumed_attempts,
)
from autotrain.trainers.training import TrainerRun, run_trainer
from autotrain.trainers.watchdog import StallWatchdog
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


# progress(phase, done, total), for long phases on large datasets
PhaseProgress = Callable[[str, int, int], None]


def validate_phase(
    spec: JobSpec,
    settings: Settings,
    progress: PhaseProgress | None = None,
    *,
    dry_run: bool = False,
):
    """Phase 1: the dataset, profile and host checked; raises ValidationError on anything fatal.

    A dry run goes on past the host's setup problems (a model file not configured, no
    sd-scripts): it plans with placeholders and lists them (`report.setup_problems`).
    """
    from autotrain.datasets.validate import validate_dataset

    profile = profile_for(spec, settings)
    profile.load_template()  # "Configuration file not found" belongs to validation
    report = validate_dataset(spec, settings, profile, progress=_for_phase(progress, "validate"))
    if dry_run:
        report.fatal = [f for f in report.fatal if f not in report.setup_problems]
    report.raise_for_errors()
    return report


def prepare_phase(
    spec: JobSpec,
    report,
    settings: Settings,
    *,
    dry_run: bool = False,
    progress: PhaseProgress | None = None,
    job_id: str | None = None,
):
    """Phase 2: the valid images staged atomically under input/<name>/, output/<name>/ claimed.

    `job_id` owns the output folder; an earlier run's files there are moved under `runs/`.
    """
    from autotrain.datasets.stage import stage_dataset
    from autotrain.trainers.outputs import claim_output_dir

    workspace = Workspace(settings.workspace)
    staged = stage_dataset(
        report,
        workspace,
        min_images=spec.min_images,
        skip_copy=spec.skip_copy,
        force=spec.force,
        dry_run=dry_run,
        progress=_for_phase(progress, "stage"),
    )
    owner = job_id or f"local-{time.strftime('%Y%m%d-%H%M%S')}"
    note = claim_output_dir(workspace, spec.name, owner, spec.profile, dry_run=dry_run)
    if note:
        staged.notes.append(note)
    if not dry_run:
        workspace.model_dir(spec.name).mkdir(parents=True, exist_ok=True)
        workspace.log_dir(spec.name).mkdir(parents=True, exist_ok=True)
    return staged


def _for_phase(progress: PhaseProgress | None, phase: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(phase, done, total)


def configure_phase(
    spec: JobSpec, report, settings: Settings, *, dry_run: bool = False, variant: int = 0
) -> TrainPlan:
    """Phase 3: the trainer config, dataset config and sample prompts (only rendered in a dry run).

    `variant` selects a leaner variant of the profile (after an out-of-memory; 0 is as is).
    """
    from autotrain.trainers.configure import render_plan, write_plan

    profile = profile_for(spec, settings)
    plan = render_plan(spec, profile, settings, report, variant)
    if not dry_run:
        write_plan(plan)
        from autotrain.worker.judge import judge_at_configure

        judge_at_configure(spec, report, plan, profile, settings)  # sd-scripts reads the dataset
    return plan


def trainer_command(
    spec: JobSpec,
    plan: TrainPlan,
    settings: Settings,
    resume: ResumeLaunch | None = None,
    gpus: list[int] | None = None,
) -> list[str]:
    """The trainer's argument list; `gpus` are the physical GPUs it runs on (default: pinned ones)."""
    profile = profile_for(spec, settings)
    gpus = spec.gpu_ids if gpus is None else gpus
    return get_backend(profile).command(plan, profile, settings, gpus, resume)


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
    on_start: Callable[[int], None] | None = None,
    attempt: int = 1,
    extra_versions: dict[str, str | None] | None = None,
) -> tuple[TrainerRun, list[str], Path | None]:
    """Phase 4: run the trainer, continuing from the newest complete saved state when one exists.

    `gpus` are the physical GPUs the trainer may use; None keeps the caller's own view (a CPU
    worker, or `--immediate`). Only states saved since `resume_since` (the job's first training
    attempt) are resumed, and only with the trainer they were saved with. Returns the run, the
    command and the state it resumed from.
    """
    from autotrain.worker.judge import judge_before_training

    profile = profile_for(spec, settings)
    judge_before_training(spec, plan, profile, settings)  # when configure could not ask sd-scripts
    backend = get_backend(profile)
    gpus_used = spec.gpu_ids if gpus is None else gpus
    fold_resumed_attempts(plan.model_dir, plan.output_name)  # what a crashed attempt left
    if resume_since is not None and (done := _already_trained(plan, resume_since)):
        return done, [], None
    versions = backend.versions(profile, settings) | (extra_versions or {})
    resume = _plan_resume(backend, profile, plan, versions, resume_since, attempt)
    command = backend.command(plan, profile, settings, gpus_used, resume)
    for path, text in backend.launch_files(plan, profile, gpus_used).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # sd-scripts logs through rich, which wraps at 80 columns when not on a terminal.
    env.setdefault("COLUMNS", "200")
    if gpus is not None:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    record = ResumeRecord.load(plan.model_dir)
    parser_options = {}
    if resume is not None:
        total = resume.end_step or record.total_steps
        parser_options = {"step_offset": resume.step_offset, "fixed_total": total}
    try:
        run = run_trainer(
            command,
            log_path=plan.log_dir / "trainer.log",
            env=env,
            cwd=settings.workspace,
            on_event=_learning(plan.model_dir, on_event, first=resume is None),
            on_output=on_output,
            should_cancel=should_cancel,
            grace_seconds=settings.cancel_grace_seconds,
            on_start=on_start,
            parser_options=parser_options,
            watchdog=StallWatchdog(
                settings.stall_factor,
                settings.stall_floor_seconds,
                settings.stall_ceiling_seconds,
                settings.stall_startup_seconds,
            ),  # fmt: skip
        )
    finally:
        fold_resumed_attempts(plan.model_dir, plan.output_name)
    run.trainer_versions = versions
    if resume is not None:
        run.resume = {"state": str(resume.state), "saved_step": resume.saved_step,
                      "retrained_steps": resume.retrained_steps, "how": resume.note}  # fmt: skip
    return run, command, resume.state if resume else None


def _already_trained(plan: TrainPlan, since: float) -> TrainerRun | None:
    """A run that finished (its final weights are complete) but whose worker died before
    recording it is not trained again: the weights are what the next attempt would make."""
    from autotrain.trainers.report import finished_weights

    final = finished_weights(plan, since)
    if final is None:
        return None
    total = ResumeRecord.load(plan.model_dir).total_steps or plan.total_steps
    now = time.time()
    line = f"autotrain: {final} is complete: the training had finished; not training it again"
    with open(plan.log_dir / "trainer.log", "a", encoding="utf-8") as log:
        log.write(f"\n{line}\n")
    return TrainerRun(returncode=0, cancelled=False, started_at=now, finished_at=now,
                      last_step=total, total=total, tail=[line])  # fmt: skip


def _plan_resume(backend, profile: Profile, plan: TrainPlan, versions: dict[str, str | None],
                 since: float | None, attempt: int) -> ResumeLaunch | None:  # fmt: skip
    """The resume of this attempt, None to start afresh; refuses a trainer that changed."""
    record = ResumeRecord.load(plan.model_dir)
    state = choose_state(
        plan.model_dir,
        plan.output_name,
        since=time.time() if since is None else since,
        total=record.total_steps or plan.total_steps,
    )
    if state is None:
        record.trainer = versions
        record.save(plan.model_dir)
        return None
    # The driver is recorded, never a reason to refuse a state: a state is the trainer's files,
    # and a job that moves to another host of the fleet (another provider) meets another driver.
    changed = {
        key: (old, versions.get(key))
        for key, old in (record.trainer or {}).items()
        if key != "driver" and old and versions.get(key) and versions.get(key) != old
    }
    if changed:
        listing = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changed.items())
        raise TrainingError(
            f"Not resuming from {state}: the trainer changed since it was saved ({listing}). A "
            "state is only loaded by the trainer that wrote it. Restore that version, or move "
            f"the *-state folders out of {plan.model_dir} to train this job from the start."
        )
    resume = backend.plan_resume(profile, plan, state, record, attempt)
    if resume.output_name:
        record.attempts[resume.output_name] = {
            "name": resume.name_offset, "epoch": resume.epoch_offset
        }  # fmt: skip
        record.save(plan.model_dir)
    return resume


def _learning(model_dir: Path, on_event, first: bool):
    """Pass events on; from a first attempt, keep what a resume needs to know (batches, total)."""

    def handle(event: ProgressEvent) -> None:
        if first and event.kind in ("batches_per_epoch", "total") and event.total:
            record = ResumeRecord.load(model_dir)
            if event.kind == "batches_per_epoch":
                record.batches_per_epoch = event.total
            else:
                record.total_steps = event.total
            record.save(model_dir)
        if on_event:
            on_event(event)

    return handle


def raise_for_trainer(run: TrainerRun, plan: TrainPlan) -> None:
    """A failed run becomes a TrainingError quoting the line that explains it."""
    if run.succeeded or run.cancelled:
        return
    log = plan.log_dir / "trainer.log"
    error = run.error_event or {}
    if run.guard_lost:  # queued jobs resume (autotrain.worker.recovery); here, say so
        raise TrainingError(
            f"The trainer's guard process was killed at step {run.last_step}, and the trainer "
            f"was stopped with it; run the job again to resume from its newest saved state. "
            f"(log: {log})"
        )
    if killed_by_sigkill(run.returncode, error.get("cause")):
        why = sigkill_message(run.returncode, plan.profile, plan.host_memory_gb)
        quoted = error.get("line", "").strip() or "\n  > ".join(run.tail[-5:]) or "(no output)"
        raise TrainingError(f"{why}\n  > {quoted}\n  (log: {log})")
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
    from autotrain.trainers.report import write_run_report

    return write_run_report(spec, plan, settings, run_info)


def host_info() -> dict[str, str]:
    return {"host": socket.gethostname(), "python": sys.version.split()[0]}
