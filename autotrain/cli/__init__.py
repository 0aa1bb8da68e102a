"""The `autotrain` command: a thin layer over the SDK (autotrain.pipeline and friends)."""

from __future__ import annotations

import logging
import os
import sys

import click
from rich.console import Console

from autotrain.errors import AutotrainError
from autotrain.settings import Settings, load_settings

__all__ = ["main", "console", "err_console", "settings_of", "FAILED", "USAGE", "INTERRUPTED"]

# In pipes and logs rich would assume 80 columns and squeeze tables; use a wide default there.
_width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "200"))
console = Console(highlight=False, width=_width)
err_console = Console(stderr=True, highlight=False, width=_width)


# Exit codes, as the README lists them: 0 success; 1 an error, a refused input or a job that did
# not succeed; 2 a usage error (click's own); 130 interrupted (Ctrl+C).
FAILED, USAGE, INTERRUPTED = 1, 2, 130


class _Group(click.Group):
    """Turns AutotrainError into a one-line message and exit code 1 instead of a traceback, and
    Ctrl+C into 130 (click's own handler would say "Aborted!" and exit 1)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            err_console.print("\nInterrupted.")
            sys.exit(INTERRUPTED)
        except AutotrainError as exc:
            err_console.print(f"[bold red]Error:[/] {exc}", soft_wrap=True)
            # Into logs/autotrain_errors.log when this command writes logs (a dry run does not).
            if logging.getLogger("autotrain").handlers:
                logging.getLogger("autotrain.errors").error("%s", exc)
            sys.exit(FAILED)


def settings_of(ctx: click.Context) -> Settings:
    """The effective settings, loaded once per command from the chosen workspace."""
    root = ctx.find_root()
    if "settings" not in root.meta:
        root.meta["settings"] = load_settings(root.params.get("workspace"))
    return root.meta["settings"]


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--workspace",
    type=click.Path(file_okay=False),
    help="Workspace root (default: $AUTOTRAIN_WORKSPACE or the current directory).",
)
@click.version_option(package_name="autotrain")
def main(workspace: str | None) -> None:
    """Queue folders of captioned images; get trained diffusion models back.

    \b
    Examples:
      autotrain pipeline run --dataset-path examples/datasets/tiny_shapes --profile Tiny --monitor
      autotrain pipeline batch --datasets-dir ~/datasets --profile FluxLORA --max-concurrent 2
      autotrain train list
    """
    if workspace:
        # Child processes (workers, trainers) inherit the same workspace.
        os.environ["AUTOTRAIN_WORKSPACE"] = os.path.abspath(workspace)


from autotrain.cli import cluster, info, pipeline, train  # noqa: E402

for _module in (pipeline, train, info, cluster):
    for _command in _module.COMMANDS:
        main.add_command(_command)
