"""`autotrain pull`: a job's (or a batch's) outputs from the fleet's store into this workspace."""

from __future__ import annotations

import sys

import click

from autotrain.cli.common import console, err_console, literal, settings_of

__all__ = ["COMMANDS"]


@click.command("pull")
@click.option("--job", "job_id", help="The job whose outputs to bring here.")
@click.option("--batch", "batch_id", help="Every job of this batch.")
@click.option(
    "--with-states", is_flag=True, help="Also the saved training states (large; to resume here)."
)
@click.pass_context
def pull_cmd(ctx, job_id, batch_id, with_states) -> None:
    """Bring outputs from the store (storage_url) into this workspace's output/<name>/.

    Weights, run.json, samples.png, the samples and the logs of a job that trained on any host
    of the fleet; an other job's files in that folder move to output/<name>/runs/ first.

    \b
    Examples:
      autotrain pull --job 20261206-101500-ab12cd
      autotrain pull --batch b20261206-101500-1a2b
      AUTOTRAIN_STORAGE_URL=s3://my-bucket/autotrain autotrain pull --job 20261206-101500-ab12cd
    """
    from autotrain.transfer import Pulled, pull_batch, pull_job

    if bool(job_id) == bool(batch_id):
        raise click.UsageError("Give one of --job ID or --batch ID.")
    settings = settings_of(ctx)
    if job_id:
        results: list = [pull_job(job_id, with_states=with_states, settings=settings)]
    else:
        results = pull_batch(batch_id, with_states=with_states, settings=settings)
    failed = 0
    for result in results:
        if isinstance(result, Pulled):
            console.print(
                f"{result.job_id} ({literal(result.name)}): {len(result.files)} files new or "
                f"changed in {literal(result.output_dir)} ({literal(result.traffic.summary())})"
            )
        else:
            failed += 1
            err_console.print(f"[red]{result[0]}[/]: {literal(result[1])}", soft_wrap=True)
    sys.exit(1 if failed or not results else 0)


COMMANDS = [pull_cmd]
