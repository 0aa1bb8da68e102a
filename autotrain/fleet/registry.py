"""The worker registry in Redis, as readers see it: which workers are alive, what queues they
consume, what GPU they drive and what jobs they are busy with. Workers write it from
autotrain.worker.heartbeat; this module reads it without importing Celery, for the CLI's sake,
and hands every reader the same typed `WorkerRecord`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from autotrain.jobs import keys

__all__ = [
    "request_drain",
    "clear_drain",
    "is_draining",
    "DrainWatch",
    "announce_starting",
    "starting_workers",
    "WorkerRecord",
    "live_workers",
    "gpu_failure_counts",
]


@dataclass(frozen=True)
class WorkerRecord:
    """One live worker as its last heartbeat described it (a GPU worker, a CPU or a prep one)."""

    name: str  # Celery's hostname: `gpu0@host`, `cpu@host`, `prep@host`
    host: str = ""
    gpu: str = ""  # the GPU index it drives ("" for CPU and prep workers)
    gpu_uuid: str = ""
    gpu_name: str = ""  # the model NVML names: its pace is kept by it (autotrain.fleet.pace)
    memory_total: int | None = None  # bytes, measured at each beat
    memory_free: int | None = None
    utilization: float | None = None  # percent
    temperature: float | None = None  # degrees Celsius
    queues: list[str] = field(default_factory=list)  # in the order it takes from them
    jobs: list[str] = field(default_factory=list)  # ids of the jobs it trains now
    slots: int = 1  # jobs it trains at once (its --concurrency)
    pid: int | None = None
    started_at: float | None = None
    last_heartbeat: float | None = None

    @property
    def job(self) -> str | None:
        """The jobs it is busy with in one string; None when idle."""
        return ", ".join(self.jobs) or None

    @property
    def is_gpu(self) -> bool:
        return self.gpu != ""

    @property
    def takes_training(self) -> bool:
        """Whether it consumes the shared training queue (GPU and CPU workers, not prep ones)."""
        return keys.GPU_QUEUE in self.queues

    @property
    def model(self) -> str:
        """The GPU model whose measured paces apply to it ("cpu" for a CPU worker)."""
        return (self.gpu_name or "GPU") if self.is_gpu else "cpu"

    @property
    def place(self) -> str:
        """`host:index`, as a job's avoided GPUs name it."""
        return f"{self.host}:{self.gpu}"

    @classmethod
    def from_heartbeat(cls, info: dict[str, Any], jobs: list[str] = (), seen: float | None = None,
                       ) -> WorkerRecord:  # fmt: skip
        """The record of a heartbeat's JSON (autotrain.worker.heartbeat), unknown fields aside."""
        known = {name: info[name] for name in cls.__dataclass_fields__ if name in info}
        known["gpu"] = str(known.get("gpu") or "")
        known["slots"] = int(known.get("slots") or 1)
        return cls(**{**known, "jobs": sorted(jobs), "last_heartbeat": seen})


def live_workers(client: redis.Redis, within: float = 90.0) -> list[WorkerRecord]:
    """Workers that announced themselves in the last `within` seconds, by name, with the jobs
    they train."""
    now = time.time()
    seen = dict(client.zrangebyscore(keys.WORKERS, now - within, "+inf", withscores=True))
    if not seen:
        return []
    names = sorted(seen)
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.get(keys.worker(name))
        pipe.zrangebyscore(keys.worker_jobs(name), now, "+inf")
    replies = pipe.execute()
    return [WorkerRecord.from_heartbeat(json.loads(raw), busy, seen[name])
            for name, raw, busy in zip(names, replies[::2], replies[1::2], strict=True) if raw]  # fmt: skip


def announce_starting(client: redis.Redis, host: str, names: list[str], seconds: float = 120.0,
                      ) -> None:  # fmt: skip
    """`host` is starting these workers: until they announce themselves (or `seconds` pass), a
    job waiting for a worker says so, instead of telling the user to start one."""
    entry = {"names": names, "until": time.time() + seconds}
    client.hset(keys.WORKERS_STARTING, host, json.dumps(entry))


def starting_workers(client: redis.Redis) -> list[str]:
    """The workers some host said it is starting, not yet due (names)."""
    now, names = time.time(), []
    for raw in client.hvals(keys.WORKERS_STARTING):
        entry = json.loads(raw)
        if entry.get("until", 0) > now:
            names += entry.get("names", [])
    return sorted(names)


def gpu_failure_counts(client: redis.Redis, workers: list[WorkerRecord]) -> dict[str, int]:
    """{worker name: NCCL or hardware failures seen on its GPU in the last day}, GPU workers only."""
    gpus = [w for w in workers if w.is_gpu]
    if not gpus:
        return {}
    pipe = client.pipeline(transaction=False)
    for worker in gpus:
        pipe.get(keys.gpu_failures(worker.host, worker.gpu))
    return {w.name: int(n or 0) for w, n in zip(gpus, pipe.execute(), strict=True)}


def request_drain(client: redis.Redis, host: str, seconds: float) -> None:
    """Ask `host`'s workers to give their jobs back and stop (for `seconds` at most): what
    SIGTERM does on that host, and `autotrain worker --drain` from anywhere."""
    client.set(keys.host_drain(host), str(time.time()), ex=max(1, int(seconds)))


def clear_drain(client: redis.Redis, host: str) -> None:
    client.delete(keys.host_drain(host))


def is_draining(client: redis.Redis, host: str) -> bool:
    return bool(client.exists(keys.host_drain(host)))


class DrainWatch:
    """`is_draining`, asked at most every `every` seconds: loops that poll twice a second (a
    trainer's cancel check, a wait for GPUs) learn of a drain within `every` and cost Redis
    one command per `every`, not one per poll."""

    def __init__(self, client: redis.Redis, host: str, every: float = 2.0):
        self.client, self.host, self.every = client, host, every
        self._asked_at, self._answer = float("-inf"), False

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._asked_at >= self.every:
            self._asked_at, self._answer = now, is_draining(self.client, self.host)
        return self._answer
