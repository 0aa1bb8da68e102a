"""Leases, GPU locks and batch slots: the Redis-side coordination of long jobs.

A worker that takes a job (autotrain.scripts.MOVE, owner "worker:<token>") holds its lease: a
deadline in `autotrain:leases` that a thread renews every third of the lease, only while the
worker still owns the job. When a worker dies its deadline passes and the reaper re-queues the
job (autotrain.reaper); a job waiting in a queue holds no lease and is never reaped. Messages are
acknowledged early, so the broker never redelivers anything by itself.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable

import redis

from autotrain import keys

__all__ = [
    "Lease",
    "new_owner",
    "acquire_batch_slot",
    "release_batch_slot",
    "create_batch",
    "acquire_gpus",
    "release_gpus",
    "renew_gpus",
]

log = logging.getLogger(__name__)


def new_owner(worker: str) -> str:
    """A worker's owner token for one job: unique even for a restarted worker of that name."""
    return f"worker:{worker}/{secrets.token_hex(4)}"


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


# Set a key with expiry unless another holder has it: renews leases and takes GPU locks.
_TAKE_IF_FREE_OR_MINE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# Delete a key only while this holder has it: ends leases and frees GPU locks.
_DELETE_IF_MINE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


# Batch slots: at most `max_concurrent` jobs of a batch train at once. A job that finds the batch
# full is parked (ordered by submission); a finishing job hands its slot to the first parked one.
_ACQUIRE_SLOT = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 1 end
local limit = tonumber(redis.call('HGET', KEYS[3], 'max_concurrent') or '1')
if redis.call('SCARD', KEYS[1]) < limit then
  redis.call('SADD', KEYS[1], ARGV[1]); redis.call('ZREM', KEYS[2], ARGV[1]); return 1
end
redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1])
return 0
"""

_RELEASE_SLOT = """
redis.call('SREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local limit = tonumber(redis.call('HGET', KEYS[3], 'max_concurrent') or '1')
if redis.call('SCARD', KEYS[1]) >= limit then return false end
local nxt = redis.call('ZPOPMIN', KEYS[2])
if #nxt == 0 then return false end
redis.call('SADD', KEYS[1], nxt[1])
return nxt[1]
"""


def _batch_keys(batch_id: str) -> list[str]:
    base = keys.batch(batch_id)
    return [f"{base}:training", f"{base}:parked", base]


def create_batch(client: redis.Redis, batch_id: str, max_concurrent: int, name: str = "") -> None:
    settings = {"max_concurrent": max(1, max_concurrent), "name": name or batch_id}
    client.hset(_batch_keys(batch_id)[2], mapping=settings)


def acquire_batch_slot(client: redis.Redis, batch_id: str, job_id: str, order: float) -> bool:
    """True when the job may train now; False parks it until a slot frees."""
    return bool(client.eval(_ACQUIRE_SLOT, 3, *_batch_keys(batch_id), job_id, order))


def release_batch_slot(client: redis.Redis, batch_id: str, job_id: str) -> str | None:
    """Free the job's slot; returns the parked job that now owns it, if any."""
    return client.eval(_RELEASE_SLOT, 3, *_batch_keys(batch_id), job_id)


# GPU locks: a job holds every GPU it uses, taken in ascending order so two multi-GPU jobs
# never deadlock; the locks expire with the lease if the host dies.


def acquire_gpus(
    client: redis.Redis,
    host: str,
    gpus: list[int],
    job_id: str,
    lease_seconds: float,
    should_stop: Callable[[], bool],
    on_wait: Callable[[int, str], None] | None = None,
) -> bool:
    """Take every GPU in order, waiting for busy ones; False when `should_stop()` says give up."""
    for gpu in sorted(gpus):
        while not client.eval(
            _TAKE_IF_FREE_OR_MINE, 1, keys.gpu_lock(host, gpu), job_id, int(lease_seconds * 1000)
        ):
            if should_stop():
                release_gpus(client, host, gpus, job_id)
                return False
            if on_wait:
                on_wait(gpu, client.get(keys.gpu_lock(host, gpu)) or "?")
            threading.Event().wait(1.0)
            renew_gpus(client, host, [g for g in gpus if g < gpu], job_id, lease_seconds)
    return True


def renew_gpus(
    client: redis.Redis, host: str, gpus: list[int], job_id: str, lease_seconds: float
) -> None:
    for gpu in gpus:
        client.eval(
            _TAKE_IF_FREE_OR_MINE, 1, keys.gpu_lock(host, gpu), job_id, int(lease_seconds * 1000)
        )


def release_gpus(client: redis.Redis, host: str, gpus: list[int], job_id: str) -> None:
    for gpu in gpus:
        client.eval(_DELETE_IF_MINE, 1, keys.gpu_lock(host, gpu), job_id)
