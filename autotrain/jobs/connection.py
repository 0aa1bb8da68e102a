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

from autotrain.errors import RedisUnavailable
from autotrain.jobs.store import JobStore
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
    """The configured shared Redis (checked, in the form every client reads), else the
    workspace's embedded one."""
    if settings.redis_url:
        from autotrain.jobs.redis_url import usable_redis_url

        return usable_redis_url(settings.redis_url)
    from autotrain.jobs.local_redis import embedded_redis_url

    return embedded_redis_url(settings)


def get_redis(settings: Settings) -> redis.Redis:
    """A client with str responses; cached per URL so a process reuses one pool."""
    return _client(redis_url_for(settings))


# The client's own retry policy, one for every autotrain process (redis-py's default differs by
# version: 5.x one retry on timeouts only, 8.x ten). It absorbs a blip: a dropped connection, a
# failover, a server closing idle connections, in at most 3 retries about 0.1, 0.2 and 0.4 s
# apart (0.7 s in all, plus the connect timeout). It is kept that short on purpose, so that a
# command with Redis down still fails fast (`autotrain status` says at once what to start).
# Longer outages, a restart of seconds, are waited out only where waiting is right: the steps
# that take and finish a phase (`until_redis_back`, outage_seconds: ten leases), and the loops
# that must outlive an outage (lease renewal, heartbeat, reaper), each retrying at its interval.
CLIENT_RETRIES = 3
CLIENT_BACKOFF_BASE = 0.05  # seconds, doubled per retry
CLIENT_BACKOFF_CAP = 0.5  # seconds at most between two tries
CLIENT_RETRY_ON = (redis.ConnectionError, redis.TimeoutError)


@lru_cache(maxsize=8)
def _client(url: str) -> redis.Redis:
    retry = Retry(ExponentialBackoff(cap=CLIENT_BACKOFF_CAP, base=CLIENT_BACKOFF_BASE),
                  retries=CLIENT_RETRIES, supported_errors=CLIENT_RETRY_ON)  # fmt: skip
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=5,
        retry=retry,
        retry_on_error=list(CLIENT_RETRY_ON),
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
    """The client, after a PING; RedisUnavailable, saying what to start or set, when it fails."""
    client = get_redis(settings)
    try:
        client.ping()
    except redis.RedisError as exc:
        from autotrain.jobs.local_redis import redact
        from autotrain.jobs.redis_url import explain_redis_failure

        url = redis_url_for(settings)
        mistake = explain_redis_failure(url, exc) if settings.redis_url else None
        if mistake:
            raise RedisUnavailable(mistake) from exc
        where = redact(url) if settings.redis_url else "the embedded local Redis"
        hint = (
            "check AUTOTRAIN_REDIS_URL and that the server is reachable"
            if settings.redis_url
            else "start it with `autotrain up` (or use --immediate to run without Redis)"
        )
        raise RedisUnavailable(f"Cannot reach Redis at {where}: {exc}. Fix: {hint}.") from exc
    return client


def job_store(settings: Settings) -> JobStore:
    """The job store of the configured (or embedded) Redis; errors say how to start it."""
    return store_for(settings, check_redis(settings))


def store_for(settings: Settings, client: redis.Redis) -> JobStore:
    """The job store on `client` with the settings' limits and its end-of-job notifications."""
    from autotrain.jobs.notify import job_end_notifier  # notify reads jobs: imported late

    return JobStore(client, settings.progress_stream_maxlen, settings.retention_days * 86400,
                    on_final=job_end_notifier(settings))  # fmt: skip
