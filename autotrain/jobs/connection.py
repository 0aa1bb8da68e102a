"""The Redis connection every part shares: broker, job store and progress streams.

With no `redis_url` configured the embedded local Redis is used; its URL is derived from the
workspace (a unix socket under `.autotrain/`), so every process on the host finds the same one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from autotrain.errors import AutotrainError
from autotrain.jobs.job import JobStore
from autotrain.settings import Settings

__all__ = [
    "redis_url_for",
    "get_redis",
    "check_redis",
    "until_redis_back",
    "is_redis_outage",
    "job_store",
    "store_for",
]

T = TypeVar("T")
log = logging.getLogger(__name__)


def redis_url_for(settings: Settings) -> str:
    """The configured shared Redis, else the workspace's embedded one."""
    if settings.redis_url:
        return settings.redis_url
    from autotrain.jobs.local_redis import embedded_redis_url

    return embedded_redis_url(settings)


def get_redis(settings: Settings) -> redis.Redis:
    """A client with str responses; cached per URL so a process reuses one pool."""
    return _client(redis_url_for(settings))


@lru_cache(maxsize=8)
def _client(url: str) -> redis.Redis:
    # A blip (a dropped connection, a failover) is retried here, briefly; outages longer than
    # that are the callers' to wait out (`until_redis_back`), where waiting is right.
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=5,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def until_redis_back(action: Callable[[], T], seconds: float, what: str) -> T:
    """Run `action`, retrying through a Redis (or broker) outage of up to `seconds`.

    For the steps that finish a phase (record it, release locks, send the next one): a finished
    training must never turn into a new attempt because Redis restarted at that moment.
    """
    deadline, pause = time.monotonic() + seconds, 0.2
    while True:
        try:
            return action()
        except Exception as exc:
            if not is_redis_outage(exc) or time.monotonic() > deadline:
                raise
            log.warning("%s: Redis unreachable (%s); retrying", what, exc)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def is_redis_outage(exc: BaseException) -> bool:
    """Redis (or the broker on it) could not be reached: a fault of the moment, never of a job.

    A restarting server refuses connections, drops them, or answers LOADING while it reads its
    append-only file back; kombu reports the same as OperationalError. An error raised `from`
    one of these (an SDK error saying Redis is unreachable) counts too.
    """
    from kombu.exceptions import OperationalError  # kombu only where an outage is told apart

    outage = (redis.ConnectionError, redis.TimeoutError, OperationalError)
    return isinstance(exc, outage) or isinstance(exc.__cause__, outage)


def check_redis(settings: Settings) -> redis.Redis:
    """The client, after a PING; a clear error that says what to start or set when it fails."""
    client = get_redis(settings)
    try:
        client.ping()
    except redis.RedisError as exc:
        where = settings.redis_url or "the embedded local Redis"
        hint = (
            "check AUTOTRAIN_REDIS_URL and that the server is reachable"
            if settings.redis_url
            else "start it with `autotrain up` (or use --immediate to run without Redis)"
        )
        raise AutotrainError(f"Cannot reach Redis at {where}: {exc}. Fix: {hint}.") from exc
    return client


def job_store(settings: Settings) -> JobStore:
    """The job store of the configured (or embedded) Redis; errors say how to start it."""
    return store_for(settings, check_redis(settings))


def store_for(settings: Settings, client: redis.Redis) -> JobStore:
    """The job store on `client` with the settings' limits and its end-of-job notifications."""
    from autotrain.jobs.notify import job_end_notifier  # notify reads jobs: imported late

    return JobStore(client, settings.progress_stream_maxlen, settings.retention_days * 86400,
                    on_final=job_end_notifier(settings))  # fmt: skip
