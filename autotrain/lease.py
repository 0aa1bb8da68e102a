"""Leases, GPU locks and batch slots: the Redis-side coordination of long jobs.

A task holds `autotrain:lease:<job>` while it works and renews it; when a host dies the lease
expires and the reaper (a thread in every worker) re-queues the job, which resumes from its newest
checkpoint. Messages are acknowledged early, so the broker never redelivers anything by itself.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

from autotrain.connection import KEY_PREFIX

__all__ = [
    "Lease",
    "hold_lease",
    "lease_key",
    "acquire_batch_slot",
    "release_batch_slot",
    "create_batch",
    "acquire_gpus",
    "release_gpus",
    "renew_gpus",
]

log = logging.getLogger(__name__)


def lease_key(job_id: str) -> str:
    return f"{KEY_PREFIX}lease:{job_id}"


class Lease:
    """A renewed Redis key naming the worker that owns a job right now.

    Renewal only extends a lease that is still this holder's (or gone, e.g. after a Redis
    restart). If another holder took it, because the reaper re-queued the job while this worker
    was cut off, `lost` is set: the holder must stop working on the job and leave it alone.
    """

    def __init__(self, client: redis.Redis, job_id: str, owner: str, seconds: float) -> None:
        self.client, self.job_id = client, job_id
        self.owner = f"{owner}/{secrets.token_hex(4)}"  # unique even for a restarted worker
        self.ms = int(seconds * 1000)
        self.extra: list[Callable[[], None]] = []
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_forever, daemon=True)

    def start(self) -> Lease:
        self.client.set(lease_key(self.job_id), self.owner, px=self.ms)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(redis.RedisError):
            self.client.eval(_DELETE_IF_MINE, 1, lease_key(self.job_id), self.owner)

    def _renew_forever(self) -> None:
        while not self._stop.wait(self.ms / 3000):
            try:
                if not self.client.eval(
                    _TAKE_IF_FREE_OR_MINE, 1, lease_key(self.job_id), self.owner, self.ms
                ):
                    log.warning("lease of %s was taken over; this worker lets go", self.job_id)
                    self.lost.set()
                    return
                for renew in self.extra:
                    renew()
            except redis.RedisError as exc:  # Redis restarting: retry until the lease runs out
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


@contextmanager
def hold_lease(client: redis.Redis, job_id: str, owner: str, seconds: float) -> Iterator[Lease]:
    lease = Lease(client, job_id, owner, seconds).start()
    try:
        yield lease
    finally:
        lease.stop()


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
    base = f"{KEY_PREFIX}batch:{batch_id}"
    return [f"{base}:training", f"{base}:parked", base]


def create_batch(client: redis.Redis, batch_id: str, max_concurrent: int) -> None:
    client.hset(_batch_keys(batch_id)[2], mapping={"max_concurrent": max(1, max_concurrent)})


def acquire_batch_slot(client: redis.Redis, batch_id: str, job_id: str, order: float) -> bool:
    """True when the job may train now; False parks it until a slot frees."""
    return bool(client.eval(_ACQUIRE_SLOT, 3, *_batch_keys(batch_id), job_id, order))


def release_batch_slot(client: redis.Redis, batch_id: str, job_id: str) -> str | None:
    """Free the job's slot; returns the parked job that now owns it, if any."""
    return client.eval(_RELEASE_SLOT, 3, *_batch_keys(batch_id), job_id)


# GPU locks: a job holds every GPU it uses, taken in ascending order so two multi-GPU jobs
# never deadlock; the locks expire with the lease if the host dies.


def gpu_lock_key(host: str, gpu: int) -> str:
    return f"{KEY_PREFIX}gpu:{host}:{gpu}"


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
            _TAKE_IF_FREE_OR_MINE, 1, gpu_lock_key(host, gpu), job_id, int(lease_seconds * 1000)
        ):
            if should_stop():
                release_gpus(client, host, gpus, job_id)
                return False
            if on_wait:
                on_wait(gpu, client.get(gpu_lock_key(host, gpu)) or "?")
            threading.Event().wait(1.0)
            renew_gpus(client, host, [g for g in gpus if g < gpu], job_id, lease_seconds)
    return True


def renew_gpus(
    client: redis.Redis, host: str, gpus: list[int], job_id: str, lease_seconds: float
) -> None:
    for gpu in gpus:
        client.eval(
            _TAKE_IF_FREE_OR_MINE, 1, gpu_lock_key(host, gpu), job_id, int(lease_seconds * 1000)
        )


def release_gpus(client: redis.Redis, host: str, gpus: list[int], job_id: str) -> None:
    for gpu in gpus:
        client.eval(_DELETE_IF_MINE, 1, gpu_lock_key(host, gpu), job_id)
