"""Running the trainer on a worker: phase 4's process, what each attempt ran, the busy mark.

The training task (autotrain.worker.tasks) reserves the GPUs and decides what follows; this
module runs the trainer with its events going to the job's stream, progress.jsonl and Flower,
records the attempt for run.json, and marks the worker busy for `autotrain status`.
"""

from __future__ import annotations

import logging
import os
import time

import redis
from celery import Task

from autotrain.fleet.registry import DrainWatch
from autotrain.jobs import keys
from autotrain.jobs.lease import gpu_holders
from autotrain.jobs.queue import current_host
from autotrain.jobs.store import JobStore
from autotrain.trainers.guard import device_records, kill_recorded_trainers, record_trainer
from autotrain.trainers.plan import TrainPlan
from autotrain.worker import phases
from autotrain.worker.context import PhaseContext
from autotrain.worker.flower import progress_sender
from autotrain.worker.launch import compute_processes, driver_version
from autotrain.worker.recorder import ProgressRecorder
from autotrain.workspace import Workspace

__all__ = ["run_trainer", "record_attempt", "record_lost_attempts", "BusyMark"]

log = logging.getLogger("autotrain.pipeline")


class BusyMark:
    """The worker's busy mark for a job (`autotrain:worker:<name>:jobs`, read by `status`),
    renewed with the lease; a packed neighbour that died unmarked drops out with its deadline."""

    def __init__(self, client: redis.Redis, worker: str, job_id: str, lease_seconds: float):
        self.client, self.job_id, self.lease_seconds = client, job_id, lease_seconds
        self.key = keys.worker_jobs(worker)

    def mark(self) -> None:
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self.key, {self.job_id: now + self.lease_seconds})
        pipe.zremrangebyscore(self.key, "-inf", now)
        pipe.expire(self.key, int(self.lease_seconds) + 1)
        pipe.execute()

    def clear(self) -> None:
        self.client.zrem(self.key, self.job_id)


def run_trainer(task: Task, ctx: PhaseContext, plan: TrainPlan, gpus: list[int],
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
    going_away = DrainWatch(store.redis, host)
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
            # A lost lease means the job was re-queued elsewhere: stop, as for a cancel; so does
            # a host going away (the train task gives the job back).
            should_cancel=lambda: (
                lease.lost.is_set() or store.cancel_requested(job.id) or going_away()
            ),
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


def record_attempt(store: JobStore, job_id: str, attempt: int, worker: str, run, command: list[str],
                    resumed, gpu_label: str, host: str, variant: str = "as is") -> None:  # fmt: skip
    """What each attempt ran, kept for phase 5's run.json."""
    info = store.get_data(job_id, "run") or {"attempts_log": []}
    _add_lost_attempts(info, store.history(job_id))
    info["attempts_log"].append(
        {"attempt": attempt, "worker": worker, "host": host, "gpu": gpu_label,
         "started_at": run.started_at,
         "finished_at": run.finished_at, "returncode": run.returncode,
         "resumed_from": str(resumed) if resumed else None, "resume": run.resume,
         "last_step": run.last_step, "trainer_version": run.trainer_versions,
         "stalled_seconds": run.stalled_seconds, "variant": variant,
         "cause": "guard lost" if run.guard_lost else (run.error_event or {}).get("cause")}
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


def record_lost_attempts(store: JobStore, job_id: str) -> dict:
    """The job's run info with every attempt whose worker died (and so recorded nothing itself)
    in its attempts_log, from what the reaper wrote in the history; stored and returned."""
    info = store.get_data(job_id, "run") or {"attempts_log": []}
    if _add_lost_attempts(info, store.history(job_id)):
        store.put_data(job_id, "run", info)
    return info


def _add_lost_attempts(info: dict, history: list[dict]) -> bool:
    """Add to `info["attempts_log"]` the attempts the reaper re-queued that it lacks, in order;
    True when any was added."""
    log_ = info.setdefault("attempts_log", [])
    logged = {entry.get("attempt") for entry in log_}
    lost = [
        {"attempt": e["attempt"], "worker": e.get("worker"), "host": e.get("host"),
         "gpu": e.get("gpu"), "phase": e.get("phase"), "started_at": e.get("started_at"),
         "finished_at": e.get("at"), "returncode": None, "last_step": e.get("step"),
         "cause": "worker lost"}
        for e in history
        if e.get("event") == "worker lost" and e.get("attempt") not in logged
    ]  # fmt: skip
    log_.extend(lost)
    log_.sort(key=lambda entry: entry.get("attempt") or 0)
    return bool(lost)
