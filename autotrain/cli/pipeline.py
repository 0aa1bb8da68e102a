"""`autotrain pipeline prepare|run|batch`."""

from __future__ import annotations

import sys

import click

from autotrain.cli.common import INTERRUPTED, console, err_console, literal, settings_of
from autotrain.cli.prepared import phase_progress, print_prepared

__all__ = ["COMMANDS"]


def _dataset_options(func):
    options = [
        click.option("--dataset-name", help="Name of the staged dataset (default: the folder name)."),
        click.option("--min-images", type=click.IntRange(0), default=1, show_default=True,
                     help="Fail unless at least this many images pass validation."),
        click.option("--skip-copy", is_flag=True, help="Reuse an existing staged copy that matches the source."),
        click.option("--force", is_flag=True, help="Replace an existing staged copy."),
        click.option("--dry-run", is_flag=True, help="Print what each phase would do; change nothing on disk."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def _priority_option(func):
    return click.option(
        "--priority", type=click.Choice(["high", "normal", "low"]), default="normal",
        show_default=True, help="Higher priority jobs start first; first in, first out within one.",
    )(func)  # fmt: skip


def _notify_option(func):
    return click.option(
        "--notify", multiple=True, metavar="URL",
        help="Apprise URL told when the job (and batch) ends; repeatable, adds to notify_urls.",
    )(func)  # fmt: skip


def _profile_option(func):
    return click.option(
        "--profile", required=True, help="Profile name (see `autotrain profiles list`)."
    )(func)


@click.group("pipeline")
def pipeline_group() -> None:
    """Validate, stage, configure and train datasets."""


@pipeline_group.command("prepare")
@click.option(
    "--dataset-path", required=True, type=click.Path(), help="Folder of images with .txt captions."
)
@_profile_option
@_dataset_options
@click.pass_context
def prepare_cmd(
    ctx, dataset_path, profile, dataset_name, min_images, skip_copy, force, dry_run
) -> None:
    """Phases 1-3 only: validate, stage into input/<name>/, write the trainer config.

    \b
    Examples:
      autotrain pipeline prepare --dataset-path examples/datasets/tiny_shapes --profile Tiny
      autotrain pipeline prepare --dataset-path ~/data/cat --profile FluxLORA --dry-run
    """
    import autotrain.pipeline as sdk

    settings = settings_of(ctx)
    _logging(settings, dry_run)
    with phase_progress() as progress:
        result = sdk.prepare_pipeline(
            dataset_path, profile, dataset_name=dataset_name, min_images=min_images,
            skip_copy=skip_copy, force=force, dry_run=dry_run, settings=settings, progress=progress,
        )  # fmt: skip
    print_prepared(result)
    if result.problems:
        sys.exit(1)


@pipeline_group.command("run")
@click.option(
    "--dataset-path", required=True, type=click.Path(), help="Folder of images with .txt captions."
)
@_profile_option
@_dataset_options
@click.option("--gpu-ids", help='Pin to these GPUs of one host: "1", or "0,1" for data-parallel.')
@click.option("--host", help="The host whose GPUs --gpu-ids names (default: this host).")
@click.option(
    "--monitor", is_flag=True, help="Show live progress until the job ends (Ctrl+C detaches)."
)
@click.option(
    "--immediate", is_flag=True, help="Run all five phases here, in the foreground, without Redis."
)
@_notify_option
@_priority_option
@click.pass_context
def run_cmd(
    ctx,
    dataset_path,
    profile,
    dataset_name,
    min_images,
    skip_copy,
    force,
    dry_run,
    gpu_ids,
    host,
    monitor,
    immediate,
    notify,
    priority,
):
    """Queue one dataset for training (all five phases) and print its job id.

    \b
    Examples:
      autotrain pipeline run --dataset-path examples/datasets/tiny_shapes --profile Tiny --monitor
      autotrain pipeline run --dataset-path ~/data/cat --profile FluxLORA --gpu-ids 1
      autotrain pipeline run --dataset-path ~/data/cat --profile FluxLORA --gpu-ids 0,1 --host gpubox2
      autotrain pipeline run --dataset-path ~/data/cat --profile Tiny --immediate
      autotrain pipeline run --dataset-path ~/data/cat --profile FluxLORA --notify ntfy://mytopic
    """
    import autotrain.pipeline as sdk

    settings = settings_of(ctx)
    ids = _gpu_ids(gpu_ids)
    if host and not ids:
        raise click.BadParameter(
            "--host only applies together with --gpu-ids.", param_hint="--host"
        )
    if dry_run:
        result = sdk.prepare_pipeline(
            dataset_path, profile, dataset_name=dataset_name, min_images=min_images,
            skip_copy=skip_copy, force=force, dry_run=True, settings=settings,
        )  # fmt: skip
        print_prepared(result)
        sys.exit(1 if result.problems else 0)
    _logging(settings, False)
    if immediate:
        try:
            result = _run_immediate(
                dataset_path, profile, dataset_name, min_images, ids, skip_copy, force, settings
            )
        except KeyboardInterrupt:
            err_console.print("\nInterrupted: the trainer was stopped; nothing is left running.")
            sys.exit(INTERRUPTED)
        console.print(
            f"\n[green]Succeeded.[/] Weights: {literal(result.manifest['weights'][0]['path'])}"
        )
        manifest = settings.workspace / "output" / result.spec.name / "run.json"
        console.print(f"Run manifest: {literal(manifest)}")
        return
    sdk.check_dataset(dataset_path, profile, dataset_name=dataset_name, gpu_ids=ids or [],
                      host=host, notify_urls=list(notify), priority=priority,
                      settings=settings)  # fmt: skip  # before a cluster is started for it
    started = _ensure_up(settings)
    with phase_progress() as progress:  # with storage_url: validated, staged, uploaded here
        job = sdk.run_pipeline(
            dataset_path, profile, dataset_name=dataset_name, min_images=min_images, gpu_ids=ids,
            host=host, skip_copy=skip_copy, force=force, settings=settings, precheck=False,
            notify_urls=list(notify), priority=priority, progress=progress,
        )  # fmt: skip
    console.print(f"Queued job [bold]{job.id}[/] ({literal(job.name)}, {literal(job.profile)}).")
    _say_what_was_uploaded(job.id, settings)
    if variant := sdk.starting_variant(job, settings):
        err_console.print(f"[yellow]Note:[/] no GPU of the fleet holds {literal(job.profile)} as is; "
                          f"it starts with {literal(variant.name)} ({variant.vram_gb:g} GiB).", soft_wrap=True)  # fmt: skip
    _warn_if_nobody_consumes(settings, job.queue, just_started=started)
    if monitor:
        from autotrain.cli.train import monitor_job

        sys.exit(monitor_job(settings, job.id))
    console.print(f"Watch it: autotrain train monitor --job {job.id}")


def _say_what_was_uploaded(job_id: str, settings) -> None:
    """With storage_url: what sending the dataset to the store cost (nothing, when unchanged)."""
    if not settings.storage_url:
        return
    from autotrain.storage.objects import Traffic
    from autotrain.transfer import job_storage

    submit = (job_storage(job_id, settings=settings) or {}).get("phases", {}).get("submit")
    if submit is not None:
        traffic = Traffic.from_dict(submit)
        console.print(
            f"Dataset in the store {literal(settings.storage_url)}: "
            f"{traffic.uploaded_files} files uploaded ({traffic.uploaded_bytes / 1e6:.1f} MB), "
            "the rest already there."
        )


@pipeline_group.command("batch")
@click.option(
    "--datasets-dir", type=click.Path(), help="Every subfolder holding images is a dataset."
)
@click.option("--dataset-paths", help='Comma-separated dataset folders: "a,b".')
@_profile_option
@click.option("--min-images", type=click.IntRange(0), default=1, show_default=True)
@click.option(
    "--skip-copy", is_flag=True, help="Reuse existing staged copies that match their source."
)
@click.option("--force", is_flag=True, help="Replace existing staged copies.")
@click.option(
    "--dry-run", is_flag=True, help="Print what would be done for each dataset; change nothing."
)
@click.option(
    "--prepare-only", is_flag=True, help="Run phases 1-3 here for each dataset; queue nothing."
)
@click.option(
    "--max-concurrent",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="At most this many of the batch's jobs train at once.",
)
@click.option("--gpu-ids", help="Pin every job of the batch to these GPUs of this host.")
@click.option("--name", "batch_name", help="A name for the batch (default: the datasets folder's).")
@_notify_option
@_priority_option
@click.option(
    "--monitor", is_flag=True, help="Show the batch view until all jobs end (Ctrl+C detaches)."
)
@click.pass_context
def batch_cmd(ctx, datasets_dir, dataset_paths, profile, min_images, skip_copy, force, dry_run, prepare_only,
              max_concurrent, gpu_ids, batch_name, notify, priority, monitor):  # fmt: skip
    """One job per dataset; a dataset that fails does not stop the others.

    \b
    Examples:
      autotrain pipeline batch --datasets-dir ~/datasets --profile FluxLORA --max-concurrent 2 --monitor
      autotrain pipeline batch --dataset-paths "a,b" --profile Tiny --prepare-only
      autotrain pipeline batch --datasets-dir ~/datasets --profile SDXL --dry-run
      autotrain pipeline batch --datasets-dir ~/datasets --profile Tiny --notify json://localhost:8000/hook
    """
    import autotrain.pipeline as sdk

    settings = settings_of(ctx)
    selection = {"datasets_dir": datasets_dir, "dataset_paths": dataset_paths}
    options = {"min_images": min_images, "skip_copy": skip_copy, "force": force}
    if dry_run or prepare_only:
        _logging(settings, dry_run)
        with phase_progress() as progress:
            result = sdk.prepare_batch(
                profile,
                dry_run=dry_run,
                settings=settings,
                progress=progress,
                **selection,
                **options,
            )
        for prepared in result.prepared:
            console.rule(literal(prepared.spec.name))
            if prepared.ok:
                print_prepared(prepared)
            else:
                err_console.print(f"[bold red]Error:[/] {literal(prepared.error)}", soft_wrap=True)
        failed = [p for p in result.prepared if not p.ok or p.problems]
        console.print(f"{len(result.prepared) - len(failed)} prepared, {len(failed)} failed.")
        sys.exit(1 if failed else 0)
    _logging(settings, False)
    _ensure_up(settings)
    result = sdk.run_batch_pipeline(
        profile,
        max_concurrent=max_concurrent,
        batch_name=batch_name,
        notify_urls=list(notify),
        priority=priority,
        settings=settings,
        gpu_ids=_gpu_ids(gpu_ids),
        **selection,
        **options,
    )
    console.print(
        f"Queued batch [bold]{result.batch_id}[/] ({literal(result.name)}): {len(result.jobs)} "
        f"jobs, at most {max_concurrent} training at once."
    )
    for job in result.jobs:
        console.print(f"  {job.id}  {literal(job.name)}")
    for dataset, why in result.rejected:
        err_console.print("[red]Not queued[/]", end=" ")
        err_console.print(f"{dataset}: {why}", markup=False, soft_wrap=True)
    if not result.jobs:
        sys.exit(1)
    attach = f"autotrain train monitor --batch {result.batch_id}"
    if monitor:
        from autotrain.cli.train import monitor_batch

        console.print(f"Ctrl+C detaches; re-attach with: {attach}")
        sys.exit(monitor_batch(settings, result.batch_id))
    console.print(f"Watch them: {attach}  (or autotrain train list --batch {result.batch_id})")


def _run_immediate(
    dataset_path, profile, dataset_name, min_images, ids, skip_copy, force, settings
):
    """All five phases in this process, the trainer's output streamed to the terminal."""
    import autotrain.pipeline as sdk

    with phase_progress(live=False) as progress:
        return sdk.run_pipeline(
            dataset_path, profile, dataset_name=dataset_name, min_images=min_images, gpu_ids=ids,
            skip_copy=skip_copy, force=force, immediate=True, settings=settings, progress=progress,
            on_output=lambda text: (sys.stdout.write(text), sys.stdout.flush()),
        )  # fmt: skip


def _ensure_up(settings) -> bool:
    """Start the local cluster unless Redis is shared or it runs; True when it started one."""
    from autotrain.hosts import ensure_local_cluster

    return ensure_local_cluster(
        settings=settings, say=lambda m: err_console.print(f"[dim]{literal(m)}[/]")
    )


def _warn_if_nobody_consumes(settings, queue: str | None, just_started: bool = False) -> None:
    """A job no live worker will take would wait silently; say so (not for workers starting)."""
    import redis

    from autotrain.status import fleet_workers

    try:
        workers = fleet_workers(settings=settings)
    except redis.RedisError:
        return  # the job is queued; a Redis blip right now must not read as a failure
    if not workers and not just_started:
        err_console.print(
            "[yellow]Note:[/] no live worker is connected to this Redis: the job waits until one "
            "starts (`autotrain worker` on a GPU host, or `autotrain up` here; see `autotrain "
            "status`)."
        )
    elif queue and workers and not any(queue in w.queues for w in workers):
        err_console.print(
            f"[yellow]Note:[/] no live worker consumes queue {literal(repr(queue))} yet; the job waits until "
            "`autotrain worker` runs there (see `autotrain status`)."
        )


def _gpu_ids(value: str | None) -> list[int]:
    from autotrain.spec import parse_gpu_ids

    try:
        return parse_gpu_ids(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--gpu-ids") from exc


def _logging(settings, dry_run: bool) -> None:
    if not dry_run:  # a dry run leaves the workspace untouched, logs included
        from autotrain.logs import setup_logging

        setup_logging(settings.workspace)


COMMANDS = [pipeline_group]
