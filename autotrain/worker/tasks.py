"""The five phase tasks. Each takes a job id, works from the job record and sends the next phase.

A task first takes the job from the queue (atomically, by its own message id: a stale or re-sent
message finds the job owned by someone else and does nothing), holds the job's lease while it
works, and records every outcome on the job record: that record, not the Celery task state, is
what users see. Finishing a phase (recording it, releasing locks, sending the next one) waits
out a Redis outage instead of failing (autotrain.jobs.connection.until_redis_back).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from celery import Task
from celery.exceptions import Ignore

from autotrain.errors import AutotrainError
from autotrain.fleet import pace
from autotrain.jobs import keys
from autotrain.jobs.celery_app import app
from autotrain.jobs.connection import is_redis_outage, until_redis_back
from autotrain.jobs.job import JobState, JobStore
from autotrain.jobs.lease import (
    Lease,
    acquire_batch_slot,
    acquire_gpus,
    gpu_holders,
    new_owner,
    release_gpus,
    renew_gpus,
)
from autotrain.jobs.queue import current_host, hand_on
from autotrain.profile import profile_for
from autotrain.trainers.guard import device_records, kill_recorded_trainers, record_trainer
from autotrain.trainers.outputs import archive_run
from autotrain.trainers.plan import TrainPlan
from autotrain.worker import (
    heartbeat,  # noqa: F401 - importing it registers the worker signals
    phases,
    recovery,
)
from autotrain.worker.context import (
    PhaseContext,
    outage_seconds,
    worker_gpu,
    worker_settings,
    worker_store,
)
from autotrain.worker.flower import progress_sender
from autotrain.worker.launch import compute_processes, driver_version
from autotrain.worker.recorder import ProgressRecorder, read_loss_history
from autotrain.workspace import Workspace

__all__ = ["validate", "prepare", "configure", "train", "report"]

log = logging.getLogger("autotrain.pipeline")


@contextmanager
def phase(task: Task, job_id: str, name: str, state: JobState) -> Iterator[PhaseContext]:
    """Enter a phase: take the job from the queue, hold its lease, record the outcome on it.

    From the take on, every way out stops the lease (a lease left renewing would keep a job
    nobody works on from ever being reaped). Redis going away midway is never the job's fault:
    the phase waits for it and goes back to its queue, as the same attempt.
    """
    store, settings = worker_store(), worker_settings()
    worker = task.request.hostname or "?"
    owner = new_owner(worker)
    fields = {"worker": worker, "phase": name, "next_task": None}
    fields["host" if name == "train" else "prep_host"] = current_host()
    outage = outage_seconds(settings)  # the message is consumed: wait for Redis, never drop it
    job = until_redis_back(lambda: store.get(job_id), outage, f"reading {job_id}")
    if job.started_at is None:
        fields["started_at"] = time.time()
    moved = until_redis_back(
        lambda: store.move(
            job_id, expected=f"queue:{task.request.id}", owner=owner, state=state,
            lease_until=time.time() + settings.lease_seconds, **fields,
        ),
        outage, f"taking {job_id}",
    )  # fmt: skip
    if moved != 1:  # 1 also when the answer to a take that ran was lost (scripts.MOVE)
        log.info("%s: %s message %s is stale (the job is %s); ignored", job_id, name,
                 task.request.id, "final" if moved == -1 else "owned elsewhere")  # fmt: skip
        raise Ignore()
    lease = Lease(store, job_id, owner, settings.lease_seconds).start()
    ctx: PhaseContext | None = None
    try:
        ctx = PhaseContext(until_redis_back(lambda: store.get(job_id), outage, f"reading {job_id}"),
                           store, settings, lease)  # fmt: skip
        log.info("%s %s: %s on %s", ctx.job.name, job_id, state.value, worker)
        if ctx.job.cancel_requested:
            ctx.finish(JobState.CANCELLED, error="cancelled by user")
            raise Ignore()
        yield ctx
    except Ignore:
        raise
    except Exception as exc:
        if is_redis_outage(exc):  # once Redis is back, the phase goes back to its queue
            log.warning("%s: Redis unreachable during %s (%s); queued again once it is back",
                        job_id, name, exc)  # fmt: skip
            lease.stop()  # from here the move decides
            hand_on(store, job_id, owner, name, settings.lease_seconds, outage)
            raise Ignore() from exc
        if ctx is not None:
            _fail(ctx, str(exc) if isinstance(exc, AutotrainError) else f"{type(exc).__name__}: {exc}")  # fmt: skip
        raise
    finally:
        lease.stop()


@app.task(name="autotrain.validate", bind=True)
def validate(self: Task, job_id: str) -> None:
    with phase(self, job_id, "validate", JobState.VALIDATING) as ctx:
        if ctx.job.from_scratch:  # a retry that starts over: the earlier files step aside
            label = f"{job_id}-attempt{ctx.job.attempt_base}"
            archive_run(Workspace(ctx.settings.workspace), ctx.job.name, label)
            ctx.store.update(job_id, from_scratch=False)
        report = phases.validate_phase(ctx.job.spec, ctx.settings, _files_progress(ctx))
        ctx.store.put_data(job_id, "report", report.model_dump(mode="json"))
        ctx.hand_on("prepare")


@app.task(name="autotrain.prepare", bind=True)
def prepare(self: Task, job_id: str) -> None:
    with phase(self, job_id, "prepare", JobState.PREPARING) as ctx:
        staged = phases.prepare_phase(
            ctx.job.spec, _report(ctx), ctx.settings, progress=_files_progress(ctx), job_id=job_id
        )
        ctx.store.put_data(job_id, "stage", staged.model_dump(mode="json"))
        ctx.hand_on("configure")


@app.task(name="autotrain.configure", bind=True)
def configure(self: Task, job_id: str) -> None:
    with phase(self, job_id, "configure", JobState.CONFIGURING) as ctx:
        plan = phases.configure_phase(ctx.job.spec, _report(ctx), ctx.settings,
                                      variant=ctx.job.variant)  # fmt: skip
        ctx.hand_on("train", plan=plan.model_dump(mode="json"), total=plan.total_steps)


@app.task(name="autotrain.train", bind=True)
def train(self: Task, job_id: str) -> None:
    with phase(self, job_id, "train", JobState.WAITING_GPU) as ctx:
        if ctx.job.held:  # held after this message was taken: wait for `train release`
            ctx.lease.stop()
            ctx.store.move(job_id, expected=ctx.lease.owner, owner="held",
                           state=JobState.WAITING_GPU, worker=None)  # fmt: skip
            raise Ignore()
        batch_id = ctx.job.spec.batch_id
        if batch_id and not acquire_batch_slot(
            ctx.store.redis, batch_id, job_id, ctx.job.created_at
        ):
            ctx.lease.stop()
            ctx.store.move(job_id, expected=ctx.lease.owner, owner="parked",
                           state=JobState.WAITING_GPU, worker=None)  # fmt: skip
            log.info("%s %s: parked, its batch is at --max-concurrent", ctx.job.name, job_id)
            raise Ignore()
        _train(self, ctx)


def _train(task: Task, ctx: PhaseContext) -> None:
    store, settings, job = ctx.store, ctx.settings, ctx.job
    plan = TrainPlan.model_validate(job.plan)
    host, own_gpu = current_host(), worker_gpu()
    gpus = list(job.spec.gpu_ids) or ([own_gpu] if own_gpu is not None else [])
    worker = task.request.hostname or "?"
    cancelled = lambda: ctx.lease.lost.is_set() or store.cancel_requested(job.id)  # noqa: E731
    holders: dict[int, str] = {}

    def note_holder(gpu: int, why: str) -> None:  # for `train list` and the monitors
        if holders.get(gpu) != why:
            holders[gpu] = why
            store.update(job.id, waiting_for=f"waits for GPU {gpu} of {host}, {why}")

    room = recovery.room_on_these_gpus(ctx, host, gpus)
    if room is None:
        raise Ignore()  # sent to a GPU that fits, or failed saying none does
    moved, looked_at = [], [0.0]

    def give_up() -> bool:
        """Cancelled, or memory that other programs held here is free on another GPU now."""
        if cancelled():
            return True
        short = [g for g, why in holders.items() if "GiB free there" in why]
        if short and not job.spec.gpu_ids and time.monotonic() - looked_at[0] > 5:
            looked_at[0] = time.monotonic()
            if recovery.move_to_free_memory(ctx, f"{host}:{short[0]}", room.need_bytes,
                                            room.free_bytes(short[0]) if room.free_bytes else None):  # fmt: skip
                moved.append(True)
        return bool(moved)

    if not acquire_gpus(store.redis, host, gpus, job.id, settings.lease_seconds, give_up,
                        on_wait=note_holder, room=room):  # fmt: skip
        if not moved and not ctx.lease.lost.is_set():
            ctx.finish(JobState.CANCELLED, error="cancelled by user")
        raise Ignore()
    ctx.lease.extra.append(
        lambda: renew_gpus(store.redis, host, gpus, job.id, settings.lease_seconds, room)
    )
    gpu_label = ",".join(map(str, gpus)) or "cpu"
    first_started = job.training_started_at or time.time()
    busy_key = keys.worker_jobs(worker)  # read by `autotrain status`

    def mark_busy() -> None:
        now = time.time()
        pipe = store.redis.pipeline(transaction=False)
        pipe.zadd(busy_key, {job.id: now + settings.lease_seconds})
        pipe.zremrangebyscore(busy_key, "-inf", now)  # a packed neighbour that died unmarked
        pipe.expire(busy_key, int(settings.lease_seconds) + 1)
        pipe.execute()

    try:
        attempt_started = time.time()
        store.set_state(job.id, JobState.TRAINING, gpu=gpu_label, train_worker=worker,
                        training_started_at=first_started, attempt_started_at=attempt_started,
                        waiting_for=None)  # fmt: skip
        mark_busy()
        ctx.lease.extra.append(mark_busy)
        run, command, resumed = _run_trainer(task, ctx, plan, gpus, first_started)
    finally:
        until_redis_back(lambda: release_gpus(store.redis, host, gpus, job.id), ctx.outage,
                         "releasing GPUs")  # fmt: skip
        until_redis_back(lambda: store.redis.zrem(busy_key, job.id), ctx.outage, "marking idle")
    if ctx.lease.lost.is_set():
        raise Ignore()  # re-queued meanwhile: the job belongs to its new attempt
    if run.cancelled:
        ctx.finish(JobState.CANCELLED, error="cancelled by user")
        raise Ignore()
    until_redis_back(
        lambda: _record_attempt(store, job.id, job.attempt, worker, run, command, resumed,
                                gpu_label, host,
                                profile_for(job.spec, settings).variant_name(job.variant)),
        ctx.outage, "recording the attempt",
    )  # fmt: skip
    if run.stalled_seconds is not None:
        recovery.retry_stalled(ctx, run, worker, gpu_label)
        raise Ignore()
    if recovery.step_down_after_oom(ctx, run, worker, gpu_label):
        raise Ignore()
    if recovery.move_off_a_failing_gpu(ctx, run, host, gpus):
        raise Ignore()
    phases.raise_for_trainer(run, plan)
    with contextlib.suppress(redis.RedisError):  # a pace is nice to have, never worth a retry
        pace.record_pace(store.redis, job.profile, pace.own_gpu_model(), run, attempt_started)
    ctx.hand_on("report", training_finished_at=time.time())


def _run_trainer(task: Task, ctx: PhaseContext, plan: TrainPlan, gpus: list[int],
                 first_started: float):  # fmt: skip
    """Phase 4 with its events going to the job's stream, progress.jsonl and Flower.

    No trainer outlives its job: before the trainer starts, what is left of an earlier one on
    these GPUs (a worker killed with its guard) is killed; while it runs, its session is recorded
    per GPU for the supervisor and a restarted worker to act on (autotrain.trainers.guard).
    """
    store, settings, job, lease = ctx.store, ctx.settings, ctx.job, ctx.lease
    state_dir, host = Workspace(settings.workspace).state_dir, current_host()
    # Jobs holding these GPUs beside this one (packed) are alive: their trainers are spared.
    alive = {j for g in gpus for j in gpu_holders(store.redis, host, g)} - {job.id}
    for line in kill_recorded_trainers(device_records(state_dir, host, gpus), spare=alive):
        log.warning("%s %s: %s", job.name, job.id, line)
    records = device_records(state_dir, host, gpus, job.id)
    _warn_about_gpu_processes(plan, gpus)
    recorder = ProgressRecorder(
        plan.log_dir,
        plan.model_dir / "sample",
        store,
        job.id,
        flower_update=progress_sender(task),
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
            attempt=job.attempt,
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
                    resumed, gpu_label: str, host: str, variant: str = "as is") -> None:  # fmt: skip
    """What each attempt ran, kept for phase 5's run.json."""
    info = store.get_data(job_id, "run") or {"attempts_log": []}
    info["attempts_log"].append(
        {"attempt": attempt, "worker": worker, "started_at": run.started_at,
         "finished_at": run.finished_at, "returncode": run.returncode,
         "resumed_from": str(resumed) if resumed else None, "resume": run.resume,
         "last_step": run.last_step, "trainer_version": run.trainer_versions,
         "stalled_seconds": run.stalled_seconds, "variant": variant,
         "cause": (run.error_event or {}).get("cause")}
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
def report(self: Task, job_id: str) -> None:
    with phase(self, job_id, "report", JobState.REPORTING) as ctx:
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
                "training_seconds": job.training_seconds() or 0.0,
            },
        )
        manifest = phases.report_phase(job.spec, plan, ctx.settings, info)
        result = {"weights": manifest["weights"][0]["path"],
                  "run_json": str(plan.model_dir.parent / "run.json"),
                  "final_loss": manifest["final_loss"]}  # fmt: skip
        if ctx.finish(JobState.SUCCEEDED, result=result):
            log.info("%s %s: succeeded", job.name, job_id)


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
    from autotrain.datasets.validate import ValidationReport

    return ValidationReport.model_validate(ctx.store.get_data(ctx.job.id, "report"))


def _fail(ctx: PhaseContext, error: str) -> None:
    if ctx.finish(JobState.FAILED, error=error):
        logging.getLogger("autotrain.errors").error(
            "%s %s failed: %s", ctx.job.name, ctx.job.id, error
        )
