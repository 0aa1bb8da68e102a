"""The SDK: everything the CLI does, callable from Python.

from autotrain.pipeline import prepare_pipeline, run_pipeline, run_batch_pipeline
result = run_pipeline("examples/datasets/tiny_shapes", "Tiny", immediate=True)
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotrain.errors import AutotrainError
from autotrain.jobs.connection import job_store
from autotrain.jobs.job import Job
from autotrain.jobs.store import JobStore
from autotrain.profile import profile_for
from autotrain.settings import Settings, load_settings
from autotrain.spec import JobSpec
from autotrain.trainers.plan import TrainPlan
from autotrain.transfer import into_object_store
from autotrain.worker import phases
from autotrain.worker.phases import PhaseProgress

__all__ = [
    "PrepareResult",
    "ImmediateResult",
    "BatchResult",
    "prepare_pipeline",
    "prepare_batch",
    "run_pipeline",
    "run_batch_pipeline",
    "run_immediate",
    "job_store",
    "batch_specs",
    "check_dataset",
    "starting_variant",
]

log = logging.getLogger("autotrain.pipeline")


@dataclass
class PrepareResult:
    """Phases 1-3 for one dataset: what was (or, in a dry run, would be) done."""

    spec: JobSpec
    report: Any = None
    stage: Any = None
    plan: TrainPlan | None = None
    command: list[str] = field(default_factory=list)
    error: str | None = None
    dry_run: bool = False
    profile: Any = None  # the Profile used (its VRAM estimate and leaner variants)
    problems: list[str] = field(default_factory=list)  # dry run: host setup still missing

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ImmediateResult(PrepareResult):
    manifest: dict[str, Any] | None = None
    returncode: int | None = None


@dataclass
class BatchResult:
    batch_id: str | None
    name: str = ""
    jobs: list[Job] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (dataset, why)
    prepared: list[PrepareResult] = field(default_factory=list)


def prepare_pipeline(
    dataset_path: Path | str,
    profile: str,
    *,
    dataset_name: str | None = None,
    min_images: int = 1,
    skip_copy: bool = False,
    force: bool = False,
    dry_run: bool = False,
    settings: Settings | None = None,
    progress: PhaseProgress | None = None,
) -> PrepareResult:
    """Validate, stage and configure one dataset (phases 1-3). Raises AutotrainError on failure.

    `progress(phase, done, total)` is called while files are validated and staged.
    """
    settings = settings or load_settings()
    spec = JobSpec.for_dataset(
        dataset_path, profile, dataset_name, min_images=min_images, skip_copy=skip_copy, force=force
    )
    return _prepare(spec, settings, dry_run, progress)


def _prepare(
    spec: JobSpec, settings: Settings, dry_run: bool, progress: PhaseProgress | None = None
) -> PrepareResult:
    result = PrepareResult(spec=spec, dry_run=dry_run)
    if not dry_run:
        log.info("prepare %s (%s) from %s", spec.name, spec.profile, spec.dataset_path)
    result.report = phases.validate_phase(spec, settings, progress, dry_run=dry_run)
    if dry_run and result.report.setup_problems:
        result.problems = list(result.report.setup_problems)
        settings = _with_placeholders(settings, profile_for(spec, settings))
    result.stage = phases.prepare_phase(
        spec, result.report, settings, dry_run=dry_run, progress=progress
    )
    result.plan = phases.configure_phase(spec, result.report, settings, dry_run=dry_run)
    result.command = phases.trainer_command(spec, result.plan, settings)
    result.profile = profile_for(spec, settings)
    return result


def _with_placeholders(settings: Settings, profile: Any) -> Settings:
    """Settings whose missing sd-scripts folder and model files read `<setting>`, so that a
    dry run on a laptop prints the whole plan and trainer command; never used to train."""
    missing: dict[str, Path] = {}
    for setting in profile.models.values():
        value = getattr(settings, setting, None)
        if value is None or not Path(value).is_file():
            missing[setting] = Path(f"<{setting}>")
    if profile.backend == "kohya" and (
        settings.sd_scripts_dir is None or not Path(settings.sd_scripts_dir).is_dir()
    ):
        missing["sd_scripts_dir"] = Path("<sd_scripts_dir>")
    return settings.model_copy(update=missing)


def batch_specs(
    profile: str,
    *,
    datasets_dir: Path | str | None = None,
    dataset_paths: str | list[str] | None = None,
    **options: Any,
) -> tuple[list[JobSpec], list[tuple[JobSpec, str]]]:
    """One spec per dataset of a batch (`--datasets-dir` or `--dataset-paths`, not both).

    Returns the specs to prepare and those refused with why: datasets whose folders slugify to
    one name (`My Cat`, `My_Cat`) are refused, each naming the others, and only they.
    """
    from autotrain.datasets.discovery import find_datasets, parse_dataset_paths

    if bool(datasets_dir) == bool(dataset_paths):
        raise AutotrainError("Give exactly one of --datasets-dir or --dataset-paths.")
    if datasets_dir:
        paths = find_datasets(Path(datasets_dir))
    elif isinstance(dataset_paths, str):
        paths = parse_dataset_paths(dataset_paths)
    else:
        paths = [Path(p) for p in dataset_paths or []]
    specs = [JobSpec.for_dataset(p, profile, **options) for p in paths]
    by_name: dict[str, list[JobSpec]] = {}
    for spec in specs:
        by_name.setdefault(spec.name, []).append(spec)
    refused = [
        (spec, _name_collision(spec, same)) for same in by_name.values() if len(same) > 1
        for spec in same
    ]  # fmt: skip
    taken = {id(spec) for spec, _ in refused}
    return [s for s in specs if id(s) not in taken], refused


def _name_collision(spec: JobSpec, same: list[JobSpec]) -> str:
    others = ", ".join(str(s.dataset_path) for s in same if s is not spec)
    return (
        f"Not prepared: {spec.dataset_path} and {others} would both be named {spec.name!r} (a "
        "job's name comes from its folder's name, made safe for paths). Rename one of the "
        "folders, or queue it on its own with --dataset-name; the other datasets of the batch go on."
    )


def prepare_batch(
    profile: str,
    *,
    dry_run: bool = False,
    settings: Settings | None = None,
    progress: PhaseProgress | None = None,
    **selection: Any,
) -> BatchResult:
    """Phases 1-3 for every dataset of a batch; a failing dataset does not stop the others."""
    settings = settings or load_settings()
    result = BatchResult(batch_id=None)
    specs, refused = batch_specs(profile, **selection)
    for spec, why in refused:
        log.error("%s: %s", spec.dataset_path, why)
        result.prepared.append(PrepareResult(spec=spec, error=why, dry_run=dry_run))
    for spec in specs:
        try:
            result.prepared.append(_prepare(spec, settings, dry_run, progress))
        except AutotrainError as exc:
            log.error("%s: %s", spec.name, exc)
            result.prepared.append(PrepareResult(spec=spec, error=str(exc), dry_run=dry_run))
    return result


def run_pipeline(
    dataset_path: Path | str,
    profile: str,
    *,
    dataset_name: str | None = None,
    min_images: int = 1,
    gpu_ids: list[int] | None = None,
    host: str | None = None,
    skip_copy: bool = False,
    force: bool = False,
    immediate: bool = False,
    settings: Settings | None = None,
    on_output: Callable[[str], None] | None = None,
    progress: PhaseProgress | None = None,
    precheck: bool = True,
    notify_urls: list[str] | None = None,
    priority: str = "normal",
) -> Job | ImmediateResult:
    """Queue the five phases for one dataset and return the job (or run them here if `immediate`).

    `gpu_ids` pins the job to those GPUs of `host` (default: this host). Unless `precheck` is
    False (the caller did it), what can be checked here is checked before anything is queued.
    """
    settings = settings or load_settings()
    spec = JobSpec.for_dataset(
        dataset_path, profile, dataset_name, min_images=min_images, skip_copy=skip_copy, force=force,
        gpu_ids=gpu_ids or [], host=host, notify_urls=notify_urls or [], priority=priority,
    )  # fmt: skip
    if immediate:
        return run_immediate(spec, settings, on_output=on_output, progress=progress)
    from autotrain.datasets.precheck import check_before_queueing
    from autotrain.jobs.celery_app import configure_app
    from autotrain.jobs.queue import submit_job

    if precheck:
        check_before_queueing(spec, settings)
    store = _store_of_a_running_cluster(settings)
    configure_app(settings)
    data = into_object_store(spec, settings, progress)
    job = submit_job(store, spec, variant=_fitting_variant(store, spec, settings), data=data)
    log.info("queued %s as job %s", spec.name, job.id)
    return job


def check_dataset(dataset_path: Path | str, profile: str, *, dataset_name: str | None = None,
                  settings: Settings | None = None, **options: Any) -> JobSpec:  # fmt: skip
    """What `run_pipeline` checks before it queues (autotrain.datasets.precheck), on its own: the
    CLI checks before it starts a local cluster for the job. Returns the job's spec."""
    from autotrain.datasets.precheck import check_before_queueing

    spec = JobSpec.for_dataset(dataset_path, profile, dataset_name, **options)
    check_before_queueing(spec, settings or load_settings())
    return spec


def starting_variant(job: Job, settings: Settings | None = None) -> Any:
    """The leaner variant of its profile a new job starts with (the profile's ladder), None
    when it starts as is."""
    if not job.variant:
        return None
    return profile_for(job.spec, settings or load_settings()).variant(job.variant)


def _fitting_variant(store: JobStore, spec: JobSpec, settings: Settings) -> int:
    """The profile variant a new job starts with on the live fleet (autotrain.fleet.placement)."""
    from autotrain.fleet.placement import initial_variant

    variant, note = initial_variant(store.redis, profile_for(spec, settings),
                                    settings.vram_margin_gb)  # fmt: skip
    if note:
        log.warning("%s: %s", spec.name, note)
    return variant


def _store_of_a_running_cluster(settings: Settings) -> JobStore:
    """The job store; with no shared Redis configured, the workspace's local cluster (embedded
    Redis and this host's workers) is started first when it does not run, as `autotrain pipeline
    run` does, and the log says so."""
    from autotrain.hosts import ensure_local_cluster

    ensure_local_cluster(settings=settings, say=log.info)
    return job_store(settings)


def run_batch_pipeline(
    profile: str,
    *,
    datasets_dir: Path | str | None = None,
    dataset_paths: str | list[str] | None = None,
    max_concurrent: int = 1,
    batch_name: str | None = None,
    settings: Settings | None = None,
    **options: Any,
) -> BatchResult:
    """One queued job per dataset; at most `max_concurrent` of them train at once.

    The batch gets an id (in the result) and a name: `batch_name`, or the datasets folder's.
    """
    from autotrain.datasets.precheck import check_before_queueing
    from autotrain.jobs.celery_app import configure_app
    from autotrain.jobs.lease import create_batch
    from autotrain.jobs.queue import submit_job

    settings = settings or load_settings()
    if max_concurrent < 1:
        raise AutotrainError(f"--max-concurrent must be at least 1 (got {max_concurrent}).")
    profile_for(JobSpec(dataset_path=Path("."), name="x", profile=profile), settings)
    batch_id = f"b{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    specs, refused = batch_specs(
        profile,
        datasets_dir=datasets_dir,
        dataset_paths=dataset_paths,
        batch_id=batch_id,
        **options,
    )
    store = _store_of_a_running_cluster(settings)
    configure_app(settings)
    name = batch_name or (Path(datasets_dir).name if datasets_dir else "batch")
    create_batch(store.redis, batch_id, max_concurrent, name)
    result = BatchResult(batch_id=batch_id, name=name)
    result.rejected += [(str(spec.dataset_path), why) for spec, why in refused]
    for spec in specs:
        try:
            check_before_queueing(spec, settings)
            variant = _fitting_variant(store, spec, settings)
            data = into_object_store(spec, settings, None)
            result.jobs.append(submit_job(store, spec, variant=variant, data=data))
        except AutotrainError as exc:  # refused before queueing; the others go on
            result.rejected.append((str(spec.dataset_path), str(exc)))
    log.info("queued batch %s: %d jobs, max %d at once", batch_id, len(specs), max_concurrent)
    return result


def run_immediate(
    spec: JobSpec,
    settings: Settings,
    on_output: Callable[[str], None] | None = None,
    progress: PhaseProgress | None = None,
) -> ImmediateResult:
    """All five phases in this process, in the foreground, with no broker."""
    from autotrain.worker.recorder import ProgressRecorder, read_loss_history

    prepared = _prepare(spec, settings, dry_run=False, progress=progress)
    result = ImmediateResult(**vars(prepared))
    plan = result.plan
    assert plan is not None
    recorder = ProgressRecorder(plan.log_dir, plan.model_dir / "sample")
    try:
        run, command, resumed = phases.train_phase(
            spec, plan, settings, on_event=recorder, on_output=on_output
        )
    finally:
        recorder.close()
    result.returncode = run.returncode
    phases.raise_for_trainer(run, plan)
    info = phases.host_info() | {
        "command": command,
        "trainer_version": run.trainer_versions,
        "attempts_log": [{"attempt": 1, "resume": run.resume, "returncode": run.returncode}],
        "resumed_from": str(resumed) if resumed else None,
        "last_step": run.last_step,
        "last_loss": run.last_loss,
        "gpu": "local",
        "loss_history": read_loss_history(plan.log_dir),
        "timings": {
            "training_started_at": run.started_at,
            "training_finished_at": run.finished_at,
            "training_seconds": run.finished_at - run.started_at,
        },
    }
    result.manifest = phases.report_phase(spec, plan, settings, info)
    return result
