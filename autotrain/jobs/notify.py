"""Tell people when the night's work ends: one message per finished job, one per finished batch.

Delivered through Apprise, so one URL syntax covers Discord, Slack, Telegram, email, ntfy and
plain JSON webhooks (`json://host:port/path`). The URLs are the `notify_urls` setting plus the
job's own (`--notify`). A notification that fails is logged; it never fails the job. Every
process that ends jobs (workers, the reaper, a client's cancel) sends through the job store's
`on_final` hook, so each end is announced once, by whoever ended the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from autotrain.formatting import format_eta, format_loss
from autotrain.jobs import keys
from autotrain.jobs.job import Job, JobState
from autotrain.jobs.lease import batch_name
from autotrain.jobs.store import JobStore
from autotrain.settings import Settings

__all__ = ["job_end_notifier", "job_message", "batch_message", "send"]

log = logging.getLogger(__name__)


def job_end_notifier(settings: Settings) -> Callable[[JobStore, Job], None]:
    """The `on_final` hook of a job store: announce the job, and its batch when it was the last."""

    def on_final(store: JobStore, job: Job) -> None:
        urls = [*settings.notify_urls, *job.spec.notify_urls]
        if not urls:
            return
        send(urls, *job_message(job))
        if job.spec.batch_id:
            _announce_batch_if_done(store, job.spec.batch_id, urls)

    return on_final


def job_message(job: Job) -> tuple[str, str]:
    """(title, body): state, name, profile, durations, steps and loss, weights or error."""
    title = f"autotrain: {job.name} {job.state.value}"
    lines = [
        f"{job.name}: {job.state.value} (job {job.id}, attempt {job.attempt})",
        f"profile: {job.profile}",
        f"duration: {_durations(job)}",
        f"steps: {job.step}/{job.total or '?'}"
        + (f", final loss {format_loss(job.loss)}" if job.loss is not None else ""),
    ]
    if job.state == JobState.SUCCEEDED:
        lines.append(f"weights: {(job.result or {}).get('weights')}")
        if pull := (job.result or {}).get("pull"):  # in the fleet's store: how to get them
            lines.append(f"get them: {pull}")
    elif job.error:
        lines.append(f"error: {job.error}")
    return title, "\n".join(lines)


def batch_message(name: str, jobs: list[Job]) -> tuple[str, str]:
    """(title, body): how many succeeded, then one line per job, errors in full."""
    ok = sum(j.state == JobState.SUCCEEDED for j in jobs)
    title = f"autotrain: batch {name} done, {ok}/{len(jobs)} succeeded"
    lines = [title.removeprefix("autotrain: ")]
    for job in sorted(jobs, key=lambda j: j.name):
        outcome = (
            (job.result or {}).get("weights") if job.state == JobState.SUCCEEDED else job.error
        )
        loss = format_loss(job.loss)
        lines.append(f"{job.name}: {job.state.value}, {job.step}/{job.total or '?'} steps, "
                     f"loss {loss}, {_durations(job)}; {outcome or ''}".rstrip("; "))  # fmt: skip
    return title, "\n".join(lines)


def send(urls: list[str], title: str, body: str) -> bool:
    """Deliver to every URL; False (and a warning) when any fails. Never raises."""
    try:
        import apprise

        sender = apprise.Apprise()
        for url in urls:
            if not sender.add(url):
                log.warning("notification URL not understood by Apprise: %s", _redact(url))
        delivered = bool(len(sender)) and sender.notify(title=title, body=body)
    except Exception as exc:  # noqa: BLE001 - a notification never fails a job
        log.warning("notification failed: %s", exc)
        return False
    if not delivered:
        log.warning("notification %r was not delivered to every URL", title)
    return bool(delivered)


def _announce_batch_if_done(store: JobStore, batch_id: str, urls: list[str]) -> None:
    jobs = store.list(batch_id=batch_id)
    if not jobs or not all(j.is_final for j in jobs):
        return
    # Once per completion: a retry of the batch's jobs clears the mark (queue.retry_job).
    if not store.redis.set(keys.batch_notified(batch_id), int(time.time()), nx=True):
        return
    name = batch_name(store.redis, batch_id) or batch_id
    send(urls, *batch_message(name, jobs))


def _durations(job: Job) -> str:
    total = format_eta((job.finished_at or time.time()) - job.created_at)
    trained = job.training_seconds()
    return total if trained is None else f"{total} (training {format_eta(trained)})"


def _redact(url: str) -> str:
    """Scheme and host only: notification URLs carry tokens."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/')[0].rpartition('@')[2]}/..."
