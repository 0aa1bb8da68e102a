"""What a training task should do when a run cannot go on where it is, instead of failing the job.

Each answer is a new attempt from the newest saved state, elsewhere or leaner: a GPU too small
(or one the job failed on) sends it to a GPU that fits; out of memory steps down the profile's
ladder; an NCCL failure moves it off that GPU and counts against the GPU; a stalled trainer is
retried, and so is one whose guard was killed (as for a lost worker). Bad data or a broken setup is never retried: it would fail the same way again.

These functions only decide: each returns a `Requeue` or a `Fail` (or None: go on), and the
task applies it in one place (autotrain.worker.tasks); they never move the job themselves. They
do record what they saw (GPU failure counts, a history entry of a GPU fault).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autotrain.jobs import keys
from autotrain.jobs.lease import GpuRoom
from autotrain.profile import profile_for
from autotrain.worker.launch import gpu_memory

if TYPE_CHECKING:
    from autotrain.worker.context import PhaseContext

__all__ = [
    "Requeue",
    "Fail",
    "Decision",
    "room_on_these_gpus",
    "move_to_free_memory",
    "move_off_a_failing_gpu",
    "step_down_after_oom",
    "retry_stalled",
    "resume_after_lost_guard",
]


@dataclass(frozen=True)
class Requeue:
    """Hand the job to the queue of `phase`, with `fields` set (a new attempt, a variant, a GPU
    queue), after adding `history` to its attempts; `why` goes to the worker's log."""

    phase: str
    fields: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] | None = None
    why: str | None = None


@dataclass(frozen=True)
class Fail:
    """End the job as failed with `error`, after adding `history` to its attempts."""

    error: str
    history: dict[str, Any] | None = None


Decision = Requeue | Fail


def room_on_these_gpus(ctx: PhaseContext, host: str, gpus: list[int]) -> GpuRoom | Decision:
    """What the job reserves on its GPUs; when this GPU is too small for it, a decision instead:
    the queue of a GPU that fits, a leaner variant, or failing it (naming the fleet's GPUs). A
    GPU large enough whose memory other processes hold (NVML measures it) sends the job to a
    GPU with that much free, or, with none, keeps it waiting here until the memory is free.

    A pinned job stays where the user put it: its GPUs' memory still bounds what packs there.
    """
    from autotrain.fleet import placement
    from autotrain.jobs.keys import gpu_queue_name

    job, settings = ctx.job, ctx.settings
    profile = profile_for(job.spec, settings)
    need = placement.need_bytes(
        profile, job.variant, settings.vram_margin_gb, (job.plan or {}).get("config")
    )
    own = gpu_memory()
    capacities = {g: own[0] for g in gpus} if own else {}
    room = GpuRoom(need, settings.max_jobs_per_gpu, capacities, free_bytes=_measured_free)
    avoided = bool(gpus) and f"{host}:{gpus[0]}" in job.avoid_gpus
    if job.spec.gpu_ids or not own:
        return room
    short_now = own[1] is not None and need > own[1]  # other processes hold its memory
    if not avoided and (not need or need <= own[0]) and not short_now:
        return room
    here = f"{host}:{gpus[0]}"
    fleet = [g for g in placement.fleet_gpus(ctx.store.redis)
             if g.place not in job.avoid_gpus]  # fmt: skip
    if avoided and not fleet:
        return room  # every GPU failed it once: this one again rather than never
    if short_now and need <= own[0] and not avoided:
        elsewhere = move_to_free_memory(ctx, here, need, own[1])  # or wait here until free
        return elsewhere or room
    target = placement.best_fit(fleet, need)
    if target is not None:
        queue = gpu_queue_name(target.host, target.gpu)
        gib = placement.GIB
        why = (f"it failed on GPU {here} before" if avoided else
               f"{need / gib:.1f} GiB do not fit this GPU ({own[0] / gib:.0f} GiB)")  # fmt: skip
        placed = {"attempt": job.attempt, "event": "placed", "queue": queue, "error": why}
        return Requeue("train", {"queue": queue}, placed)
    leaner = placement.first_fitting_variant(
        profile, fleet, settings.vram_margin_gb, job.variant + 1
    )
    if leaner is not None:
        leaner_entry = {"attempt": job.attempt, "event": "leaner variant",
                        "variant": profile.variant_name(leaner)}  # fmt: skip
        return Requeue("configure", {"variant": leaner}, leaner_entry)
    return Fail(placement.no_fit_message(profile, fleet, settings.vram_margin_gb))


# A job chasing free memory from GPU to GPU stops after this many moves per attempt and waits.
_MAX_PLACEMENTS = 3


def move_to_free_memory(ctx: PhaseContext, here: str, need: int,
                        free_here: int | None) -> Requeue | None:  # fmt: skip
    """Send a job waiting for memory that other programs hold on GPU `here` to a GPU whose
    heartbeat measured that much free; None (it goes on waiting) when there is none, or after
    `_MAX_PLACEMENTS` moves in this attempt."""
    from autotrain.fleet import placement
    from autotrain.jobs.keys import gpu_queue_name

    job = ctx.job
    roomy = [g for g in placement.fleet_gpus(ctx.store.redis)
             if g.place not in (here, *job.avoid_gpus)
             and (g.memory_free or g.memory_total) >= need]  # fmt: skip
    target = placement.best_fit(roomy, need)
    if target is None or _placements(ctx) >= _MAX_PLACEMENTS:
        return None
    queue = gpu_queue_name(target.host, target.gpu)
    measured = f" (NVML: {free_here / placement.GIB:.1f} GiB)" if free_here is not None else ""
    why = f"{need / placement.GIB:.1f} GiB are not free on GPU {here}{measured}"
    placed = {"attempt": job.attempt, "event": "placed", "queue": queue, "error": why}
    return Requeue("train", {"queue": queue}, placed)


def _measured_free(gpu: int) -> int | None:
    measured = gpu_memory(gpu)
    return measured[1] if measured else None


def _placements(ctx: PhaseContext) -> int:
    return sum(1 for e in ctx.store.history(ctx.job.id)
               if e.get("event") == "placed" and e.get("attempt") == ctx.job.attempt)  # fmt: skip


def move_off_a_failing_gpu(ctx: PhaseContext, run, host: str, gpus: list[int]) -> Requeue | None:
    """An NCCL (GPU or link) or hardware failure (ECC, Xid, a GPU lost) is this GPU's, not the
    job's: count it against the GPU
    (`status` marks a GPU suspect after `suspect_gpu_failures` in a day) and queue the training
    again as the next attempt, on any GPU but this one. Pinned jobs and CPU runs fail as before."""
    error = run.error_event or {}
    job, settings = ctx.job, ctx.settings
    if (
        run.succeeded
        or error.get("cause") not in ("nccl", "hardware")
        or not gpus
        or job.spec.gpu_ids
    ):
        return None
    pipe = ctx.store.redis.pipeline(transaction=False)
    for gpu in gpus:
        pipe.incr(keys.gpu_failures(host, gpu))
        pipe.expire(keys.gpu_failures(host, gpu), 86400)
    pipe.execute()
    where = [f"{host}:{g}" for g in gpus]
    ctx.store.add_history(job.id, attempt=job.attempt, event="gpu failure", gpu=",".join(where),
                          step=run.last_step, error=error.get("line"))  # fmt: skip
    if job.attempts_exhausted(settings.max_attempts):
        return None
    fields = {"attempt": job.attempt + 1, "avoid_gpus": sorted({*job.avoid_gpus, *where}),
              "queue": keys.GPU_QUEUE}  # fmt: skip
    return Requeue("train", fields, why=f"{error.get('cause')} failure on GPU {where}; "
                   "re-queued away from it")  # fmt: skip


def step_down_after_oom(ctx: PhaseContext, run, worker: str, gpu_label: str) -> Requeue | None:
    """Out of GPU memory: the profile's next leaner variant, configured anew and resumed from
    the newest state. None when the run did not run out of memory or no variant is left (the
    job then fails with the trainer's line). Other failures are never retried: bad data or
    config fails the same way every time."""
    error = run.error_event or {}
    if run.succeeded or error.get("cause") != "oom":
        return None
    job = ctx.job
    profile = profile_for(job.spec, ctx.settings)
    variant = profile.variant(job.variant + 1) if job.variant < len(profile.ladder) else None
    if variant is None:
        if profile.ladder:
            tried = ", ".join(v.name for v in profile.ladder)
            # raise_for_trainer quotes this event: the job's error then says the ladder is spent
            run.error_event = {**error, "message": f"{error.get('message')} (every leaner "
                               f"variant of {profile.name} was tried: {tried})"}  # fmt: skip
        return None
    why = (f"out of GPU memory on {worker} (GPU {gpu_label}) at step {run.last_step}; next: "
           f"{variant.name} (needs about {variant.vram_gb:g} GB)")  # fmt: skip
    oom = {"attempt": job.attempt, "event": "out of memory", "worker": worker, "gpu": gpu_label,
           "step": run.last_step, "error": why, "variant": variant.name}  # fmt: skip
    return Requeue("configure", {"attempt": job.attempt + 1, "variant": job.variant + 1}, oom,
                   f"{why}; re-queued as attempt {job.attempt + 1}")  # fmt: skip


def retry_stalled(ctx: PhaseContext, run, worker: str, gpu_label: str) -> Decision:
    """A trainer the watchdog ended: a failure of this GPU, not of the job. Its train phase goes
    back to the queue as the next attempt and resumes from the newest saved state."""
    why = (f"the trainer made no progress for {run.stalled_seconds:.0f} s on {worker} "
           f"(GPU {gpu_label}) after step {run.last_step}, and was stopped")  # fmt: skip
    return _train_again(ctx, "stalled", why, worker, gpu_label, run.last_step)


def resume_after_lost_guard(ctx: PhaseContext, run, worker: str, gpu_label: str) -> Decision | None:
    """The trainer's guard was killed (a stray `kill -9`) while this worker lived: the worker
    killed the unsupervised trainer, and the job goes on as for a lost worker, as the next
    attempt from the newest saved state. The guard's exit status is not the trainer's, so the
    run is never read as the trainer's failure. None when the guard lived."""
    if not run.guard_lost:
        return None
    why = (f"the trainer's guard process was killed on {worker} (GPU {gpu_label}) at step "
           f"{run.last_step}; the trainer was stopped with it")  # fmt: skip
    return _train_again(ctx, "guard lost", why, worker, gpu_label, run.last_step)


def give_back_preempted(ctx: PhaseContext, run, worker: str, gpu_label: str) -> Decision:
    """Its host is going away (SIGTERM, `autotrain worker --drain`): the trainer was stopped and
    its newest state uploaded, and the job goes back to the queue at once as the next attempt.
    Being preempted is never the job's fault: it does not count against `max_attempts`."""
    job = ctx.job
    why = (f"{worker} (GPU {gpu_label}) was stopped at step {run.last_step} (its host is "
           "going away)")  # fmt: skip
    entry = {"attempt": job.attempt, "event": "preempted", "worker": worker, "gpu": gpu_label,
             "step": run.last_step, "error": why}  # fmt: skip
    fields = {"attempt": job.attempt + 1, "attempt_base": (job.attempt_base or 0) + 1}
    return Requeue("train", fields, entry, f"{why}; re-queued as attempt {job.attempt + 1}")


def _train_again(ctx: PhaseContext, event: str, why: str, worker: str, gpu_label: str,
                 step: int | None) -> Decision:  # fmt: skip
    """A run ended by something that is not the job's fault: its train phase goes back to the
    queue as the next attempt (resuming from the newest saved state), or the job fails once its
    attempts are spent. `event` names it in the job's history."""
    job, settings = ctx.job, ctx.settings
    entry = {"attempt": job.attempt, "event": event, "worker": worker, "gpu": gpu_label,
             "step": step, "error": why}  # fmt: skip
    if job.attempts_exhausted(settings.max_attempts):
        return Fail(f"{why[0].upper()}{why[1:]}; giving up after "
                    f"max_attempts={settings.max_attempts}.", entry)  # fmt: skip
    return Requeue("train", {"attempt": job.attempt + 1}, entry,
                   f"{why}; re-queued as attempt {job.attempt + 1}")  # fmt: skip
