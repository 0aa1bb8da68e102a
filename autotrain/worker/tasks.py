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
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from celery import Task
from celery.exceptions import Ignore

from autotrain.errors import AutotrainError
from autotrain.fleet import pace
from autotrain.fleet.registry import DrainWatch, is_draining
from autotrain.jobs.celery_app import app
from autotrain.jobs.connection import is_redis_outage, until_redis_back
from autotrain.jobs.dispatch import dispatch
from autotrain.jobs.job import JobState
from autotrain.jobs.lease import (
    GpuRoom,
    Lease,
    acquire_batch_slot,
    acquire_gpus,
    new_owner,
    release_gpus,
    renew_gpus,
)
from autotrain.jobs.owners import PARKED, queue_owner
from autotrain.jobs.queue import current_host
from autotrain.jobs.store import JobStore
from autotrain.profile import profile_for
from autotrain.settings import Settings
from autotrain.trainers.outputs import archive_run
from autotrain.worker import (
    heartbeat,  # noqa: F401 - importing it registers the worker signals
    phases,
    recovery,
    stored,
)
from autotrain.worker.context import (
    PhaseContext,
    outage_seconds,
    worker_gpu,
    worker_settings,
    worker_store,
)
from autotrain.worker.recorder import read_loss_history
from autotrain.worker.training import (
    BusyMark,
    record_attempt,
    record_lost_attempts,
    run_trainer,
)
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
    moved = until_redis_back(
        lambda: store.move(
            job_id, expected=queue_owner(task.request.id), owner=owner, state=state,
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
        if ctx.job.started_at is None:  # its first phase: when the job started, once
            ctx.job.started_at = time.time()
            ctx.store.update(job_id, started_at=ctx.job.started_at)
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
            _back_to_queue(store, job_id, owner, name, settings, outage)
            raise Ignore() from exc
        if ctx is not None:
            _fail(ctx, str(exc) if isinstance(exc, AutotrainError) else f"{type(exc).__name__}: {exc}")  # fmt: skip
        raise
    finally:
        lease.stop()


def _back_to_queue(store: JobStore, job_id: str, owner: str, phase_name: str,
                   settings: Settings, outage: float) -> None:  # fmt: skip
    """Redis went away during a phase: once it is back, the phase goes back to its queue from this
    worker, as the same attempt (an outage is never the job's fault)."""
    job = until_redis_back(lambda: store.get(job_id), outage, f"reading {job_id}")
    dispatch(store, job, phase_name, expected=owner, confirm_seconds=settings.lease_seconds,
             outage_seconds=outage)  # fmt: skip


@app.task(name="autotrain.validate", bind=True)
def validate(self: Task, job_id: str) -> None:
    with phase(self, job_id, "validate", JobState.VALIDATING) as ctx:
        if stored.stored_dataset(ctx):  # validated and staged where it was submitted
            ctx.hand_on("prepare")
            return
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
        if stored.stored_dataset(ctx):  # staged where it was submitted, and in the store
            ctx.hand_on("configure")
            return
        staged = phases.prepare_phase(
            ctx.job.spec, _report(ctx), ctx.settings, progress=_files_progress(ctx), job_id=job_id
        )
        ctx.store.put_data(job_id, "stage", staged.model_dump(mode="json"))
        ctx.hand_on("configure")


@app.task(name="autotrain.configure", bind=True)
def configure(self: Task, job_id: str) -> None:
    with phase(self, job_id, "configure", JobState.CONFIGURING) as ctx:
        stored.bring_dataset(ctx, "configure")  # sd-scripts reads it to check the job
        plan = phases.configure_phase(ctx.job.spec, _report(ctx), ctx.settings,
                                      variant=ctx.job.variant)  # fmt: skip
        ctx.hand_on("train", plan=plan.model_dump(mode="json"), total=plan.total_steps)


@app.task(name="autotrain.train", bind=True)
def train(self: Task, job_id: str) -> None:
    with phase(self, job_id, "train", JobState.WAITING_GPU) as ctx:
        if ctx.job.held:  # held after this message was taken: wait for `train release`
            ctx.hand_on("train")
            raise Ignore()
        batch_id = ctx.job.spec.batch_id
        if batch_id and not acquire_batch_slot(
            ctx.store.redis, batch_id, job_id, ctx.job.created_at
        ):
            ctx.lease.stop()
            ctx.store.move(job_id, expected=ctx.lease.owner, owner=PARKED,
                           state=JobState.WAITING_GPU, worker=None)  # fmt: skip
            log.info("%s %s: parked, its batch is at --max-concurrent", ctx.job.name, job_id)
            raise Ignore()
        _train(self, ctx)


def _train(task: Task, ctx: PhaseContext) -> None:
    """Phase 4: reserve the GPUs (or go where the job fits), train, then report or recover."""
    job = ctx.job
    stored.bring_dataset(ctx, "train")
    plan = stored.local_plan(ctx)
    host, own_gpu = current_host(), worker_gpu()
    gpus = list(job.spec.gpu_ids) or ([own_gpu] if own_gpu is not None else [])
    worker = task.request.hostname or "?"
    room = recovery.room_on_these_gpus(ctx, host, gpus)
    if not isinstance(room, GpuRoom):
        _apply(ctx, room)  # to a GPU that fits, a leaner variant, or failed saying none does
        raise Ignore()
    if not _wait_for_gpus(ctx, host, gpus, room):
        raise Ignore()
    gpu_label = ",".join(map(str, gpus)) or "cpu"
    busy = BusyMark(ctx.store.redis, worker, job.id, ctx.settings.lease_seconds)
    first_started = job.training_started_at or time.time()
    try:
        attempt_started = time.time()
        ctx.store.set_state(job.id, JobState.TRAINING, gpu=gpu_label, train_worker=worker,
                            training_started_at=first_started,
                            attempt_started_at=attempt_started, waiting_for=None)  # fmt: skip
        busy.mark()
        ctx.lease.extra.append(busy.mark)
        stored.bring_for_training(ctx, plan, first_started)
        with stored.writing_through(ctx, plan):
            run, command, resumed = run_trainer(task, ctx, plan, gpus, first_started)
    finally:
        until_redis_back(lambda: release_gpus(ctx.store.redis, host, gpus, job.id), ctx.outage,
                         "releasing GPUs")  # fmt: skip
        until_redis_back(busy.clear, ctx.outage, "marking idle")
    if ctx.lease.lost.is_set():
        raise Ignore()  # re-queued meanwhile: the job belongs to its new attempt
    # Its host is going away (SIGTERM, `worker --drain`): the trainer was stopped, the newest
    # state is in the store (writing_through), the job goes back to the queue at once.
    preempted = not run.succeeded and _going_away(ctx, host)
    if run.cancelled and not preempted:
        ctx.finish(JobState.CANCELLED, error="cancelled by user")
        raise Ignore()
    variant = profile_for(job.spec, ctx.settings).variant_name(job.variant)
    until_redis_back(
        lambda: record_attempt(ctx.store, job.id, job.attempt, worker, run, command, resumed,
                               gpu_label, host, variant),
        ctx.outage, "recording the attempt",
    )  # fmt: skip
    if preempted:
        decision = recovery.give_back_preempted(ctx, run, worker, gpu_label)
    elif run.guard_lost:
        decision = recovery.resume_after_lost_guard(ctx, run, worker, gpu_label)
    elif run.stalled_seconds is not None:
        decision = recovery.retry_stalled(ctx, run, worker, gpu_label)
    else:
        decision = recovery.step_down_after_oom(
            ctx, run, worker, gpu_label
        ) or recovery.move_off_a_failing_gpu(ctx, run, host, gpus)
    if decision:
        _apply(ctx, decision)
        raise Ignore()
    phases.raise_for_trainer(run, plan)
    with contextlib.suppress(redis.RedisError):  # a pace is nice to have, never worth a retry
        pace.record_pace(ctx.store.redis, job.profile, pace.own_gpu_model(), run, attempt_started)
    ctx.hand_on("report", training_finished_at=time.time())


def _wait_for_gpus(ctx: PhaseContext, host: str, gpus: list[int], room: GpuRoom) -> bool:
    """Reserve the job's GPUs, waiting while they are full; False when it must not train here:
    cancelled (it is ended here), moved to a GPU with free memory, or re-queued meanwhile."""
    store, job = ctx.store, ctx.job
    holders: dict[int, str] = {}
    moved, looked_at = [], [0.0]
    going_away = DrainWatch(store.redis, host)

    def note_holder(gpu: int, why: str) -> None:  # for `train list` and the monitors
        if holders.get(gpu) != why:
            holders[gpu] = why
            store.update(job.id, waiting_for=f"waits for GPU {gpu} of {host}, {why}")

    def give_up() -> bool:
        """Cancelled, going away, or memory other programs held here is free elsewhere now."""
        if ctx.lease.lost.is_set() or store.cancel_requested(job.id):
            return True
        if going_away():  # its host is stopping: back to the queue, never started here
            moved.append(ctx.hand_on("train"))
            return True
        short = [g for g, why in holders.items() if "GiB free there" in why]
        if short and not job.spec.gpu_ids and time.monotonic() - looked_at[0] > 5:
            looked_at[0] = time.monotonic()
            free = room.free_bytes(short[0]) if room.free_bytes else None
            elsewhere = recovery.move_to_free_memory(ctx, f"{host}:{short[0]}", room.need_bytes,
                                                     free)  # fmt: skip
            if elsewhere:
                _apply(ctx, elsewhere)
                moved.append(True)
        return bool(moved)

    lease_seconds = ctx.settings.lease_seconds
    if not acquire_gpus(store.redis, host, gpus, job.id, lease_seconds, give_up,
                        on_wait=note_holder, room=room):  # fmt: skip
        if not moved and not ctx.lease.lost.is_set():
            ctx.finish(JobState.CANCELLED, error="cancelled by user")
        return False
    ctx.lease.extra.append(lambda: renew_gpus(store.redis, host, gpus, job.id, lease_seconds, room))
    return True


@app.task(name="autotrain.report", bind=True)
def report(self: Task, job_id: str) -> None:
    with phase(self, job_id, "report", JobState.REPORTING) as ctx:
        job = ctx.job
        stored.bring_dataset(ctx, "report")  # run.json quotes its manifest
        plan = stored.local_plan(ctx)
        stored.bring_for_report(ctx)
        info = record_lost_attempts(ctx.store, job_id)  # a worker lost after the last run
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
        info["storage"] = ctx.store.get_data(job_id, stored.TRAFFIC_DATA)
        manifest = phases.report_phase(job.spec, plan, ctx.settings, info)
        stored.upload_report(ctx, plan)  # in the store before the job is succeeded
        result = {"weights": manifest["weights"][0]["path"],
                  "run_json": str(plan.model_dir.parent / "run.json"),
                  "samples_sheet": manifest.get("samples_sheet"),
                  "final_loss": manifest["final_loss"]}  # fmt: skip
        result |= stored.result_in_store(ctx, plan, result)  # where every host can get them
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


def _going_away(ctx: PhaseContext, host: str) -> bool:
    """This host's workers are stopping (SIGTERM or `worker --drain`) and the user did not
    cancel the job: its work goes back to the queue rather than on here."""
    return is_draining(ctx.store.redis, host) and not ctx.store.cancel_requested(ctx.job.id)


def _apply(ctx: PhaseContext, decision: recovery.Decision) -> None:
    """Carry out what recovery decided: a new attempt (or placement) in a queue, or the end."""
    job = ctx.job
    if decision.history:
        until_redis_back(lambda: ctx.store.add_history(job.id, **decision.history), ctx.outage,
                         "recording the attempt")  # fmt: skip
    if isinstance(decision, recovery.Fail):
        ctx.finish(JobState.FAILED, error=decision.error)
        return
    if decision.why:
        log.warning("%s %s: %s", job.name, job.id, decision.why)
    ctx.hand_on(decision.phase, **decision.fields)


def _fail(ctx: PhaseContext, error: str) -> None:
    if ctx.finish(JobState.FAILED, error=error):
        logging.getLogger("autotrain.errors").error(
            "%s %s failed: %s", ctx.job.name, ctx.job.id, error
        )
