"""`autotrain train retry|resume|show|prune`: steering jobs after they were queued."""

from __future__ import annotations

import json
import sys

import click

from autotrain.cli.common import FAILED, console, err_console, literal, settings_of

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
    from autotrain.control import retry_batch, retry_job

    if bool(job_id) == bool(batch_id):
        raise click.UsageError("Give one of --job or --batch.")
    if only_failed and not batch_id:
        raise click.UsageError("--failed goes with --batch.")
    settings = settings_of(ctx)
    how = "from scratch" if from_scratch else "resuming from its newest saved state, if any"
    if job_id:
        retried = retry_job(job_id, from_scratch=from_scratch, settings=settings)
        console.print(
            f"Queued {retried.id} ({literal(retried.name)}) again as attempt {retried.attempt}, {how}."
        )
        console.print(f"Watch it: autotrain train monitor --job {retried.id}")
        return
    outcome = retry_batch(batch_id, only_failed=only_failed, from_scratch=from_scratch,
                          settings=settings)  # fmt: skip
    if not outcome.retried and not outcome.refused:
        console.print(f"Batch {literal(batch_id)} has no job to retry.")
        return
    for job, exc in outcome.refused:
        err_console.print(
            f"[red]Not retried[/] {job.id} ({literal(job.name)}): {literal(exc)}", soft_wrap=True
        )
    for retried in outcome.retried:
        console.print(
            f"Queued {retried.id} ({literal(retried.name)}) again as attempt {retried.attempt}, {how}."
        )
    if outcome.refused:
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
    from autotrain.control import show_job
    from autotrain.records import forecast_text, public_record

    details = show_job(job_id, settings=settings_of(ctx))
    record = public_record(details.job, details.history, details.waiting_reason, details.forecast)
    if details.storage:
        record["storage"] = details.storage
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_header=False)
    for field, value in record.items():
        if field not in ("history", "forecast", "storage") and value not in (None, [], ""):
            table.add_row(f"[bold]{field}[/]", literal(value))
    if details.forecast is not None:
        table.add_row("[bold]forecast[/]", literal(forecast_text(details.forecast)))
    if details.needs:
        table.add_row("[bold]GPU memory[/]", literal("\n".join(details.needs)))
    if details.storage:
        table.add_row("[bold]store traffic[/]", literal(_traffic_lines(details.storage)))
    console.print(table)
    history = Table("at", "attempt", "event", "worker", "step", "error", title="history")
    for entry in record["history"]:
        step = f"{entry.get('step', '')}/{entry.get('total') or '?'}" if "step" in entry else ""
        cells = (entry["at"], entry.get("attempt", ""), entry.get("event", ""),
                 entry.get("worker") or "", step, entry.get("error") or "")  # fmt: skip
        history.add_row(*map(literal, cells))
    console.print(history)


def _traffic_lines(storage: dict) -> str:
    """`train show`'s store traffic: the total, then a line per phase."""
    from autotrain.storage.objects import Traffic

    lines = [f"all: {Traffic.from_dict(storage.get('total')).summary()}"]
    for phase, traffic in storage.get("phases", {}).items():
        lines.append(f"{phase}: {Traffic.from_dict(traffic).summary()}")
    return "\n".join(lines)


def _duration(text: str) -> float:
    """`7d`, `12h`, `30m`, `45s` -> seconds; a usage error otherwise."""
    from autotrain.formatting import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


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
    from autotrain.control import prune_jobs

    seconds = _duration(older_than)
    result = prune_jobs(seconds, states=states, outputs=outputs, dry_run=dry_run,
                        settings=settings_of(ctx))  # fmt: skip
    verb = "Would remove" if dry_run else "Removed"
    for job in result.removed:
        console.print(f"  {job.id}  {literal(job.name)}  {job.state.value}")
    console.print(f"{verb} {len(result.removed)} job(s) that ended over {older_than} ago.")
    for path in result.outputs_removed:
        console.print(f"  {verb.lower()} {literal(path)}")


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
    from autotrain.control import move_job

    if bool(where) == bool(other_id):
        raise click.UsageError("Give one of --top, --bottom or --before JOB.")
    job = move_job(job_id, where or "before", other_id, settings=settings_of(ctx))
    console.print(
        f"Moved {job.id} ({literal(job.name)}); see `autotrain train list --state waiting_gpu`."
    )


@click.command("hold")
@click.option("--job", "job_id", required=True, help="Job id (or a unique prefix).")
@click.pass_context
def hold_cmd(ctx, job_id) -> None:
    """Keep a job queued but not startable until `train release`.

    \b
    Example:
      autotrain train hold --job 20261125-101500-a1b2c3
    """
    from autotrain.control import hold_job

    job = hold_job(job_id, settings=settings_of(ctx))
    console.print(
        f"Held {job.id} ({literal(job.name)}); it starts after: autotrain train release --job {job.id}"
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
    from autotrain.control import release_job

    job = release_job(job_id, settings=settings_of(ctx))
    console.print(f"Released {job.id} ({literal(job.name)}).")


COMMANDS = [retry_cmd, resume_cmd, show_cmd, prune_cmd, move_cmd, hold_cmd, release_cmd]
