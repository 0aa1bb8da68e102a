"""`autotrain up|down|status|redis|worker|flower|doctor`: the local cluster and the workers of a host."""

from __future__ import annotations

import json
import os
import sys

import click

from autotrain.cli.common import console, err_console, settings_of
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
      autotrain up --dashboard     # and http://127.0.0.1:8642; `autotrain down` stops it too
    """
    import autotrain.fleet.cluster as local

    settings = settings_of(ctx)
    status = local.up(settings, workers=not no_workers, worker_args=["--cpu"] if cpu else [])
    console.print(
        f"Redis: {local.redact(status.redis_url or '')} (pid {status.redis_pid}); data in {settings.workspace / '.autotrain'}"
    )
    if status.workers_pid:
        console.print(
            f"Workers: supervisor pid {status.workers_pid}; log {settings.workspace / '.autotrain' / 'worker.log'}"
        )
    if dashboard:
        from autotrain.dashboard.access import needs_credential

        if why := needs_credential(settings, settings.dashboard_address):
            raise AutotrainError(why)
        pid = local.start_local_dashboard(settings)
        running = f"pid {pid}" if pid else "already running"
        console.print(f"Dashboard: http://{settings.dashboard_address}:{settings.dashboard_port} "
                      f"({running}); log {settings.workspace / '.autotrain' / 'dashboard.log'}")  # fmt: skip


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
    import autotrain.fleet.cluster as local

    settings = settings_of(ctx)
    training = [] if force else _training_jobs(settings)
    if training:
        listing = ", ".join(f"{j.id} ({j.name}, {j.step}/{j.total or '?'})" for j in training[:5])
        raise AutotrainError(
            f"{len(training)} job(s) training: {listing}. Stopping interrupts them (they resume "
            "from their newest saved state after the next `autotrain up`). Wait, cancel them, or "
            "run `autotrain down --force`."
        )
    stopped = local.down(settings)
    console.print("Stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


def _training_jobs(settings) -> list:
    """Jobs training on this workspace's embedded Redis, [] when it is not running."""
    import autotrain.fleet.cluster as local
    from autotrain.jobs.connection import job_store
    from autotrain.jobs.job import JobState

    status = local.cluster_status(settings)
    if not status.embedded or not status.redis_running:
        return []
    return job_store(settings).page(states={JobState.TRAINING}, limit=100)


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
    from rich.table import Table

    import autotrain.fleet.cluster as local
    from autotrain.fleet.registry import live_workers
    from autotrain.jobs import keys
    from autotrain.jobs.queue import queue_depths
    from autotrain.jobs.store import JobStore

    settings = settings_of(ctx)
    status = local.cluster_status(settings)
    kind = "embedded" if status.embedded else "shared"
    state = "[green]up[/]" if status.redis_running else "[red]down[/]"
    if not as_json:
        console.print(f"Redis ({kind}): {state} {local.redact(status.redis_url or '')}")
    if not status.redis_running:
        if as_json:
            click.echo(json.dumps({"redis": {"kind": kind, "running": False}}, indent=2))
            sys.exit(1)
        console.print(
            "Start it with `autotrain up`." if status.embedded else "Check AUTOTRAIN_REDIS_URL."
        )
        sys.exit(1)
    from autotrain.jobs.connection import get_redis

    client = get_redis(settings)
    workers = live_workers(client)
    for w in workers:  # NCCL/hardware failures seen on its GPU in the last day
        failures = int(client.get(keys.gpu_failures(w["host"], w["gpu"])) or 0) if w["gpu"] else 0
        w["gpu_failures"] = failures
        w["suspect"] = failures >= settings.suspect_gpu_failures
    depths = queue_depths(JobStore(client))
    memory = client.info("memory")
    used, limit = memory.get("used_memory", 0), memory.get("maxmemory", 0)
    if as_json:
        redis_info = {"kind": kind, "running": True, "url": local.redact(status.redis_url or ""),
                      "used_memory_bytes": used, "maxmemory_bytes": limit}  # fmt: skip
        fields = ("name", "host", "gpu", "queues", "job", "gpu_failures", "suspect")
        rows = [{k: w.get(k) for k in fields} for w in workers]
        click.echo(json.dumps({"redis": redis_info, "workers": rows, "queues": depths}, indent=2))
        return
    table = Table("worker", "host", "GPU", "queues", "busy with", "GPU failures (1 day)")
    for w in workers:
        failures = str(w["gpu_failures"]) + (" [red]suspect[/]" if w["suspect"] else "")
        table.add_row(
            w["name"], w["host"], w["gpu"] or "cpu", ", ".join(w["queues"]), w["job"] or "-",
            failures,
        )  # fmt: skip
    console.print(
        table
        if workers
        else "No live workers. Start them with `autotrain up` or `autotrain worker`."
    )
    console.print("Queues: " + ", ".join(f"{q}={n}" for q, n in sorted(depths.items())))
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
@click.pass_context
def worker_cmd(ctx, gpus, cpu, no_prep, host) -> None:
    """Run this host's workers: one per GPU (CUDA_VISIBLE_DEVICES pinned), or one CPU worker.

    \b
    Examples:
      autotrain worker                       # every GPU of this host
      autotrain worker --gpus 0,2            # only GPUs 0 and 2
      AUTOTRAIN_REDIS_URL=redis://:pw@queue-host:6379/0 autotrain worker
    """
    from autotrain.jobs.queue import current_host
    from autotrain.worker.launch import discover_gpus, plan_workers, run_workers

    settings = settings_of(ctx)
    host = host or current_host()
    os.environ["AUTOTRAIN_HOST"] = host
    found, why_none = ([], "--cpu given") if cpu else discover_gpus()
    if gpus != "all" and found:
        wanted = {int(x) for x in gpus.split(",") if x.strip()}
        missing = wanted - {g.index for g in found}
        if missing:
            raise AutotrainError(
                f"--gpus {gpus}: no GPU {sorted(missing)} here; found {[g.index for g in found]}."
            )
        found = [g for g in found if g.index in wanted]
    if not found and not cpu:
        err_console.print(
            f"No GPU workers: {why_none}. Starting one CPU worker (it can train Tiny)."
        )
    for gpu in found:
        console.print(
            f"GPU {gpu.index}: {gpu.name} {gpu.uuid} ({gpu.memory_free / 2**30:.1f} GiB free)"
        )
    workers = plan_workers(settings, host, found, use_cpu=not found, consume_prep=not no_prep)
    sys.exit(run_workers(workers, say=lambda m: console.print(m)))


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
    console.print(f"Flower on http://{address}:{port}")
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

    from autotrain.fleet.doctor import run_checks

    checks = run_checks(settings_of(ctx))
    table = Table("check", "status", "detail", "fix")
    for check in checks:
        status = (
            "[green]ok[/]"
            if check.ok
            else ("[red]error[/]" if check.fatal else "[yellow]warning[/]")
        )
        table.add_row(check.name, status, check.detail, check.fix or "")
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
