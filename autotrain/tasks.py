"""The five phase tasks. Each takes a job id, works from the job record and returns the id.

A task first checks the job is still wanted (a cancelled job never starts), holds the job's lease
while it works, and records every outcome on the job record: that record, not the Celery task
state, is what users see.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

from celery import Task
from celery.exceptions import Ignore

from autotrain import phases
from autotrain.celery_app import app
from autotrain.connection import get_redis
from autotrain.errors import AutotrainError
from autotrain.guard import device_records, kill_recorded_trainers, record_trainer
from autotrain.heartbeat import WORKER_PREFIX  # importing it registers the worker signals
from autotrain.job import Job, JobState, JobStore
from autotrain.lease import (
    Lease,
    acquire_batch_slot,
    acquire_gpus,
    hold_lease,
    release_batch_slot,
    release_gpus,
    renew_gpus,
)
from autotrain.plan import TrainPlan
from autotrain.queue import current_host, dispatch_training
from autotrain.recorder import ProgressRecorder, read_loss_history
from autotrain.settings import Settings, load_settings
from autotrain.worker import compute_processes, driver_version
from autotrain.workspace import Workspace

__all__ = ["validate", "prepare", "configure", "train", "report"]

log = logging.getLogger("autotrain.pipeline")


@lru_cache(maxsize=1)
def worker_settings() -> Settings:
    return load_settings()


def worker_store() -> JobStore:
    settings = worker_settings()
    return JobStore(get_redis(settings), settings.progress_stream_maxlen)


def worker_gpu() -> int | None:
    """The physical GPU this worker owns (set by `autotrain worker`), None on a CPU worker."""
    value = os.environ.get("AUTOTRAIN_GPU_INDEX")
    return int(value) if value not in (None, "") else None


@dataclass
class PhaseContext:
    job: Job
    store: JobStore
    settings: Settings
    lease: Lease


@contextmanager
def phase(task: Task, job_id: str, state: JobState) -> Iterator[PhaseContext]:
    """Enter a phase: skip cancelled jobs, take the lease, record failure on the job."""
    store, settings = worker_store(), worker_settings()
    job = store.get(job_id)
    if job.is_final or job.cancel_requested:
        _finish_cancelled(store, job)
        raise Ignore()
    fields = {"worker": task.request.hostname, "host": current_host()}
    if job.started_at is None:
        fields["started_at"] = time.time()
    store.set_state(job_id, state, **fields)
    log.info("%s %s: %s on %s", job.name, job_id, state.value, task.request.hostname)
    try:
        with hold_lease(
            store.redis, job_id, task.request.hostname or "?", settings.lease_seconds
        ) as lease:
            yield PhaseContext(store.get(job_id), store, settings, lease)
    except AutotrainError as exc:
        _fail(store, store.get(job_id), str(exc))
        raise
    except Ignore:
        raise
    except Exception as exc:
        _fail(store, store.get(job_id), f"{type(exc).__name__}: {exc}")
        raise


@app.task(name="autotrain.validate", bind=True)
def validate(self: Task, job_id: str) -> str:
    with phase(self, job_id, JobState.VALIDATING) as ctx:
        report = phases.validate_phase(ctx.job.spec, ctx.settings, _files_progress(ctx))
        ctx.store.put_data(job_id, "report", report.model_dump(mode="json"))
    return job_id


@app.task(name="autotrain.prepare", bind=True)
def prepare(self: Task, job_id: str) -> str:
    with phase(self, job_id, JobState.PREPARING) as ctx:
        staged = phases.prepare_phase(
            ctx.job.spec, _report(ctx), ctx.settings, progress=_files_progress(ctx), job_id=job_id
        )
        ctx.store.put_data(job_id, "stage", staged.model_dump(mode="json"))
    return job_id


@app.task(name="autotrain.configure", bind=True)
def configure(self: Task, job_id: str) -> str:
    with phase(self, job_id, JobState.CONFIGURING) as ctx:
        plan = phases.configure_phase(ctx.job.spec, _report(ctx), ctx.settings)
        ctx.store.update(job_id, plan=plan.model_dump(mode="json"), total=plan.total_steps)
        ctx.store.set_state(job_id, JobState.WAITING_GPU, worker=None)
    return job_id


@app.task(name="autotrain.train", bind=True)
def train(self: Task, job_id: str) -> str:
    store, settings = worker_store(), worker_settings()
    job = store.get(job_id)
    if job.is_final or job.cancel_requested:
        _finish_cancelled(store, job)
        raise Ignore()
    batch_id = job.spec.batch_id
    if batch_id and not acquire_batch_slot(store.redis, batch_id, job_id, job.created_at):
        store.set_state(job_id, JobState.WAITING_GPU, worker=None)
        log.info("%s %s: parked, its batch is at --max-concurrent", job.name, job_id)
        raise Ignore()
    try:
        _train(self, store, settings, store.get(job_id))
    finally:
        if batch_id:
            nxt = release_batch_slot(store.redis, batch_id, job_id)
            if nxt:
                dispatch_training(store, nxt)
    return job_id


def _train(task: Task, store: JobStore, settings: Settings, job: Job) -> None:
    plan = TrainPlan.model_validate(job.plan)
    host, own_gpu = current_host(), worker_gpu()
    gpus = list(job.spec.gpu_ids) or ([own_gpu] if own_gpu is not None else [])
    worker = task.request.hostname or "?"
    with phase(task, job.id, JobState.WAITING_GPU) as ctx:
        cancelled = lambda: store.cancel_requested(job.id)  # noqa: E731
        if not acquire_gpus(store.redis, host, gpus, job.id, settings.lease_seconds, cancelled):
            _finish_cancelled(store, store.get(job.id))
            raise Ignore()
        ctx.lease.extra.append(
            lambda: renew_gpus(store.redis, host, gpus, job.id, settings.lease_seconds)
        )
        attempt = job.attempt + 1
        gpu_label = ",".join(map(str, gpus)) or "cpu"
        first_started = job.training_started_at or time.time()
        busy_key = f"{WORKER_PREFIX}{worker}:job"  # read by `autotrain status`

        def mark_busy() -> None:
            store.redis.set(busy_key, job.id, ex=int(settings.lease_seconds))

        try:
            store.set_state(
                job.id, JobState.TRAINING, attempt=attempt, gpu=gpu_label, train_worker=worker,
                training_started_at=first_started,
            )  # fmt: skip
            mark_busy()
            ctx.lease.extra.append(mark_busy)
            run, command, resumed = _run_trainer(
                task, store, settings, job, plan, gpus, first_started, ctx.lease
            )
        finally:
            release_gpus(store.redis, host, gpus, job.id)
            store.redis.delete(busy_key)
        if ctx.lease.lost.is_set():
            raise Ignore()  # re-queued meanwhile: the job belongs to its new attempt
        if run.cancelled:
            _finish_cancelled(store, store.get(job.id))
            raise Ignore()
        _record_attempt(store, job.id, attempt, worker, run, command, resumed, gpu_label, host)
        phases.raise_for_trainer(run, plan)
        store.update(job.id, training_finished_at=time.time())


def _run_trainer(task: Task, store: JobStore, settings: Settings, job: Job, plan: TrainPlan,
                 gpus: list[int], first_started: float, lease: Lease):  # fmt: skip
    """Phase 4 with its events going to the job's stream, progress.jsonl and Flower.

    No trainer outlives its job: before the trainer starts, what is left of an earlier one on
    these GPUs (a worker killed with its guard) is killed; while it runs, its session is recorded
    per GPU for the supervisor and a restarted worker to act on (autotrain.guard).
    """
    records = device_records(Workspace(settings.workspace).state_dir, current_host(), gpus)
    for line in kill_recorded_trainers(records):
        log.warning("%s %s: %s", job.name, job.id, line)
    _warn_about_gpu_processes(plan, gpus)
    recorder = ProgressRecorder(
        plan.log_dir,
        plan.model_dir / "sample",
        store,
        job.id,
        flower_update=lambda meta: task.update_state(state="PROGRESS", meta=meta),
    )
    try:
        return phases.train_phase(
            job.spec,
            plan,
            settings,
            on_event=recorder,
            # A lost lease means the job was re-queued elsewhere: stop, as for a cancel.
            should_cancel=lambda: lease.lost.is_set() or store.cancel_requested(job.id),
            gpus=gpus or None,
            resume_since=first_started,
            attempt=job.attempt + 1,
            extra_versions={"driver": driver_version()} if gpus else None,
            on_start=lambda session: record_trainer(records, session, job.id),
        )
    finally:
        recorder.close()
        for path in records:
            path.unlink(missing_ok=True)


def _warn_about_gpu_processes(plan: TrainPlan, gpus: list[int]) -> None:
    """Where a driver exists: say in the trainer log which other processes hold these GPUs."""
    others = [(g, pid, mib) for g, pid, mib in compute_processes(gpus) if pid != os.getpid()]
    if not others:
        return
    listing = ", ".join(f"pid {pid} on GPU {g} ({mib} MiB)" for g, pid, mib in others)
    message = f"GPU already in use before the trainer started: {listing}"
    log.warning(message)
    plan.log_dir.mkdir(parents=True, exist_ok=True)
    with open(plan.log_dir / "trainer.log", "a", encoding="utf-8") as trainer_log:
        trainer_log.write(f"\nautotrain: warning: {message}\n")


def _record_attempt(store: JobStore, job_id: str, attempt: int, worker: str, run, command: list[str],
                    resumed, gpu_label: str, host: str) -> None:  # fmt: skip
    """What each attempt ran, kept for phase 5's run.json."""
    info = store.get_data(job_id, "run") or {"attempts_log": []}
    info["attempts_log"].append(
        {"attempt": attempt, "worker": worker, "started_at": run.started_at,
         "finished_at": run.finished_at, "returncode": run.returncode,
         "resumed_from": str(resumed) if resumed else None, "resume": run.resume,
         "last_step": run.last_step, "trainer_version": run.trainer_versions}
    )  # fmt: skip
    info.update(
        command=command,
        trainer_version=run.trainer_versions,
        resumed_from=str(resumed) if resumed else info.get("resumed_from"),
        last_step=run.last_step,
        last_loss=run.last_loss,
        gpu=gpu_label,
        host=host,
    )
    store.put_data(job_id, "run", info)


@app.task(name="autotrain.report", bind=True)
def report(self: Task, job_id: str) -> str:
    with phase(self, job_id, JobState.REPORTING) as ctx:
        job = ctx.job
        plan = TrainPlan.model_validate(job.plan)
        info = ctx.store.get_data(job_id, "run") or {}
        info.update(
            attempts=job.attempt,
            loss_history=read_loss_history(plan.log_dir),
            timings={
                "submitted_at": job.created_at,
                "started_at": job.started_at,
                "training_started_at": job.training_started_at,
                "training_finished_at": job.training_finished_at,
                "reported_at": time.time(),
                "training_seconds": (job.training_finished_at or time.time())
                - (job.training_started_at or time.time()),
            },
        )
        manifest = phases.report_phase(job.spec, plan, ctx.settings, info)
        ctx.store.set_state(
            job_id,
            JobState.SUCCEEDED,
            finished_at=time.time(),
            result={"weights": manifest["weights"][0]["path"], "run_json": str(plan.model_dir.parent / "run.json"),
                    "final_loss": manifest["final_loss"]},
        )  # fmt: skip
        log.info("%s %s: succeeded", job.name, job_id)
    return job_id


def _files_progress(ctx: PhaseContext):
    """Validation and staging progress on the job record (`files` = [done, total]), in 5% steps."""
    shown = {"step": -1}

    def update(_phase: str, done: int, total: int) -> None:
        step = done * 20 // max(total, 1)
        if step != shown["step"]:
            shown["step"] = step
            ctx.store.update(ctx.job.id, files=[done, total])

    return update


def _report(ctx: PhaseContext):
    from autotrain.validate import ValidationReport

    return ValidationReport.model_validate(ctx.store.get_data(ctx.job.id, "report"))


def _fail(store: JobStore, job: Job, error: str) -> None:
    store.set_state(job.id, JobState.FAILED, finished_at=time.time(), error=error)
    logging.getLogger("autotrain.errors").error("%s %s failed: %s", job.name, job.id, error)


def _finish_cancelled(store: JobStore, job: Job) -> None:
    if not job.is_final:
        store.set_state(
            job.id, JobState.CANCELLED, finished_at=time.time(), error="cancelled by user"
        )
