"""`autotrain up|down|status|redis|worker|flower|doctor`: the local cluster and the workers of a host."""

from __future__ import annotations

import json
import os
import sys

import click

from autotrain.cli.common import console, err_console, literal, settings_of
from autotrain.errors import AutotrainError

__all__ = ["COMMANDS"]


@click.command("up")
@click.option("--no-workers", is_flag=True, help="Start only the embedded Redis.")
@click.option("--cpu", is_flag=True, help="Start a CPU worker even if GPUs are present.")
@click.option("--dashboard", is_flag=True, help="Also serve the dashboard (autotrain dashboard).")
@click.pass_context
def up_cmd(ctx, no_workers, cpu, dashboard) -> None:
    """Start the embedded Redis and this host's workers (when no AUTOTRAIN_REDIS_URL is set).

    \b
    Examples:
      autotrain up && autotrain status
      autotrain up --dashboard     # and the dashboard's link; `autotrain down` stops it too
    """
    from autotrain.hosts import shown_url, start_local_cluster, start_local_dashboard

    settings = settings_of(ctx)
    status = start_local_cluster(workers=not no_workers, cpu=cpu, settings=settings)
    console.print(
        f"Redis: {literal(shown_url(status.redis_url))} (pid {status.redis_pid}); "
        f"data in {literal(settings.workspace / '.autotrain')}"
    )
    if status.workers_pid:
        console.print(
            f"Workers: supervisor pid {status.workers_pid}; "
            f"log {literal(settings.workspace / '.autotrain' / 'worker.log')}"
        )
    if dashboard:
        from autotrain.dashboard.access import needs_credential, open_url

        if why := needs_credential(settings, settings.dashboard_address):
            raise AutotrainError(why)
        url = open_url(settings, settings.dashboard_address, settings.dashboard_port)
        pid = start_local_dashboard(settings=settings)
        running = f"pid {pid}" if pid else "already running"
        console.print(f"Dashboard: {literal(url)} ({running}); log "
                      f"{literal(settings.workspace / '.autotrain' / 'dashboard.log')}", soft_wrap=True)  # fmt: skip


@click.command("down")
@click.option("--force", is_flag=True, help="Stop even while jobs are training.")
@click.pass_context
def down_cmd(ctx, force) -> None:
    """Stop the local workers and the embedded Redis; queued jobs are kept for the next `up`.

    A job training now is interrupted; it resumes from its newest saved state after the next
    `up`. So `down` refuses while a job trains, unless given --force.

    \b
    Examples:
      autotrain down
      autotrain down --force
    """
    from autotrain.hosts import stop_local_cluster

    settings = settings_of(ctx)
    training = [] if force else _training_jobs(settings)
    if training:
        listing = ", ".join(f"{j.id} ({j.name}, {j.step}/{j.total or '?'})" for j in training[:5])
        raise AutotrainError(
            f"{len(training)} job(s) training: {listing}. Stopping interrupts them (they resume "
            "from their newest saved state after the next `autotrain up`). Wait, cancel them, or "
            "run `autotrain down --force`."
        )
    stopped = stop_local_cluster(settings=settings)
    console.print("Stopped: " + (literal(", ".join(stopped)) if stopped else "nothing was running"))


def _training_jobs(settings) -> list:
    """Jobs training on this workspace's embedded Redis, [] when it is not running."""
    from autotrain.control import list_jobs
    from autotrain.hosts import local_cluster

    status = local_cluster(settings=settings)
    if not status.embedded or not status.redis_running:
        return []
    return list_jobs(state="training", limit=100, settings=settings)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (README: fields).")
@click.pass_context
def status_cmd(ctx, as_json) -> None:
    """Redis, the live workers (host, GPU, busy job) and queue depths.

    \b
    Examples:
      autotrain status
      autotrain status --json | jq '.workers[].name'
    """
    from autotrain.records import worker_record
    from autotrain.status import fleet_status

    status = fleet_status(settings=settings_of(ctx))
    redis_info = status.redis
    if as_json:
        info = {"kind": redis_info.kind, "running": redis_info.running}
        if redis_info.problem:
            info["problem"] = redis_info.problem
        if redis_info.running:
            info |= {"url": redis_info.url, "used_memory_bytes": redis_info.used_memory,
                     "maxmemory_bytes": redis_info.maxmemory}  # fmt: skip
            workers = [worker_record(w) for w in status.workers]
            click.echo(json.dumps({"redis": info, "workers": workers, "queues": status.queues},
                                  indent=2))  # fmt: skip
            return
        click.echo(json.dumps({"redis": info}, indent=2))
        sys.exit(1)
    state = "[green]up[/]" if redis_info.running else "[red]down[/]"
    console.print(f"Redis ({redis_info.kind}): {state} {literal(redis_info.url)}")
    if not redis_info.running:
        embedded = redis_info.kind == "embedded"
        if redis_info.problem:
            console.print(literal(redis_info.problem))
        console.print("Start it with `autotrain up`." if embedded else "Check AUTOTRAIN_REDIS_URL.")
        sys.exit(1)
    _print_fleet(status)


def _print_fleet(status) -> None:
    """The workers' table, the queue depths and Redis' memory (`autotrain status`)."""
    from rich.table import Table

    from autotrain.records import worker_row

    table = Table("worker", "host", "GPU", "queues", "busy with", "GPU failures (1 day)")
    for row in map(worker_row, status.workers):
        failures = str(row["failures"]) + (" [red]suspect[/]" if row["suspect"] else "")
        cells = (row["name"], row["host"], row["gpu"], row["queues"], row["job"])
        table.add_row(*map(literal, cells), failures)
    console.print(
        table if status.workers
        else "No live workers. Start them with `autotrain up` or `autotrain worker`."
    )  # fmt: skip
    console.print(
        "Queues: " + ", ".join(f"{literal(q)}={n}" for q, n in sorted(status.queues.items()))
    )
    used, limit = status.redis.used_memory, status.redis.maxmemory
    line = f"Redis memory: {used / 2**20:.1f} MiB"
    if limit:
        line += f" of {limit / 2**20:.0f} MiB maxmemory ({used / limit:.0%})"
    console.print(line)
    if limit and used > 0.8 * limit:
        console.print(
            "[yellow]Warning:[/] Redis is above 80% of maxmemory; with noeviction it will refuse "
            "writes when full. Lower retention_days, prune old jobs, or raise maxmemory."
        )


@click.command("worker")
@click.option(
    "--gpus", default="all", show_default=True, help='GPUs to serve: "all" or indices like "0,2".'
)
@click.option(
    "--cpu", is_flag=True, help="Run one CPU worker (it can train Tiny) instead of GPU workers."
)
@click.option(
    "--no-prep", is_flag=True, help="Do not consume the prep queue (phases 1-3 and 5) on this host."
)
@click.option(
    "--host", help="Host name for worker names and pinned queues (default: this host's name)."
)
@click.option(
    "--drain",
    is_flag=True,
    help="Do not start workers: ask the running workers of this host (or --host) to give "
    "their jobs back to the queue at once and stop, as SIGTERM does; waits until they stopped.",
)
@click.pass_context
def worker_cmd(ctx, gpus, cpu, no_prep, host, drain) -> None:
    """Run this host's workers: one per GPU (CUDA_VISIBLE_DEVICES pinned), or one CPU worker.

    On SIGTERM (what a spot or rented host gets before it vanishes) or `--drain`, the workers
    stop taking jobs, upload the newest saved state (with storage_url) and give their running
    jobs back to the queue at once, as their next attempt, within preempt_seconds.

    \b
    Examples:
      autotrain worker                       # every GPU of this host
      autotrain worker --gpus 0,2            # only GPUs 0 and 2
      AUTOTRAIN_REDIS_URL=redis://:pw@queue-host:6379/0 autotrain worker
      autotrain worker --drain --host gpu-box-2   # hand gpu-box-2's jobs back, stop its workers
    """
    from autotrain.hosts import drain_host, host_gpus, run_host_workers, this_host

    settings = settings_of(ctx)
    host = host or this_host()
    if drain:
        drain_host(host, settings=settings, say=lambda m: console.print(m, markup=False))
        return
    found, why_none = host_gpus(gpus, cpu=cpu)
    if not found and not cpu:
        err_console.print(
            f"No GPU workers: {literal(why_none)}. Starting one CPU worker (it can train Tiny)."
        )
    for gpu in found:
        console.print(
            f"GPU {gpu.index}: {literal(gpu.name)} {gpu.uuid} ({gpu.memory_free / 2**30:.1f} GiB free)"
        )
    sys.exit(run_host_workers(host, found, consume_prep=not no_prep, settings=settings,
                              say=lambda m: console.print(m, markup=False)))  # fmt: skip


@click.command("flower", context_settings={"ignore_unknown_options": True})
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def flower_cmd(ctx, flower_args) -> None:
    """Flower, the Celery task view, on flower_address:flower_port with basic auth from settings.

    \b
    Example:
      AUTOTRAIN_FLOWER_PASSWORD=secret autotrain flower
    """
    settings = settings_of(ctx)
    address, port, passed_on = _flower_address(flower_args, settings)
    argv = [sys.executable, "-m", "autotrain.cli.flower_server", "-A", "autotrain.jobs.celery_app",
            "flower", f"--address={address}", f"--port={port}", *passed_on]  # fmt: skip
    env = {**os.environ, "AUTOTRAIN_WORKSPACE": str(settings.workspace)}
    if settings.flower_password:
        # Flower reads its options from FLOWER_* variables: the password stays off `ps`.
        secret = settings.flower_password.get_secret_value()
        env["FLOWER_BASIC_AUTH"] = f"{settings.flower_user}:{secret}"
    elif address not in ("127.0.0.1", "localhost", "::1"):
        raise AutotrainError(
            f"Flower on {address} (beyond loopback) needs a password: set "
            "AUTOTRAIN_FLOWER_PASSWORD."
        )
    console.print(f"Flower on http://{literal(address)}:{port}")
    # Replace this process, so that signals (Ctrl+C, a service manager's SIGTERM) reach Flower.
    os.execve(sys.executable, argv, env)


def _flower_address(flower_args: tuple[str, ...], settings) -> tuple[str, str, list[str]]:
    """The address and port Flower will really serve, with the user's own `--address`/`--port`
    given to Flower taken into account (the last one wins, as in Flower), and the other
    arguments to pass on."""
    address, port = settings.flower_address, str(settings.flower_port)
    passed_on: list[str] = []
    args = iter(flower_args)
    for arg in args:
        name, has_value, value = arg.partition("=")
        if name in ("--address", "--port"):
            value = value if has_value else next(args, "")
            if name == "--address":
                address = value
            else:
                port = value
        else:
            passed_on.append(arg)
    return address, port, passed_on


@click.command("doctor")
@click.pass_context
def doctor_cmd(ctx) -> None:
    """Check this host: sd-scripts and its Python, model files, GPUs, workspace; with fixes.

    \b
    Example:
      autotrain doctor
    """
    from rich.table import Table

    from autotrain.hosts import check_host

    checks = check_host(settings=settings_of(ctx))
    table = Table("check", "status", "detail", "fix")
    for check in checks:
        status = (
            "[green]ok[/]"
            if check.ok
            else ("[red]error[/]" if check.fatal else "[yellow]warning[/]")
        )
        table.add_row(literal(check.name), status, literal(check.detail), literal(check.fix or ""))
    console.print(table)
    fatal = [c for c in checks if c.fatal]
    if fatal:
        console.print(
            f"[red]{len(fatal)} problem(s) stop this host from training; fix them as shown.[/]"
        )
        sys.exit(1)


@click.command("redis")
@click.option("--port", type=int, default=6379, show_default=True, help="Port on 127.0.0.1.")
@click.pass_context
def redis_cmd(ctx, port) -> None:
    """Run the workspace's Redis in the foreground, for a process manager (Procfile, systemd).

    It is the Redis `autotrain up` starts: loopback only, its own password (kept in
    .autotrain/redis.password, mode 0600), CONFIG, DEBUG, MODULE, SLAVEOF/REPLICAOF and MIGRATE
    disabled, its files readable by this user only. Workers and commands of the workspace find
    it without AUTOTRAIN_REDIS_URL.

    \b
    Examples:
      autotrain redis               # what the Procfile's redis line runs (honcho start)
      autotrain redis --port 6380
    """
    import autotrain.fleet.cluster as local

    local.run_redis_in_foreground(settings_of(ctx), port)


COMMANDS = [redis_cmd, up_cmd, down_cmd, status_cmd, worker_cmd, flower_cmd, doctor_cmd]
