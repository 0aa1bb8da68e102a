"""The status of the fleet, as `autotrain status` and the dashboard's fleet page show it: Redis,
the live workers with their GPUs and their GPU's recent failures, and the queue depths.

    from autotrain import fleet_status
    for worker in fleet_status().workers:
        print(worker.record.name, worker.record.gpu_name, worker.failures)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from autotrain.fleet.registry import WorkerRecord
from autotrain.settings import Settings, load_settings

__all__ = ["fleet_status", "fleet_workers", "FleetStatus", "RedisStatus", "WorkerStatus"]


@dataclass(frozen=True)
class RedisStatus:
    kind: str  # "embedded" (this workspace's own) or "shared" (AUTOTRAIN_REDIS_URL)
    running: bool
    url: str  # its password redacted
    used_memory: int = 0  # bytes
    maxmemory: int = 0  # bytes; 0: no limit
    problem: str = ""  # why it does not answer, when it does not (the password never in it)


@dataclass(frozen=True)
class WorkerStatus:
    """A live worker and the NCCL or hardware failures seen on its GPU in the last day."""

    record: WorkerRecord
    failures: int = 0
    suspect: bool = False  # failures reached the `suspect_gpu_failures` setting


@dataclass(frozen=True)
class FleetStatus:
    redis: RedisStatus
    workers: list[WorkerStatus] = field(default_factory=list)
    queues: dict[str, int] = field(default_factory=dict)  # messages waiting in each queue


def fleet_status(*, settings: Settings | None = None) -> FleetStatus:
    """Redis, the live workers and the queues; only the Redis part when Redis is down."""
    import autotrain.fleet.cluster as local
    from autotrain.jobs.connection import get_redis

    settings = settings or load_settings()
    cluster = local.cluster_status(settings)
    kind = "embedded" if cluster.embedded else "shared"
    url = local.redact(cluster.redis_url or "")
    if not cluster.redis_running:
        return FleetStatus(RedisStatus(kind, False, url, problem=cluster.problem))
    client = get_redis(settings)
    memory = client.info("memory")
    redis_status = RedisStatus(kind, True, url, memory.get("used_memory", 0),
                               memory.get("maxmemory", 0))  # fmt: skip
    return FleetStatus(redis_status, _with_failures(client, settings), _queue_depths(client))


def fleet_workers(*, settings: Settings | None = None) -> list[WorkerRecord]:
    """The live workers (autotrain.fleet.registry), without the rest of the status."""
    from autotrain.fleet.registry import live_workers
    from autotrain.jobs.connection import get_redis

    return live_workers(get_redis(settings or load_settings()))


def _with_failures(client, settings: Settings) -> list[WorkerStatus]:
    from autotrain.fleet.registry import gpu_failure_counts, live_workers

    workers = live_workers(client)
    counts = gpu_failure_counts(client, workers)
    return [WorkerStatus(w, counts.get(w.name, 0),
                         counts.get(w.name, 0) >= settings.suspect_gpu_failures) for w in workers]  # fmt: skip


def _queue_depths(client) -> dict[str, int]:
    from autotrain.jobs.queue import queue_depths
    from autotrain.jobs.store import JobStore

    return queue_depths(JobStore(client))
