"""Messages that left their queue and reached no task: found, and sent again.

A phase message leaves its broker list when a worker fetches it (kombu's BRPOP) and is acked as
its task starts, which then takes the job. A worker killed between the two, or a Redis killed
between the fetch and kombu's note of it, loses the message: it is in no list, or it stays in
kombu's `unacked` hash until the visibility timeout (days). Meanwhile the job waits for it,
owned by that message, and a waiting job is never reaped.

So every `audit_seconds` the reaper looks for the message of every job the queue owns (whose
send was confirmed; the others are the dispatch set's business): in its queue's lists, or in
`unacked` if fetched within a lease (fetching is done only with a free slot, so a fetched task
starts at once). A message missing at two looks in a row is sent again,
with the same id: should the first turn up after all, the take's owner guard makes the second
one do nothing.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from autotrain.jobs import keys
from autotrain.jobs.dispatch import resend
from autotrain.jobs.owners import queue_owner
from autotrain.jobs.store import JobStore

__all__ = ["resend_lost_messages", "AUDIT_LEASES"]

log = logging.getLogger(__name__)

AUDIT_LEASES = 10  # a look every ten leases: 5 minutes by default


def resend_lost_messages(store: JobStore, lease_seconds: float, now: float) -> list[str]:
    """One look, when the last is `audit_seconds` old; the jobs whose message was sent again."""
    every = lease_seconds * AUDIT_LEASES
    last = json.loads(store.redis.get(keys.LOST_MESSAGES) or "null") or {}
    if now - last.get("at", 0.0) < every:
        return []
    waiting = _waiting_for_a_message(store)
    present = _messages_in_lists(store, {queue for _job, queue in waiting.values()})
    present |= _messages_fetched_since(store, now - lease_seconds)  # a task starts at once
    missing = {message_id for message_id in waiting if message_id not in present}
    resent = []
    for message_id in sorted(missing & set(last.get("missing", []))):
        job = store.get(waiting[message_id][0])
        if resend(store, job, lease_seconds, now):
            log.warning("sent %s of %s again: its message was fetched but reached no task",
                        job.phase, job.id)  # fmt: skip
            resent.append(job.id)
    still = sorted(missing - set(last.get("missing", [])))
    store.redis.set(keys.LOST_MESSAGES, json.dumps({"at": now, "missing": still}))
    return resent


def _waiting_for_a_message(store: JobStore) -> dict[str, tuple[str, str]]:
    """message id -> (job id, queue) of each job the queue owns through a confirmed send."""
    active = store.redis.zrange(keys.ACTIVE, 0, -1)
    unconfirmed = set(store.redis.zrange(keys.DISPATCH, 0, -1))
    pipe = store.redis.pipeline(transaction=False)
    for job_id in active:
        pipe.hmget(store.key(job_id), "owner", "next_task")
    waiting = {}
    for job_id, (owner, task) in zip(active, pipe.execute(), strict=True):
        message = json.loads(task) if task else None
        if (
            job_id in unconfirmed
            or not message
            or json.loads(owner or '""') != queue_owner(message["id"])
        ):
            continue
        waiting[message["id"]] = (job_id, message["queue"])
    return waiting


def _messages_in_lists(store: JobStore, queues: set[str]) -> set[str]:
    """The ids of the messages waiting in these queues' broker lists, every priority."""
    pipe = store.redis.pipeline(transaction=False)
    for queue in sorted(queues):
        for name in keys.broker_lists(queue):
            pipe.lrange(name, 0, -1)
    return {_message_id(raw) for listed in pipe.execute() for raw in listed} - {None}


def _messages_fetched_since(store: JobStore, since: float) -> set[str]:
    """The ids of the messages a worker fetched since `since` and has not acked (yet)."""
    tags = store.redis.zrangebyscore(keys.KOMBU_UNACKED_INDEX, since, "+inf")
    if not tags:
        return set()
    found = store.redis.hmget(keys.KOMBU_UNACKED, tags)
    return {_message_id(json.loads(raw)[0]) for raw in found if raw} - {None}


def _message_id(message: str | dict[str, Any]) -> str | None:
    """The task id of a kombu message (Celery's protocol 2 keeps it in the headers)."""
    try:
        data = json.loads(message) if isinstance(message, str) else message
        return data.get("headers", {}).get("id") or data.get("properties", {}).get("correlation_id")
    except (ValueError, AttributeError):
        return None
