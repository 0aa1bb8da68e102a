"""The `autotrain` command: a thin layer over the SDK (autotrain.pipeline and friends)."""

from __future__ import annotations

import os

import click

from autotrain.cli.common import CommandGroup

__all__ = ["main"]


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


from autotrain.cli import cluster, dashboard, info, pipeline, pull, train  # noqa: E402

for _module in (pipeline, train, pull, info, cluster, dashboard):
    for _command in _module.COMMANDS:
        main.add_command(_command)
