"""What `pipeline prepare`, `run --dry-run` and `batch --prepare-only` print about phases 1-3,
and the progress they show while files are validated and staged."""

from __future__ import annotations

import shlex
from contextlib import contextmanager
from typing import TYPE_CHECKING

from autotrain.cli.common import console, err_console, literal

if TYPE_CHECKING:
    from autotrain.pipeline import PrepareResult

__all__ = ["print_prepared", "phase_progress"]


def print_prepared(result: PrepareResult) -> None:
    """The validation table, staging decision, files and trainer command of phases 1-3."""
    import tomli_w

    from autotrain.datasets.report_view import report_table
    from autotrain.fleet.placement import describe_needs

    console.print(report_table(result.report))
    stage, plan = result.stage, result.plan
    verb = "Would" if result.dry_run else "Did"
    console.print(
        f"[bold]Stage:[/] {stage.action} -> {literal(stage.staged_dir)} ({stage.files_copied} files)"
    )
    for path, reason in stage.skipped[:20]:
        console.print(f"  skip {literal(path)}: {literal(reason)}")
    if len(stage.skipped) > 20:
        console.print(f"  ... and {len(stage.skipped) - 20} more skipped")
    files = [plan.config_path, plan.dataset_config_path, plan.sample_prompts_path]
    console.print(f"[bold]{verb} write:[/]")
    for path in filter(None, files):
        console.print(f"  {literal(path)}")
    if result.dry_run:
        console.rule(literal(plan.config_path.name))
        console.print(tomli_w.dumps(plan.config), markup=False)
        if plan.dataset_config:
            console.rule(literal(plan.dataset_config_path.name))
            console.print(tomli_w.dumps(plan.dataset_config), markup=False)
        console.rule("sample_prompts.txt")
        console.print(plan.sample_prompts, markup=False)
    console.print("[bold]Trainer command:[/]", end=" ")
    console.print(shlex.join(result.command), soft_wrap=True, markup=False)
    console.print(f"[bold]Total training steps:[/] {plan.total_steps}")
    profile = result.profile
    if profile is not None and (needs := describe_needs(profile, plan.config)):
        console.print("[bold]GPU memory:[/]")
        for line in needs:
            console.print(f"  {line}", soft_wrap=True, markup=False)
    if result.problems:  # a dry run planned with <placeholders> for these
        err_console.print(f"[bold red]Problems before this can train ({len(result.problems)}):[/]")
        for problem in result.problems:
            err_console.print(f"  - {problem}", soft_wrap=True, markup=False)


@contextmanager
def phase_progress(live: bool = True):
    """A progress callback for validation and staging: bars on a terminal, sparse lines elsewhere.

    `live=False` keeps to plain lines, for commands that stream other output meanwhile.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
    )

    labels = {
        "validate": "Validating (full decode)",
        "stage": "Staging",
        "upload": "Uploading to the store",
    }
    if live and err_console.is_terminal:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=err_console.rich(), transient=True,
        ) as bars:  # fmt: skip
            tasks: dict[str, TaskID] = {}

            def update(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bars.add_task(labels.get(phase, phase), total=total)
                bars.update(tasks[phase], completed=done)

            yield update
        return
    shown: dict[str, int] = {}

    def report(phase: str, done: int, total: int) -> None:
        quarter = done * 4 // total if total >= 500 else 4 * (done == total)
        if total >= 500 and quarter > shown.get(phase, 0):
            shown[phase] = quarter
            err_console.print(f"{labels.get(phase, phase)}: {done}/{total} files")

    yield report
