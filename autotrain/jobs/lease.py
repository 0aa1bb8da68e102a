"""Leases, GPU locks and batch slots: the Redis-side coordination of long jobs.

A worker that takes a job (autotrain.jobs.scripts.MOVE, owner `worker_owner(token)`) holds its lease: a
deadline in `autotrain:leases` that a thread renews every third of the lease, only while the
worker still owns the job. When a worker dies its deadline passes and the reaper re-queues the
job (autotrain.jobs.reaper); a job waiting in a queue holds no lease and is never reaped. Messages are
acknowledged early, so the broker never redelivers anything by itself.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from autotrain.jobs import keys, scripts
from autotrain.jobs.owners import worker_owner

__all__ = [
    "Lease",
    "new_owner",
    "acquire_batch_slot",
    "release_batch_slot",
    "create_batch",
    "batch_name",
    "acquire_gpus",
    "release_gpus",
    "renew_gpus",
    "gpu_holders",
    "GpuRoom",
]

log = logging.getLogger(__name__)


def new_owner(worker: str) -> str:
    """A worker's owner token for one job: unique even for a restarted worker of that name."""
    return worker_owner(f"{worker}/{secrets.token_hex(4)}")


class Lease:
    """Renews a worker's ownership of a job until stopped.

    If the job was moved away meanwhile (re-queued because this worker was cut off, or
    cancelled), `lost` is set: the holder must stop working on the job and leave it alone.
    While Redis is unreachable it keeps trying: the reaper waits a grace beyond the deadline.
    """

    def __init__(self, store, job_id: str, owner: str, seconds: float) -> None:
        self.store, self.job_id, self.owner, self.seconds = store, job_id, owner, seconds
        self.extra: list[Callable[[], None]] = []
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_forever, daemon=True)

    def deadline(self) -> float:
        return time.time() + self.seconds

    def start(self) -> Lease:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _renew_forever(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self.store.renew(self.job_id, self.owner, self.deadline()):
                    if not self._stop.is_set():
                        log.warning("%s was moved away from this worker; letting go", self.job_id)
                        self.lost.set()
                    return
                for renew in self.extra:
                    renew()
            except redis.RedisError as exc:  # Redis restarting: retry; the reaper waits a grace
                log.warning("lease renewal for %s failed: %s", self.job_id, exc)


# Batch slots: at most `max_concurrent` jobs of a batch train at once. A job that finds the batch
# full is parked (ordered by submission); a finishing job hands its slot to the first parked one
# (scripts ACQUIRE_SLOT and RELEASE_SLOT in autotrain.jobs.scripts).


def _batch_keys(batch_id: str) -> list[str]:
    base = keys.batch(batch_id)
    return [f"{base}:training", f"{base}:parked", base]


def create_batch(client: redis.Redis, batch_id: str, max_concurrent: int, name: str = "") -> None:
    settings = {"max_concurrent": max(1, max_concurrent), "name": name or batch_id}
    client.hset(_batch_keys(batch_id)[2], mapping=settings)


def batch_name(client: redis.Redis, batch_id: str) -> str | None:
    """The name `create_batch` gave the batch; None for an unknown batch."""
    return client.hget(keys.batch(batch_id), "name")


def acquire_batch_slot(client: redis.Redis, batch_id: str, job_id: str, order: float) -> bool:
    """True when the job may train now; False parks it until a slot frees."""
    return bool(scripts.ACQUIRE_SLOT(client, _batch_keys(batch_id), [job_id, order]))


def release_batch_slot(client: redis.Redis, batch_id: str, job_id: str) -> str | None:
    """Free the job's slot; returns the parked job that now owns it, if any."""
    return scripts.RELEASE_SLOT(client, _batch_keys(batch_id), [job_id])


# GPU reservations: a job reserves memory on every GPU it uses, taken in ascending order so two
# multi-GPU jobs never deadlock. A GPU admits jobs while their count stays within `max_jobs`
# and their reserved bytes within the GPU's capacity (0: not counted). Reservations expire
# with the lease if the host dies. With `max_jobs` 1 a reservation is a plain exclusive lock.
# Where NVML measures the GPU, a new reservation also needs that much memory free right now:
# other programs on the GPU (a notebook, another user's job) hold memory no reservation shows.
# (script RESERVE in autotrain.jobs.scripts).


@dataclass
class GpuRoom:
    """What a job asks of each GPU: its memory, and the GPU's limits as its worker knows them."""

    need_bytes: int = 0
    max_jobs: int = 1
    capacity_bytes: dict[int, int] = field(default_factory=dict)  # GPU index -> total memory
    free_bytes: Callable[[int], int | None] | None = None  # measures a GPU's free memory now


def acquire_gpus(
    client: redis.Redis,
    host: str,
    gpus: list[int],
    job_id: str,
    lease_seconds: float,
    should_stop: Callable[[], bool],
    on_wait: Callable[[int, str], None] | None = None,
    room: GpuRoom | None = None,
) -> bool:
    """Reserve every GPU in order, waiting while one is full; False when `should_stop()` says
    give up. `on_wait(gpu, why)` says what the GPU it waits for is full of."""
    room = room or GpuRoom()
    for gpu in sorted(gpus):
        while (answer := _reserve(client, host, gpu, job_id, lease_seconds, room)) != 1:
            if should_stop():
                release_gpus(client, host, gpus, job_id)
                return False
            if on_wait:
                on_wait(gpu, _why_full(client, host, gpu, room, answer))
            threading.Event().wait(1.0)
            renew_gpus(client, host, [g for g in gpus if g < gpu], job_id, lease_seconds, room)
    return True


def renew_gpus(client: redis.Redis, host: str, gpus: list[int], job_id: str,
               lease_seconds: float, room: GpuRoom | None = None) -> None:  # fmt: skip
    for gpu in gpus:
        _reserve(client, host, gpu, job_id, lease_seconds, room or GpuRoom())


def gpu_holders(client: redis.Redis, host: str, gpu: int) -> list[str]:
    """The jobs holding a reservation on a GPU now."""
    now = time.time() * 1000
    return sorted(job for job, value in client.hgetall(keys.gpu_lock(host, gpu)).items()
                  if float(value.split()[1]) >= now)  # fmt: skip


def _reserve(client: redis.Redis, host: str, gpu: int, job_id: str, lease_seconds: float,
             room: GpuRoom) -> int:  # fmt: skip
    free = room.free_bytes(gpu) if room.free_bytes and room.need_bytes else None
    args = [job_id, room.need_bytes, int(lease_seconds * 1000), int(time.time() * 1000),
            room.max_jobs, room.capacity_bytes.get(gpu, 0), -1 if free is None else free]  # fmt: skip
    return int(scripts.RESERVE(client, [keys.gpu_lock(host, gpu)], args))


def _why_full(client: redis.Redis, host: str, gpu: int, room: GpuRoom, answer: int) -> str:
    if answer == -1 and room.free_bytes:
        free = room.free_bytes(gpu) or 0
        return (f"NVML measures {free / 2**30:.1f} GiB free there and the job needs "
                f"{room.need_bytes / 2**30:.1f} GiB: other processes use the rest")  # fmt: skip
    return f"held by job {', '.join(gpu_holders(client, host, gpu)) or '?'}"


def release_gpus(client: redis.Redis, host: str, gpus: list[int], job_id: str) -> None:
    for gpu in gpus:
        client.hdel(keys.gpu_lock(host, gpu), job_id)
