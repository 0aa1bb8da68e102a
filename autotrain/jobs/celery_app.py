"""The Celery app: Redis broker and result backend, JSON only, settings for hours-long tasks.

Workers import this module (`celery -A autotrain.jobs.celery_app`), which reads the settings of the
workspace in AUTOTRAIN_WORKSPACE. Clients call `configure_app(settings)` before sending.
"""

from __future__ import annotations

import contextlib

from celery import Celery

from autotrain.jobs.keys import (
    GPU_QUEUE,
    PREP_ONGOING_QUEUE,
    PREP_QUEUE,
    PRIORITIES,
    PRIORITY_SEP,
    gpu_queue_name,
)
from autotrain.settings import Settings, load_settings

__all__ = [
    "app",
    "configure_app",
    "PREP_QUEUE",
    "PREP_ONGOING_QUEUE",
    "GPU_QUEUE",
    "gpu_queue_name",
]


app = Celery("autotrain", include=["autotrain.worker.tasks"])


def configure_app(settings: Settings) -> Celery:
    from autotrain.jobs.connection import redis_url_for

    url = redis_url_for(settings)
    app.conf.update(
        broker_url=url,
        result_backend=url,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # Early ack and no prefetch: a training task may run for hours, so it is never redelivered by
        # a visibility timeout and never waits behind another one in a worker's buffer. Lost work is
        # recovered by the job lease and the reaper instead (autotrain.jobs.lease).
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=True,
        task_track_started=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        task_default_queue=PREP_QUEUE,
        task_routes={"autotrain.train": {"queue": GPU_QUEUE}},
        task_ignore_result=True,  # the job record holds every outcome
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=True,
        # A worker takes from its queues in the order it lists them (kombu's "priority"
        # strategy): prep.ongoing before prep, a GPU's own queue before the shared one.
        broker_transport_options={
            "visibility_timeout": 7 * 24 * 3600,
            "queue_order_strategy": "priority",
            "priority_steps": sorted(PRIORITIES.values()),  # autotrain.jobs.keys.PRIORITIES
            "sep": PRIORITY_SEP,
        },
        task_default_priority=PRIORITIES["normal"],
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        broker_pool_limit=10,  # Celery's default; 4 starved Flower (its inspect calls hung)
    )
    return app


def _configure_from_environment() -> None:
    """Workers and Flower get their settings from the environment at import time."""
    # Without a reachable configuration a client configures explicitly later.
    with contextlib.suppress(Exception):
        configure_app(load_settings())


_configure_from_environment()
