"""What every worker process does besides running tasks: announce itself and reap lost jobs.

On `worker_ready` the worker's main process starts a thread that refreshes its registry entry
(`autotrain:workers`, a sorted set by heartbeat, and `autotrain:worker:<name>`, read by
`autotrain status`) and registers the queues it consumes. Prep workers also run the reaper, so
any prep worker of the fleet recovers jobs whose worker died; GPU workers never spend a pass on
it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time

import redis
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from autotrain.jobs import keys

__all__: list[str] = []  # signal handlers only; read the registry with autotrain.fleet.registry

log = logging.getLogger(__name__)

_stop = threading.Event()


@worker_ready.connect
def _start_background(sender=None, **_kwargs) -> None:
    from autotrain.worker.context import worker_settings, worker_store

    name = sender.hostname if sender is not None else "worker"
    settings = worker_settings()
    info = {
        "name": name,
        "host": os.environ.get("AUTOTRAIN_HOST", ""),
        "gpu": os.environ.get("AUTOTRAIN_GPU_INDEX", ""),
        "gpu_uuid": os.environ.get("AUTOTRAIN_GPU_UUID", ""),
        "gpu_name": os.environ.get(
            "AUTOTRAIN_GPU_NAME", ""
        ),  # the model: its pace (autotrain.fleet.eta)
        "pid": os.getpid(),
        "queues": [q.name for q in sender.app.amqp.queues.consume_from.values()]  # taken in order
        if sender
        else [],
        "started_at": time.time(),
    }
    info["slots"] = settings.max_jobs_per_gpu if info["gpu"] else 1  # its --concurrency
    interval = max(1.0, settings.lease_seconds / 3)
    _kill_leftover_trainers(settings, info)

    reaps = "prep" in info["queues"]

    def loop() -> None:
        store = worker_store()
        while True:
            try:
                _announce(store.redis, name, info, interval)
                if reaps:
                    _reap_once(store, settings)
            except redis.RedisError as exc:
                log.warning("worker heartbeat failed (Redis unreachable?): %s", exc)
            except Exception:  # noqa: BLE001 - the loop must outlive one bad pass
                log.exception("reaper pass failed")
            if _stop.wait(interval):
                return

    threading.Thread(target=loop, name="autotrain-heartbeat", daemon=True).start()
    if "prep" in info["queues"]:
        threading.Thread(target=_warm_imports, name="autotrain-warmup", daemon=True).start()


def _kill_leftover_trainers(settings, info: dict) -> None:
    """A restarted GPU worker first kills what is left of the trainer its predecessor ran."""
    from autotrain.trainers.guard import device_records, kill_recorded_trainers
    from autotrain.workspace import Workspace

    if "prep" in info["queues"] or not info["host"]:
        return
    gpus = [int(info["gpu"])] if info["gpu"] else []
    records = device_records(Workspace(settings.workspace).state_dir, info["host"], gpus)
    for line in kill_recorded_trainers(records):
        log.warning("%s: %s", info["name"], line)


def _warm_imports() -> None:
    """Import what phases 1-3 and 5 need now, not in the first job's critical path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def _announce(client: redis.Redis, name: str, info: dict, interval: float) -> None:
    from autotrain.worker.launch import gpu_health, gpu_memory

    now = time.time()
    memory = gpu_memory() if info.get("gpu") else None
    if memory:  # measured at every beat: placement reads it (autotrain.fleet.placement)
        info["memory_total"], info["memory_free"] = memory
        info.update(gpu_health(int(info["gpu"])))  # the dashboard's fleet page shows it
    pipe = client.pipeline(transaction=False)
    pipe.set(keys.worker(name), json.dumps(info), ex=int(interval * 3) + 1)
    pipe.zadd(keys.WORKERS, {name: now})
    pipe.zremrangebyscore(keys.WORKERS, "-inf", now - 86400)  # gone for a day: forget it
    if info["queues"]:
        pipe.sadd(keys.QUEUES, *info["queues"])
    pipe.execute()


def _reap_once(store, settings) -> None:
    from autotrain.jobs.reaper import reap

    # One reaper pass per interval across the fleet is enough.
    lock_ms = int(max(1.0, settings.lease_seconds / 3) * 900)
    if store.redis.set(keys.REAPER, "1", nx=True, px=lock_ms):
        reap(store, settings)


@worker_shutdown.connect
def _stop_background(sender=None, **_kwargs) -> None:
    """Stop announcing and leave the registry at once, so `status` does not list a dead worker."""
    _stop.set()
    from autotrain.worker.context import worker_store

    name = getattr(sender, "hostname", None)
    if name:
        with contextlib.suppress(redis.RedisError):
            client = worker_store().redis
            client.delete(keys.worker(name))
            client.zrem(keys.WORKERS, name)


@worker_process_init.connect
def _setup_child_logging(**_kwargs) -> None:
    from autotrain.logs import setup_logging
    from autotrain.worker.context import worker_settings

    setup_logging(worker_settings().workspace)
