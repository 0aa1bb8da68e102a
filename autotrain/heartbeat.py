"""What every worker process does besides running tasks: announce itself and reap lost jobs.

On `worker_ready` the worker's main process starts a thread that refreshes its registry entry
(`autotrain:worker:<name>`, read by `autotrain status`) and runs the reaper, so any live worker
of the fleet recovers jobs whose host died.
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

from autotrain.connection import KEY_PREFIX

__all__ = ["live_workers", "WORKER_PREFIX"]

log = logging.getLogger(__name__)

WORKER_PREFIX = f"{KEY_PREFIX}worker:"
_stop = threading.Event()


def live_workers(client: redis.Redis) -> list[dict]:
    """Workers that announced themselves within their TTL, with the job each is training."""
    workers = []
    for key in client.scan_iter(match=f"{WORKER_PREFIX}*", count=500):
        if key.endswith(":job"):
            continue
        raw = client.get(key)
        if raw:
            info = json.loads(raw)
            info["job"] = client.get(f"{key}:job")
            workers.append(info)
    return sorted(workers, key=lambda w: w["name"])


@worker_ready.connect
def _start_background(sender=None, **_kwargs) -> None:
    from autotrain.tasks import worker_settings, worker_store

    name = sender.hostname if sender is not None else "worker"
    settings = worker_settings()
    info = {
        "name": name,
        "host": os.environ.get("AUTOTRAIN_HOST", ""),
        "gpu": os.environ.get("AUTOTRAIN_GPU_INDEX", ""),
        "gpu_uuid": os.environ.get("AUTOTRAIN_GPU_UUID", ""),
        "pid": os.getpid(),
        "queues": sorted(q.name for q in sender.app.amqp.queues.consume_from.values())
        if sender
        else [],
        "started_at": time.time(),
    }
    interval = max(1.0, settings.lease_seconds / 3)
    _kill_leftover_trainers(settings, info)

    def loop() -> None:
        store = worker_store()
        while True:
            try:
                store.redis.set(f"{WORKER_PREFIX}{name}", json.dumps(info), ex=int(interval * 3))
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
    from autotrain.guard import device_records, kill_recorded_trainers
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

    from autotrain import configure, stage, validate  # noqa: F401


def _reap_once(store, settings) -> None:
    from autotrain.queue import reap_expired

    # One reaper pass per interval across the fleet is enough.
    if store.redis.set(
        f"{KEY_PREFIX}reaper", "1", nx=True, px=int(max(1.0, settings.lease_seconds / 3) * 900)
    ):
        for job_id in reap_expired(store, settings):
            log.warning("re-queued job %s whose worker stopped renewing its lease", job_id)


@worker_shutdown.connect
def _stop_background(sender=None, **_kwargs) -> None:
    """Stop announcing and leave the registry at once, so `status` does not list a dead worker."""
    _stop.set()
    from autotrain.tasks import worker_store

    name = getattr(sender, "hostname", None)
    if name:
        with contextlib.suppress(redis.RedisError):
            worker_store().redis.delete(f"{WORKER_PREFIX}{name}")


@worker_process_init.connect
def _setup_child_logging(**_kwargs) -> None:
    from autotrain.logs import setup_logging
    from autotrain.tasks import worker_settings

    setup_logging(worker_settings().workspace)
