"""When each waiting and training job will start and finish: the queue ETA.

The forecast replays the queue on the live fleet. A training job frees its GPU slot once its
remaining steps, at its live rate, and its final save are done. The waiting jobs, in the order
workers will take them (those a worker holds while it waits for GPU memory, then the broker's
start order, then the jobs still in phases 1-3, then the ones parked by their batch's
`--max-concurrent`), each take the earliest slot that can hold them: a worker has `slots` jobs
at once and, where its GPU's memory is known, the jobs on it must fit together, as the memory
reservations decide. Durations come from the measured pace of each profile on each GPU model
(autotrain.fleet.pace). Nothing is stored: every call recomputes from the live records, so the
forecast follows the rates as they change.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from autotrain.fleet import pace
from autotrain.fleet.registry import WorkerRecord
from autotrain.jobs.job import FINAL_STATES, Job, JobState
from autotrain.jobs.owners import HELD, PARKED, is_worker_owner
from autotrain.jobs.store import JobStore
from autotrain.profile import Profile, profile_for
from autotrain.settings import Settings

__all__ = ["Forecast", "forecast"]


@dataclass(frozen=True)
class Forecast:
    job_id: str
    starts_at: float | None  # None: it will not start by itself (held, no worker takes it)
    finishes_at: float | None
    gpu: str | None  # the worker expected to train it
    why: str  # the reasoning, in words (`train show`)


def forecast(store: JobStore, settings: Settings, now: float | None = None) -> dict[str, Forecast]:
    """A forecast for every job in progress (held and parked ones included), by job id."""
    from autotrain.fleet.registry import live_workers
    from autotrain.jobs.order import start_positions

    now = now or time.time()
    from autotrain.fleet.waiting import batch_limits

    jobs = store.list(states=set(JobState) - FINAL_STATES)
    workers = [w for w in live_workers(store.redis) if w.takes_training]
    fleet = _Fleet(workers, pace.read_paces(store.redis), settings)
    limits = batch_limits(store.redis, {j.spec.batch_id for j in jobs if j.owner == PARKED})
    results: dict[str, Forecast] = {}
    for job in jobs:
        if job.state == JobState.TRAINING:
            results[job.id] = fleet.running(job, now)
    queues = sorted({q for w in workers for q in w.queues if q.startswith("gpu")})
    for job in _waiting_in_order(jobs, start_positions(store, jobs, queues)):
        if job.held or job.owner == HELD:
            results[job.id] = Forecast(job.id, None, None, None,
                                       f"held: it starts after `autotrain train release --job {job.id}`")  # fmt: skip
        else:
            results[job.id] = fleet.place(job, now, limits.get(job.spec.batch_id or ""))
    return results


class _Slot:
    """One GPU worker (or CPU worker) in the replay: what runs on it, and when."""

    def __init__(self, info: WorkerRecord, settings: Settings) -> None:
        self.name, self.host, self.gpu = info.name, info.host, info.gpu
        self.model = info.model
        self.queues: list[str] = info.queues
        self.capacity = info.slots
        self.memory: int | None = info.memory_total
        self.margin_gb = settings.vram_margin_gb
        self.runs: list[tuple[float, float, int, str]] = []  # start, end, bytes, job id
        self.floor = 0.0  # the start of the last job booked here

    def earliest(self, ready: float, seconds: float, need: int) -> tuple[float, str | None]:
        """The first time from `ready` at which a job of `need` bytes fits here for `seconds`,
        and the job whose end makes room (None when it fits at once).

        A worker starts the jobs it takes in order, so none starts before the last one booked
        here; runs that ended by then no longer matter and are dropped, which keeps a replay of
        a thousand jobs linear."""
        if self.memory and need > self.memory:
            return math.inf, None
        ready = max(ready, self.floor)
        self.runs = [run for run in self.runs if run[1] > ready]
        ends = sorted((end, job) for _, end, _, job in self.runs)
        for start, freed_by in [(ready, None), *ends]:
            if self._fits(start, start + seconds, need):
                return start, freed_by
        return math.inf, None

    def book(self, start: float, end: float, need: int, job_id: str) -> None:
        self.runs.append((start, end, need, job_id))
        self.floor = max(self.floor, start)

    def _fits(self, start: float, end: float, need: int) -> bool:
        moments = [start] + [s for s, _, _, _ in self.runs if start < s < end]
        for moment in moments:
            active = [b for s, e, b, _ in self.runs if s <= moment < e]
            if len(active) + 1 > self.capacity:
                return False
            if self.memory and need and sum(active) + need > self.memory:
                return False
        return True


@dataclass
class _Fleet:
    workers: list[WorkerRecord]
    paces: dict
    settings: Settings
    slots: dict[str, _Slot] = field(default_factory=dict)
    batches: dict[str, list[float]] = field(default_factory=dict)  # batch id -> its jobs' ends
    live: dict[tuple[str, str], list[tuple[float, float]]] = field(default_factory=dict)
    profiles: dict[str, Profile] = field(default_factory=dict)
    needs: dict[tuple[str, int], int] = field(default_factory=dict)
    chosen_paces: dict[tuple[str, str], pace.Pace] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.slots = {w.name: _Slot(w, self.settings) for w in self.workers}

    def running(self, job: Job, now: float) -> Forecast:
        slot = self.slots.get(job.train_worker or "")
        model = slot.model if slot else "cpu" if job.gpu == "cpu" else "GPU"
        profile = self._profile(job)
        paced = pace.pace_for(self.paces, profile, model)
        per_step = 1 / job.rate if job.rate else paced.seconds_per_step
        began = job.attempt_started_at or job.training_started_at or now
        if job.rate and job.step:  # a pace for jobs not measured yet: seconds per step, startup
            startup = max(0.0, now - began - job.step * per_step)
            self.live.setdefault((profile.name, model), []).append((per_step, startup))
        total = job.total or _planned_steps(job) or 0
        left = max(0, total - job.step)
        seconds = left * per_step + paced.tail_seconds
        if not job.step:  # still loading: what is left of its startup
            seconds += max(0.0, paced.startup_seconds - (now - began))
        end = now + seconds
        self._book(slot, job, now, end)
        rate = "its live rate" if job.rate else paced.source
        return Forecast(job.id, job.attempt_started_at or job.training_started_at, end,
                        job.train_worker, f"{left} steps left at {per_step:.2f} s/step ({rate}) "
                        f"+ {paced.tail_seconds:.0f} s to save")  # fmt: skip

    def place(self, job: Job, now: float, batch_limit: int | None) -> Forecast:
        from autotrain.jobs.queue import training_queue

        profile = self._profile(job)
        queue = training_queue(job.spec)
        candidates = [s for s in self.slots.values() if queue in s.queues
                      and f"{s.host}:{s.gpu}" not in job.avoid_gpus]  # fmt: skip
        if is_worker_owner(job.owner) and job.worker in self.slots:
            candidates = [self.slots[job.worker]]  # taken: it waits for room where it is
        if not candidates:
            return Forecast(job.id, None, None, None, f"no live worker takes queue {queue!r}")
        ready = self._batch_gate(job, now, batch_limit)
        need = self._need(job, profile)
        best: tuple[float, str | None, _Slot, pace.Pace] | None = None
        for slot in candidates:
            paced = self._pace(profile, slot.model)
            steps = max(0, (job.total or _planned_steps(job) or paced.typical_steps) - job.step)
            start, freed_by = slot.earliest(ready, paced.seconds(steps), need)
            if best is None or start < best[0]:
                best = (start, freed_by, slot, paced)
        start, freed_by, slot, paced = best  # type: ignore[misc]
        if math.isinf(start):
            return Forecast(job.id, None, None, None,
                            f"no live worker's GPU holds its {need / 2**30:.1f} GiB")  # fmt: skip
        steps = max(0, (job.total or _planned_steps(job) or paced.typical_steps) - job.step)
        end = start + paced.seconds(steps)
        self._book(slot, job, start, end, need)
        after = f"when job {freed_by} ends" if freed_by else "as soon as it is taken"
        return Forecast(job.id, start, end, slot.name,
                        f"on {slot.name} {after}; {steps} steps x {paced.seconds_per_step:.2f} "
                        f"s/step + {paced.startup_seconds:.0f} s startup ({paced.source})")  # fmt: skip

    def _profile(self, job: Job) -> Profile:
        """Profiles are files: read each once per forecast, not once per job."""
        if job.spec.profile not in self.profiles:
            self.profiles[job.spec.profile] = profile_for(job.spec, self.settings)
        return self.profiles[job.spec.profile]

    def _pace(self, profile: Profile, model: str) -> pace.Pace:
        """Once the running jobs are replayed, a profile's pace on a model no longer changes."""
        key = (profile.name, model)
        if key not in self.chosen_paces:
            self.chosen_paces[key] = pace.pace_for(self.paces, profile, model, self.live)
        return self.chosen_paces[key]

    def _need(self, job: Job, profile: Profile) -> int:
        from autotrain.fleet.placement import need_bytes

        margin, config = self.settings.vram_margin_gb, _config(job)
        if config is not None:
            return need_bytes(profile, job.variant, margin, config)
        key = (profile.name, job.variant)  # from the template: the same for all its jobs
        if key not in self.needs:
            self.needs[key] = need_bytes(profile, job.variant, margin)
        return self.needs[key]

    def _book(self, slot: _Slot | None, job: Job, start: float, end: float, need: int = 0) -> None:
        if slot is not None:
            slot.book(start, end, need, job.id)
        if job.spec.batch_id:
            self.batches.setdefault(job.spec.batch_id, []).append(end)

    def _batch_gate(self, job: Job, now: float, limit: int | None) -> float:
        """When a parked job's batch has a free slot: once all but `limit - 1` of the batch's
        earlier jobs have ended."""
        if job.owner != PARKED or not limit:
            return now
        ends = sorted(self.batches.get(job.spec.batch_id or "", []), reverse=True)
        return max(now, ends[limit - 1]) if len(ends) >= limit else now


def _waiting_in_order(jobs: list[Job], positions: dict[str, int]) -> list[Job]:
    """The jobs that have not started training, in the order they will be taken; `positions`
    is their place in the broker's start order (autotrain.jobs.order.start_positions)."""
    waiting = [j for j in jobs if j.state not in (JobState.TRAINING, JobState.REPORTING)
               and j.phase != "report"]  # fmt: skip
    taken = [j for j in waiting if j.phase == "train" and is_worker_owner(j.owner)]
    queued = sorted((j for j in waiting if j.id in positions), key=lambda j: positions[j.id])
    seen = {j.id for j in taken + queued}
    parked = sorted((j for j in waiting if j.owner == PARKED and j.id not in seen),
                    key=lambda j: j.created_at)  # fmt: skip
    earlier = sorted((j for j in waiting if j.id not in seen and j.owner != PARKED),
                     key=lambda j: (j.priority, j.created_at))  # fmt: skip
    return taken + queued + earlier + parked


def _planned_steps(job: Job) -> int | None:
    return (job.plan or {}).get("total_steps")


def _config(job: Job) -> dict | None:
    """The job's trainer config once configured (its need depends on it)."""
    return (job.plan or {}).get("config")
