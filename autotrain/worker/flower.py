"""What Flower shows of a training task: a PROGRESS state with step, total, loss and ETA.

Flower draws task states from Celery events, not from the result backend, so `update_state`
never reaches it. A custom `task-progress` event does (Celery's `Task.send_event` documents it
for Flower): celery.events.state turns the type into the state PROGRESS and merges the event's
fields into the task. Flower shows and serves only Celery's own fields, so the progress travels
as `result`, as a dict in the shape of Celery's documented PROGRESS meta: the task page, the task
list and `/api/task/info` all show it until the real result replaces it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Task

from autotrain.formatting import format_eta

__all__ = ["progress_sender", "progress_result"]

log = logging.getLogger(__name__)


def progress_sender(task: Task) -> Callable[[dict[str, Any]], None]:
    """A callback that sends the training task's progress to Flower, from any thread.

    The task's request is thread-local, so its id and worker are read here, in the task's thread.
    """
    task_id, hostname = task.request.id, task.request.hostname
    failing = False

    def send(summary: dict[str, Any]) -> None:
        nonlocal failing
        try:
            with task.app.events.default_dispatcher(hostname=hostname) as dispatcher:
                # No retry: a step must never wait on Redis; the next one is a second away.
                dispatcher.send(
                    "task-progress",
                    uuid=task_id,
                    retry=False,
                    result=progress_result(summary),
                )
        except Exception as exc:  # noqa: BLE001 - Flower's view is never worth a failed job
            if not failing:
                log.warning("cannot send progress to Flower (%s); training goes on", exc)
            failing = True
        else:
            failing = False

    return send


def progress_result(summary: dict[str, Any]) -> dict[str, Any]:
    """`{'step': 120, 'total': 400, 'loss': 0.0412, 'eta': '00:01:20'}`, loss and ETA when known."""
    result: dict[str, Any] = {"step": summary.get("step", 0), "total": summary.get("total")}
    if summary.get("loss") is not None:
        result["loss"] = round(summary["loss"], 4)
    result["eta"] = format_eta(summary.get("eta_seconds"))
    return result
