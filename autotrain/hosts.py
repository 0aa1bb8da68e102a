"""This host: the local cluster (embedded Redis, its workers, the dashboard) and the workers
`autotrain worker` runs here, one per GPU or one CPU worker.

    from autotrain.hosts import start_local_cluster, stop_local_cluster
    status = start_local_cluster()
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from autotrain.errors import AutotrainError
from autotrain.settings import Settings, load_settings

if TYPE_CHECKING:
    from autotrain.fleet.cluster import ClusterStatus
    from autotrain.fleet.doctor import Check
    from autotrain.worker.launch import Gpu

__all__ = [
    "drain_host",
    "local_cluster",
    "start_local_cluster",
    "stop_local_cluster",
    "ensure_local_cluster",
    "start_local_dashboard",
    "shown_url",
    "dashboard_page",
    "this_host",
    "host_gpus",
    "run_host_workers",
    "check_host",
]


def local_cluster(*, settings: Settings | None = None) -> ClusterStatus:
    """Whether the workspace's Redis (embedded or shared) and local workers run."""
    from autotrain.fleet.cluster import cluster_status

    return cluster_status(settings or load_settings())


def start_local_cluster(*, workers: bool = True, cpu: bool = False,
                        settings: Settings | None = None) -> ClusterStatus:  # fmt: skip
    """Start the embedded Redis and (unless not `workers`) this host's workers; `cpu`: one CPU
    worker even where GPUs are present."""
    from autotrain.fleet.cluster import up

    return up(settings or load_settings(), workers=workers, worker_args=["--cpu"] if cpu else [])


def stop_local_cluster(*, settings: Settings | None = None) -> list[str]:
    """Stop the local workers, dashboard and embedded Redis; what was stopped, in words."""
    from autotrain.fleet.cluster import down

    return down(settings or load_settings())


def ensure_local_cluster(*, settings: Settings | None = None, say: Callable[[str], None] = print,
                         ) -> bool:  # fmt: skip
    """Start the local cluster unless Redis is shared or it runs; True when it started one.

    Jobs waiting meanwhile say that workers are starting (not that the user should start one)."""
    from autotrain.fleet.cluster import ensure_up
    from autotrain.worker.launch import plan_workers

    settings = settings or load_settings()
    if not ensure_up(settings, say=say):
        return False
    gpus, _ = host_gpus()
    planned = plan_workers(settings, this_host(), gpus, use_cpu=not gpus)
    _announce_starting(settings, this_host(), [w.name for w in planned], say)
    return True


def start_local_dashboard(*, settings: Settings | None = None) -> int | None:
    """Serve the dashboard in the background; its pid, None when it already runs."""
    from autotrain.fleet.cluster import start_local_dashboard as start

    return start(settings or load_settings())


def dashboard_page(path: str, *, settings: Settings | None = None) -> str | None:
    """The URL of `path` (e.g. `/jobs/<id>`) on this workspace's local dashboard, None when no
    dashboard runs here (its link with the token was printed when it started)."""
    from autotrain.fleet.cluster import local_dashboard_running

    settings = settings or load_settings()
    if not local_dashboard_running(settings):
        return None
    return f"http://{settings.dashboard_address}:{settings.dashboard_port}{path}"


def shown_url(url: str | None) -> str:
    """A Redis URL fit to print: its password hidden."""
    from autotrain.fleet.cluster import redact

    return redact(url or "")


def this_host() -> str:
    """The name of this host in worker names and pinned queues (AUTOTRAIN_HOST, else its name)."""
    from autotrain.jobs.queue import current_host

    return current_host()


def host_gpus(gpus: str = "all", *, cpu: bool = False) -> tuple[list[Gpu], str | None]:
    """The GPUs of this host to serve (`all`, or indices like `0,2`) and, when there are none,
    why; AutotrainError naming the indices that are not here."""
    from autotrain.worker.launch import discover_gpus

    found, why_none = ([], "--cpu given") if cpu else discover_gpus()
    if gpus == "all" or not found:
        return found, why_none
    wanted = {int(x) for x in gpus.split(",") if x.strip()}
    missing = wanted - {g.index for g in found}
    if missing:
        raise AutotrainError(
            f"--gpus {gpus}: no GPU {sorted(missing)} here; found {[g.index for g in found]}."
        )
    return [g for g in found if g.index in wanted], why_none


def run_host_workers(host: str, gpus: list[Gpu], *, consume_prep: bool = True,
                     say: Callable[[str], None] = print, settings: Settings | None = None) -> int:  # fmt: skip
    """Run this host's workers (one per GPU of `gpus`, or one CPU worker) until stopped; the exit
    code."""
    from autotrain.worker.launch import plan_workers, run_workers

    os.environ["AUTOTRAIN_HOST"] = host
    settings = settings or load_settings()
    workers = plan_workers(settings, host, gpus, use_cpu=not gpus, consume_prep=consume_prep)
    _announce_starting(settings, host, [w.name for w in workers], say)
    drain = _HostDrain(settings, host, say)
    drain.clear()  # a host starting now is wanted, whatever an earlier drain left
    try:
        return run_workers(workers, say=say, stop_timeout=settings.preempt_seconds,
                           going_away=drain.asked, on_stop=drain.request)  # fmt: skip
    finally:
        drain.clear()


def drain_host(
    host: str | None = None,
    *,
    settings: Settings | None = None,
    say: Callable[[str], None] = print,
    wait: bool = True,
) -> list[str]:
    """`autotrain worker --drain`: ask `host`'s workers (default: this host's) to give their
    jobs back to the queue at once, as their next attempt, and stop, as SIGTERM does there.
    With `wait`, return once they left the registry; returns the workers that were there."""
    from autotrain.fleet.registry import live_workers

    settings = settings or load_settings()
    host = host or this_host()
    drain = _HostDrain(settings, host, say)
    names = [w.name for w in live_workers(drain.client) if w.name.endswith(f"@{host}")]
    if not names:
        say(f"No worker of {host} is running.")
        return []
    drain.request()
    say(f"Asked {', '.join(names)} to give their jobs back and stop.")
    deadline = time.monotonic() + settings.preempt_seconds + 30
    while wait and time.monotonic() < deadline:
        left = [w.name for w in live_workers(drain.client) if w.name in names]
        if not left:
            say(f"The workers of {host} stopped.")
            break
        time.sleep(1.0)
    return names


class _HostDrain:
    """The host's drain flag in Redis, through an outage: a Redis that cannot be reached only
    means jobs are given back by the lease, later, instead of at once."""

    def __init__(self, settings: Settings, host: str, say: Callable[[str], None]):
        from autotrain.jobs.connection import get_redis

        self.client, self.host, self.say = get_redis(settings), host, say
        self.seconds = settings.preempt_seconds + 30

    def request(self) -> None:
        import redis

        from autotrain.fleet.registry import request_drain

        try:
            request_drain(self.client, self.host, self.seconds)
        except redis.RedisError as exc:
            self.say(f"could not tell the running jobs to give themselves back ({exc})")

    def asked(self) -> bool:
        import redis

        from autotrain.fleet.registry import is_draining

        try:
            return is_draining(self.client, self.host)
        except redis.RedisError:
            return False

    def clear(self) -> None:
        import redis

        from autotrain.fleet.registry import clear_drain

        with contextlib.suppress(redis.RedisError):
            clear_drain(self.client, self.host)


def _announce_starting(settings: Settings, host: str, names: list[str],
                       say: Callable[[str], None]) -> None:  # fmt: skip
    """Tell waiting jobs (and their monitors) that these workers are on their way."""
    import redis

    from autotrain.fleet.registry import announce_starting
    from autotrain.jobs.connection import get_redis, redis_url_for
    from autotrain.jobs.redis_url import explain_redis_failure

    try:
        announce_starting(get_redis(settings), host, names)
    except redis.RedisError as exc:
        # A wrong password or TLS on one side only never heals: say so rather than retry forever.
        mistake = (
            explain_redis_failure(redis_url_for(settings), exc) if settings.redis_url else None
        )
        if mistake:
            raise AutotrainError(f"The workers cannot start: {mistake}") from exc
        say(f"could not announce the starting workers ({exc})")  # Redis down: they wait for it


def check_host(*, settings: Settings | None = None) -> list[Check]:
    """`autotrain doctor`: sd-scripts and its Python, model files, GPUs, the workspace."""
    from autotrain.fleet.doctor import run_checks

    return run_checks(settings or load_settings())
