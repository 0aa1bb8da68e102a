"""The worker registry in Redis, as readers see it: which workers are alive, what queues they
consume and what job they are busy with. Workers write it from autotrain.worker.heartbeat; this module
reads it without importing Celery, for the CLI's sake.
"""

from __future__ import annotations

import json
import time

import redis

from autotrain.jobs import keys

__all__ = ["live_workers"]


def live_workers(client: redis.Redis, within: float = 90.0) -> list[dict]:
    """Workers that announced themselves in the last `within` seconds, with the jobs they train
    (`jobs`; `job` names them in one string, None when idle)."""
    now = time.time()
    names = client.zrangebyscore(keys.WORKERS, now - within, "+inf")
    if not names:
        return []
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.get(keys.worker(name))
        pipe.zrangebyscore(keys.worker_jobs(name), now, "+inf")
    replies = pipe.execute()
    workers = []
    for raw, busy in zip(replies[::2], replies[1::2], strict=True):
        if raw:
            info = json.loads(raw)
            info["jobs"] = sorted(busy)
            info["job"] = ", ".join(info["jobs"]) or None
            workers.append(info)
    return sorted(workers, key=lambda w: w["name"])
