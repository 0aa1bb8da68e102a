"""`autotrain train list|monitor|cancel|logs`."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING

import click

from autotrain.cli.common import INTERRUPTED, console, literal, settings_of
from autotrain.jobs.states import JobState

if TYPE_CHECKING:
    from autotrain.settings import Settings

__all__ = ["COMMANDS", "monitor_job", "monitor_batch"]


@click.group("train")
def train_group() -> None:
    """Watch and control queued and running jobs."""


@train_group.command("list")
@click.option("--state", "states", multiple=True, type=click.Choice([s.value for s in JobState]),
              help="Only jobs in this state (repeatable).")  # fmt: skip
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1),
              help="Show at most this many jobs (a page).")  # fmt: skip
@click.option("--offset", default=0, type=click.IntRange(min=0), help="Skip this many first.")
@click.option("--batch", "batch_id", help="Only the jobs of this batch.")
@click.option("--profile", help="Only jobs of this profile.")
@click.option("--name", help="Only jobs whose dataset name contains this.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (README: fields).")
@click.pass_context
def list_cmd(ctx, states, limit, offset, batch_id, profile, name, as_json) -> None:
    """Jobs, newest first, one page at a time.

    \b
    Examples:
      autotrain train list
      autotrain train list --state training --state queued
      autotrain train list --batch 20261202-041500-b1c2d3 --state failed
      autotrain train list --limit 20 --offset 20
      autotrain train list --json | jq '.[].state'
    """
    from autotrain.control import job_forecasts, list_jobs, start_positions, waiting_reasons
    from autotrain.records import job_row, public_record

    settings = settings_of(ctx)
    jobs = list_jobs(state=states, profile=profile, name=name, batch=batch_id, limit=limit,
                     offset=offset, settings=settings)  # fmt: skip
    reasons = waiting_reasons(jobs, settings=settings)
    in_progress = any(not j.is_final for j in jobs)
    forecasts = job_forecasts(settings=settings) if in_progress else {}
    if as_json:
        click.echo(json.dumps([public_record(j, waiting_reason=reasons.get(j.id),
                                             forecast=forecasts.get(j.id)) for j in jobs],
                              indent=2))  # fmt: skip
        return
    positions = start_positions(jobs, settings=settings)
    now = time.time()
    rows = [job_row(j, forecasts.get(j.id), now, positions.get(j.id)) for j in jobs]
    _print_jobs_table(rows)
    for j in jobs:
        if j.id in reasons:
            console.print(f"[yellow]{j.id}[/] {literal(j.name)} {literal(reasons[j.id])}",
                          soft_wrap=True)  # fmt: skip
    if len(jobs) == limit:
        console.print(f"[dim]Newest {offset + 1}-{offset + limit} shown; --offset "
                      f"{offset + limit} for the next page.[/]")  # fmt: skip


_LIST_COLUMNS = {"id": "id", "name": "name", "profile": "profile", "state": "state",
                 "next": "next", "host/GPU": "where", "progress": "progress", "loss": "loss",
                 "ETA": "eta", "age": "age"}  # fmt: skip


def _print_jobs_table(rows: list[dict]) -> None:
    """`train list`'s table of autotrain.records.job_row rows."""
    from rich.table import Table

    if not rows:
        console.print("No jobs yet. Queue one with `autotrain pipeline run`.")
        return
    table = Table(box=None, pad_edge=False)
    for column in _LIST_COLUMNS:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*(literal(row[field]) for field in _LIST_COLUMNS.values()))
    console.print(table)


@train_group.command("monitor")
@click.option("--job", "job_id", help="Job id (or a unique prefix).")
@click.option(
    "--batch", "batch_id", help="A batch id: the batch view (as `pipeline batch --monitor`)."
)
@click.pass_context
def monitor_cmd(ctx, job_id, batch_id) -> None:
    """Live progress of one job or a batch; started late it replays the history first.

    Ctrl+C detaches (exit 130); the work goes on and the same command re-attaches.

    \b
    Examples:
      autotrain train monitor --job 20261125-101500-a1b2c3
      autotrain train monitor --batch b20261125-101500-a1b2
    """
    if bool(job_id) == bool(batch_id):
        raise click.UsageError("Give one of --job or --batch.")
    settings = settings_of(ctx)
    sys.exit(monitor_job(settings, job_id) if job_id else monitor_batch(settings, batch_id))


@train_group.command("cancel")
@click.option("--job", "job_id", help="Job id (or a unique prefix).")
@click.option("--batch", "batch_id", help="Every job of this batch that has not ended.")
@click.pass_context
def cancel_cmd(ctx, job_id, batch_id) -> None:
    """Cancel a job: a queued one never starts, a running trainer is stopped (SIGTERM, then SIGKILL).

    \b
    Examples:
      autotrain train cancel --job 20261125-101500-a1b2c3
      autotrain train cancel --batch b20261125-101500-a1b2
    """
    from autotrain.control import cancel_batch, cancel_job

    if bool(job_id) == bool(batch_id):
        raise click.UsageError("Give one of --job or --batch.")
    settings = settings_of(ctx)
    if batch_id:
        open_jobs = cancel_batch(batch_id, settings=settings)
        console.print(
            f"Cancelling {len(open_jobs)} job(s) of batch {literal(batch_id)}; the others had ended."
        )
        return
    job = cancel_job(job_id, settings=settings)
    if job.state == JobState.CANCELLED:
        console.print(f"Job {job.id} ({literal(job.name)}) is cancelled.")
    elif job.is_final:
        console.print(f"Job {job.id} ({literal(job.name)}) had already ended: {job.state.value}.")
    else:
        console.print(
            f"Cancelling job {job.id} ({literal(job.name)}); its worker stops the trainer within seconds."
        )


@train_group.command("logs")
@click.option("--job", "job_id", required=True, help="Job id (or a unique prefix).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output until the job ends.")
@click.pass_context
def logs_cmd(ctx, job_id, follow) -> None:
    """The trainer's raw output for a job (output/<name>/log/trainer.log), and its newest samples.

    \b
    Example:
      autotrain train logs --job 20261125-101500-a1b2c3 --follow
    """
    from autotrain.control import get_job, job_logs

    settings = settings_of(ctx)
    job = get_job(job_id, settings=settings)
    if job.error:
        console.print(f"[red]Error:[/] {literal(job.error)}", soft_wrap=True)
    for chunk in job_logs(job.id, follow=follow, settings=settings):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    samples = get_job(job.id, settings=settings).samples
    if samples:
        console.print("Newest samples:\n  " + literal("\n  ".join(samples)))


def monitor_job(settings: Settings, job_id: str) -> int:
    """Show the live single-job line until the job ends; 0 when it succeeded."""
    from autotrain.cli.live import LiveView
    from autotrain.control import get_job, queue_depth, waiting_reasons
    from autotrain.monitor import job_line, watch_job

    job = get_job(job_id, settings=settings)
    job_id = job.id  # a prefix was resolved
    depth, depth_at, reason, shown_state = 0, 0.0, None, None
    try:
        with LiveView(console.rich()) as view:
            for job, events in watch_job(job_id, settings=settings):  # noqa: B020 - the newest
                for event in events:
                    if event.get("kind") in _NOTED_EVENTS and (
                        event.get("path") or event.get("kind") == "error"
                    ):
                        view.note(f"  {event['kind']}: {event.get('path') or event.get('message')}")
                if time.monotonic() - depth_at > 2 or job.state != shown_state:
                    depth, depth_at = queue_depth(settings=settings), time.monotonic()
                    reason = waiting_reasons([job], settings=settings).get(job.id)
                    shown_state = job.state
                line = job_line(job, depth) + (f" | {reason}" if reason else "")
                view.update(line, key=(*_change_key(job), reason, _minute_if(reason)))
    except KeyboardInterrupt:
        console.print(
            f"\nDetached; the job goes on. Re-attach: autotrain train monitor --job {job.id}"
        )
        return INTERRUPTED
    return _final_message(job, settings)


def monitor_batch(settings: Settings, batch_id: str) -> int:
    """The batch view until every job of the batch is final, then a summary table."""
    from autotrain.cli.live import LiveView
    from autotrain.control import job_forecasts, waiting_reasons
    from autotrain.monitor import batch_end_line, batch_line, watch_batch

    jobs = []
    forecasts, forecast_at = {}, 0.0
    try:
        with LiveView(console.rich()) as view:
            for jobs in watch_batch(batch_id, settings=settings):
                reasons = waiting_reasons(jobs, settings=settings)
                if time.monotonic() - forecast_at > 5:  # the replay reads every job in progress
                    forecasts, forecast_at = job_forecasts(settings=settings), time.monotonic()
                lines = [batch_line(j, jobs, forecasts.get(j.id))
                         + (f" | {reasons[j.id]}" if j.id in reasons else "") for j in jobs]  # fmt: skip
                if end := batch_end_line(jobs, forecasts):
                    lines.append(end)
                key = tuple(
                    (j.state, (j.step * 10) // (j.total or 1), reasons.get(j.id)) for j in jobs
                )
                view.update("\n".join(lines), key=(key, _minute_if(reasons), end))
    except KeyboardInterrupt:
        console.print("\nDetached; the jobs go on. Watch them: autotrain train list")
        return INTERRUPTED
    print_batch_summary(jobs)
    _name_contact_sheets(settings, batch_id, jobs)
    return 0 if all(j.state == JobState.SUCCEEDED for j in jobs) else 1


def _name_contact_sheets(settings: Settings, batch_id: str, jobs: list) -> None:
    """Where to see what the batch learned: its jobs side by side on the dashboard, and each
    job's samples.png."""
    from autotrain.hosts import dashboard_page

    page = dashboard_page(f"/batches/{batch_id}", settings=settings)
    console.print(f"The batch side by side (a contact sheet per prompt): "
                  f"{literal(page or f'autotrain dashboard, then /batches/{batch_id}')}")  # fmt: skip
    for job in jobs:
        if sheet := (job.result or {}).get("samples_sheet"):
            console.print(f"  {literal(job.name)}: {literal(sheet)}")


def print_batch_summary(jobs: list) -> None:
    """One row per job, queued and training time apart; errors in full below the table."""
    from rich.table import Table

    from autotrain.formatting import format_eta, format_loss

    table = Table("name", "state", "steps", "final loss", "queued", "training")
    table.add_column("weights", overflow="fold")  # a path is never cut at the terminal's width
    now = time.time()
    for j in jobs:
        training = j.training_seconds(now)
        weights = (j.result or {}).get("weights") if j.state == JobState.SUCCEEDED else None
        table.add_row(literal(j.name), j.state.value, f"{j.step}/{j.total or '?'}",
                      format_loss(j.loss),
                      format_eta(j.queued_seconds(now)),
                      format_eta(training) if training is not None else "-",
                      literal(weights or "-"))  # fmt: skip
    console.print(table, soft_wrap=True)
    for j in jobs:
        if j.error and j.state != JobState.SUCCEEDED:
            console.print(f"[red]{literal(j.name)}[/] ({j.id}) {j.state.value}:", end=" ")
            console.print(j.error, markup=False, soft_wrap=True)


_NOTED_EVENTS = ("checkpoint", "sample", "error")


def _change_key(job) -> tuple:
    """What must change for a log (non-terminal) monitor to print a new line: 5% of training,
    a quarter of the files of validation or staging, or the state."""
    files = (job.files[0] * 4 // max(job.files[1], 1)) if job.files else 0
    return (job.state, (job.step * 20) // (job.total or 1), files)


def _minute_if(waiting: object) -> int | None:
    """Part of a log monitor's change key: while something waits, a new line every minute, so a
    log says the job still waits and why."""
    return int(time.monotonic() // 60) if waiting else None


def _final_message(job, settings: Settings) -> int:
    from autotrain.hosts import dashboard_page

    if job.state == JobState.SUCCEEDED:
        result = job.result or {}
        console.print(f"[green]Succeeded.[/] Weights: {literal(result.get('weights'))}")
        console.print(f"Run manifest: {literal(result.get('run_json'))}")
        if result.get("samples_sheet"):  # what the model learned, as one picture
            console.print(f"Samples, one row per prompt and one column per step: "
                          f"{literal(result['samples_sheet'])}")  # fmt: skip
        if page := dashboard_page(f"/jobs/{job.id}", settings=settings):
            console.print(f"Dashboard: {literal(page)}")
        return 0
    console.print(f"[red]{job.state.value}:[/] {literal(job.error or '')}", soft_wrap=True)
    return 1


def _add_control_commands() -> None:
    from autotrain.cli import control

    for command in control.COMMANDS:
        train_group.add_command(command)


_add_control_commands()
COMMANDS = [train_group]
