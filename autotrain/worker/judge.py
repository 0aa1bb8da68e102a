"""The trainer as the judge of a staged dataset, at phase 3 and, where it could not ask there,
at the start of phase 4 (see autotrain.trainers.trainer_check).

At configure time, on the prep host: when sd-scripts can be asked there, a rejection fails the job
before it is queued for a GPU, naming every file and the fix, and its warnings join the
validation report's. When it cannot (no sd-scripts on the prep host), the plan says so and the
train phase asks first thing, before the trainer starts, failing the job the same way.
Profiles of other backends (Tiny) keep autotrain's own checks only.
"""

from __future__ import annotations

import logging
from pathlib import Path

from autotrain.datasets.discovery import Problem
from autotrain.errors import ValidationError
from autotrain.profile import Profile
from autotrain.settings import Settings
from autotrain.spec import JobSpec
from autotrain.trainers.plan import TrainPlan
from autotrain.trainers.trainer_check import TrainerCheck, ask_the_trainer
from autotrain.workspace import Workspace

__all__ = ["judge_at_configure", "judge_before_training"]

log = logging.getLogger("autotrain.pipeline")


def judge_at_configure(
    spec: JobSpec, report, plan: TrainPlan, profile: Profile, settings: Settings
) -> TrainerCheck | None:
    """Ask sd-scripts about the written plan; raises ValidationError when it would reject it."""
    if profile.backend != "kohya":
        return None
    check = _ask(spec, plan, profile, settings)
    if not check.available:
        plan.trainer_check_deferred = check.why_unavailable
        log.info("%s: sd-scripts cannot check the dataset here (%s); the train phase will",
                 spec.name, check.why_unavailable)  # fmt: skip
        return check
    _keep_warnings(spec, plan, check, report)
    if check.rejected:
        raise ValidationError(check.rejection_message(spec.name, str(profile.script)))
    return check


def judge_before_training(
    spec: JobSpec, plan: TrainPlan, profile: Profile, settings: Settings
) -> TrainerCheck | None:
    """Phase 4's check, only when phase 3 could not make it; raises ValidationError."""
    if profile.backend != "kohya" or not plan.trainer_check_deferred:
        return None
    check = _ask(spec, plan, profile, settings)
    if not check.available:
        _note(plan, f"sd-scripts could not check the dataset ({check.why_unavailable})")
        return check
    _keep_warnings(spec, plan, check, None)
    for line in plan.trainer_warnings:
        _note(plan, line)
    if check.rejected:
        raise ValidationError(check.rejection_message(spec.name, str(profile.script)))
    return check


def _ask(spec: JobSpec, plan: TrainPlan, profile: Profile, settings: Settings) -> TrainerCheck:
    staged = Workspace(settings.workspace).input_dir(spec.name)
    return ask_the_trainer(plan, profile, settings, staged, Path(spec.dataset_path))


def _keep_warnings(spec: JobSpec, plan: TrainPlan, check: TrainerCheck, report) -> None:
    """Where validation's warnings go: the report (per relative path) and the plan."""
    plan.trainer_warnings = [verdict.line() for verdict in check.warnings]
    for verdict in check.warnings:
        log.warning("%s: %s", spec.name, verdict.line())
        if report is not None:
            reason = f"{verdict.what}. Fix: {verdict.fix}"
            report.problems.append(Problem(path=verdict.relpath or verdict.file, reason=reason))


def _note(plan: TrainPlan, line: str) -> None:
    """A line in the trainer log, where a user reading why a run went as it did looks."""
    log.warning(line)
    plan.log_dir.mkdir(parents=True, exist_ok=True)
    with open(plan.log_dir / "trainer.log", "a", encoding="utf-8") as trainer_log:
        trainer_log.write(f"autotrain: warning: {line}\n")
