"""`autotrain train retry|resume|show|prune`: steering jobs after they were queued."""

from __future__ import annotations

import json
import sys
import time

import click

from autotrain.cli.common import FAILED, console, err_console, settings_of

__all__ = ["COMMANDS"]


def _retry_options(func):
    options = [
        click.option("--job", "job_id", help="Job id (or a unique prefix)."),
        click.option("--batch", "batch_id", help="Every failed or cancelled job of this batch."),
        click.option("--failed", "only_failed", is_flag=True,
                     help="With --batch: only the failed jobs, not the cancelled ones."),
        click.option("--from-scratch", is_flag=True,
                     help="Start training over (earlier files move to output/<name>/runs/)."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


@click.command("retry")
@_retry_options
@click.pass_context
def retry_cmd(ctx, job_id, batch_id, only_failed, from_scratch) -> None:
    """Queue a failed or cancelled job again, resuming from its newest saved state.

    The job keeps its id and history; this is its next attempt. Validation and staging run
    again (an unchanged staged copy is reused), then training continues from the newest
    complete saved state, or from step 0 with --from-scratch.

    \b
    Examples:
      autotrain train retry --job 20261125-101500-a1b2c3
      autotrain train retry --job 20261125-101500-a1b2c3 --from-scratch
      autotrain train retry --batch 20261125-101500-b4d5e6 --failed
    """
    from autotrain.errors import AutotrainError
    from autotrain.jobs.celery_app import configure_app
    from autotrain.jobs.connection import job_store
    from autotrain.jobs.job import JobState
    from autotrain.jobs.queue import retry_job

    if bool(job_id) == bool(batch_id):
        raise click.UsageError("Give one of --job or --batch.")
    if only_failed and not batch_id:
        raise click.UsageError("--failed goes with --batch.")
    settings = settings_of(ctx)
    configure_app(settings)
    store = job_store(settings)
    if job_id:
        targets = [store.get(job_id)]
    else:
        wanted = {JobState.FAILED} if only_failed else {JobState.FAILED, JobState.CANCELLED}
        targets = store.list(states=wanted, batch_id=batch_id)
        if not targets:
            console.print(f"Batch {batch_id} has no job to retry.")
            return
    refused = 0
    for job in targets:
        try:
            retried = retry_job(store, job.id, from_scratch=from_scratch)
        except AutotrainError as exc:
            if job_id:
                raise
            refused += 1
            err_console.print(f"[red]Not retried[/] {job.id} ({job.name}): {exc}", soft_wrap=True)
            continue
        how = "from scratch" if from_scratch else "resuming from its newest saved state, if any"
        console.print(
            f"Queued {retried.id} ({retried.name}) again as attempt {retried.attempt}, {how}."
        )
    if job_id:
        console.print(f"Watch it: autotrain train monitor --job {targets[0].id}")
    if refused:
        sys.exit(FAILED)


@click.command("resume")
@_retry_options
@click.pass_context
def resume_cmd(ctx, job_id, batch_id, only_failed, from_scratch) -> None:
    """The same as `train retry`: continue a failed or cancelled job from its newest state.

    \b
    Example:
      autotrain train resume --job 20261125-101500-a1b2c3
    """
    ctx.invoke(retry_cmd, job_id=job_id, batch_id=batch_id, only_failed=only_failed,
               from_scratch=from_scratch)  # fmt: skip


@click.command("show")
@click.option("--job", "job_id", required=True, help="Job id (or a unique prefix).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (README: fields).")
@click.pass_context
def show_cmd(ctx, job_id, as_json) -> None:
    """Everything known about one job: its record, why it waits, and every attempt.

    \b
    Examples:
      autotrain train show --job 20261125-101500-a1b2c3
      autotrain train show --job 20261125 --json | jq '.history'
    """
    from autotrain.fleet.eta import forecast
    from autotrain.fleet.waiting import waiting_reasons
    from autotrain.jobs.connection import job_store
    from autotrain.jobs.job import public_record

    settings = settings_of(ctx)
    store = job_store(settings)
    job = store.get(job_id)
    reason = waiting_reasons(store.redis, [job]).get(job.id)
    expected = None if job.is_final else forecast(store, settings).get(job.id)
    record = public_record(job, store.history(job.id), reason, expected)
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_header=False)
    for field, value in record.items():
        if field not in ("history", "forecast") and value not in (None, [], ""):
            table.add_row(f"[bold]{field}[/]", str(value))
    if expected is not None:
        table.add_row("[bold]forecast[/]", _forecast_text(expected))
    if needs := _needs(job, settings):
        table.add_row("[bold]GPU memory[/]", "\n".join(needs))
    console.print(table)
    history = Table("at", "attempt", "event", "worker", "step", "error", title="history")
    for entry in record["history"]:
        step = f"{entry.get('step', '')}/{entry.get('total') or '?'}" if "step" in entry else ""
        history.add_row(entry["at"], str(entry.get("attempt", "")), entry.get("event", ""),
                        entry.get("worker") or "", step, entry.get("error") or "")  # fmt: skip
    console.print(history)


def _needs(job, settings) -> list[str]:
    """The job's memory estimate and its profile's ladder (none when the profile is gone)."""
    from autotrain.errors import AutotrainError
    from autotrain.fleet.placement import describe_needs
    from autotrain.profile import profile_for

    try:
        profile = profile_for(job.spec, settings)
    except AutotrainError:
        return []
    return describe_needs(profile, (job.plan or {}).get("config"), job.variant)


def _forecast_text(expected) -> str:
    """`starts in 00:03:10 (04:12:30), done in 00:09:40 (04:19:00), on gpu1@h0: <why>`."""
    from autotrain.formatting import format_eta

    now = time.time()

    def when(at: float | None) -> str:
        return "unknown" if at is None else (
            f"{format_eta(at - now)} ({time.strftime('%H:%M:%S', time.localtime(at))})")  # fmt: skip

    starts = "" if expected.starts_at and expected.starts_at <= now else (
        f"starts in {when(expected.starts_at)}, ")  # fmt: skip
    return f"{starts}done in {when(expected.finishes_at)}: {expected.why}"


def _duration(text: str) -> float:
    """`7d`, `12h`, `30m`, `45s` -> seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    try:
        return float(text[:-1]) * units[text[-1]]
    except (KeyError, ValueError, IndexError):
        raise click.BadParameter(
            f"{text!r}: use a number and d, h, m or s, like 7d or 12h."
        ) from None


@click.command("prune")
@click.option("--older-than", required=True, help="Finished at least this long ago: 7d, 12h, 30m.")
@click.option("--state", "states", multiple=True, type=click.Choice(["succeeded", "failed", "cancelled"]),
              help="Only jobs that ended so (repeatable; default: all three).")  # fmt: skip
@click.option("--outputs", is_flag=True, help="Also delete their output folders (weights!).")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.pass_context
def prune_cmd(ctx, older_than, states, outputs, dry_run) -> None:
    """Remove finished jobs from the store: records, history, events and Celery results.

    Their outputs on disk stay unless --outputs is given. Jobs in progress are never touched.

    \b
    Examples:
      autotrain train prune --older-than 7d
      autotrain train prune --older-than 30d --state failed --state cancelled --dry-run
    """
    from autotrain.jobs.connection import job_store
    from autotrain.jobs.job import JobState
    from autotrain.jobs.prune import prune_jobs
    from autotrain.workspace import Workspace

    seconds = _duration(older_than)
    settings = settings_of(ctx)
    result = prune_jobs(job_store(settings), seconds, states={JobState(s) for s in states} or None,
                        outputs=outputs, workspace=Workspace(settings.workspace),
                        dry_run=dry_run)  # fmt: skip
    verb = "Would remove" if dry_run else "Removed"
    for job in result.removed:
        console.print(f"  {job.id}  {job.name}  {job.state.value}")
    console.print(f"{verb} {len(result.removed)} job(s) that ended over {older_than} ago.")
    for path in result.outputs_removed:
        console.print(f"  {verb.lower()} {path}")


@click.command("move")
@click.option("--job", "job_id", required=True, help="The waiting job to move.")
@click.option(
    "--top", "where", flag_value="top", help="Start it next: first of the highest priority."
)
@click.option(
    "--bottom", "where", flag_value="bottom", help="Start it last: last of the lowest priority."
)
@click.option("--before", "other_id", help="Start it just before this other waiting job.")
@click.pass_context
def move_cmd(ctx, job_id, where, other_id) -> None:
    """Change when a waiting job starts; `train list` shows the order (column `next`).

    \b
    Examples:
      autotrain train move --job 20261125-101500-a1b2c3 --top
      autotrain train move --job 20261125-101500-a1b2c3 --before 20261125-101000-d4e5f6
    """
    from autotrain.jobs.connection import job_store
    from autotrain.jobs.order import move_job

    if bool(where) == bool(other_id):
        raise click.UsageError("Give one of --top, --bottom or --before JOB.")
    job = move_job(job_store(settings_of(ctx)), job_id, where or "before", other_id)
    console.print(f"Moved {job.id} ({job.name}); see `autotrain train list --state waiting_gpu`.")


@click.command("hold")
@click.option("--job", "job_id", required=True, help="Job id (or a unique prefix).")
@click.pass_context
def hold_cmd(ctx, job_id) -> None:
    """Keep a job queued but not startable until `train release`.

    \b
    Example:
      autotrain train hold --job 20261125-101500-a1b2c3
    """
    from autotrain.jobs.connection import job_store
    from autotrain.jobs.order import hold_job

    job = hold_job(job_store(settings_of(ctx)), job_id)
    console.print(
        f"Held {job.id} ({job.name}); it starts after: autotrain train release --job {job.id}"
    )


@click.command("release")
@click.option("--job", "job_id", required=True, help="Job id (or a unique prefix).")
@click.pass_context
def release_cmd(ctx, job_id) -> None:
    """Let a held job start again (it joins the end of its priority level).

    \b
    Example:
      autotrain train release --job 20261125-101500-a1b2c3
    """
    from autotrain.jobs.celery_app import configure_app
    from autotrain.jobs.connection import job_store
    from autotrain.jobs.order import release_job

    settings = settings_of(ctx)
    configure_app(settings)
    job = release_job(job_store(settings), job_id)
    console.print(f"Released {job.id} ({job.name}).")


COMMANDS = [retry_cmd, resume_cmd, show_cmd, prune_cmd, move_cmd, hold_cmd, release_cmd]
