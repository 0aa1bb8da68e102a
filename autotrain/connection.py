"""The Redis connection every part shares: broker, job store and progress streams.

With no `redis_url` configured the embedded local Redis is used; its URL is derived from the
workspace (a unix socket under `.autotrain/`), so every process on the host finds the same one.
"""

from __future__ import annotations

from functools import lru_cache

import redis

from autotrain.errors import AutotrainError
from autotrain.settings import Settings

__all__ = ["redis_url_for", "get_redis", "check_redis", "KEY_PREFIX"]

KEY_PREFIX = "autotrain:"


def redis_url_for(settings: Settings) -> str:
    """The configured shared Redis, else the workspace's embedded one."""
    if settings.redis_url:
        return settings.redis_url
    from autotrain.cluster import embedded_redis_url

    return embedded_redis_url(settings)


def get_redis(settings: Settings) -> redis.Redis:
    """A client with str responses; cached per URL so a process reuses one pool."""
    return _client(redis_url_for(settings))


@lru_cache(maxsize=8)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=5,
        retry_on_timeout=True,
    )


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
