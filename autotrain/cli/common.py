"""What every command module shares: the consoles, the exit codes, the settings of a command
and the group that turns an AutotrainError into one line and its exit code."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

import click

from autotrain.errors import (
    AmbiguousJobId,
    AutotrainError,
    JobNotFinal,
    NameInUse,
    NoSuchJob,
    RedisUnavailable,
)

if TYPE_CHECKING:
    from rich.console import Console

    from autotrain.settings import Settings

__all__ = [
    "console",
    "literal",
    "err_console",
    "settings_of",
    "CommandGroup",
    "FAILED",
    "USAGE",
    "INTERRUPTED",
    "EXIT_CODES",
    "exit_code_for",
]


class _LazyConsole:
    """A rich Console made on first use: `--help` and quick commands never import rich.

    Command modules import only click at the top and the rest where a command runs, so that
    `autotrain --help` starts in a fraction of `celery --help` (bench/cli.py).
    """

    def __init__(self, stderr: bool) -> None:
        self._stderr, self._console = stderr, None

    def rich(self) -> Console:
        """The Console itself, for rich objects that take one (Live, Progress)."""
        if self._console is None:
            from rich.console import Console

            # In pipes and logs rich would assume 80 columns and squeeze tables: be wide there.
            width = None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "200"))
            self._console = Console(stderr=self._stderr, highlight=False, width=width)
        return self._console

    def __getattr__(self, name: str):
        return getattr(self.rich(), name)


console: Console = _LazyConsole(stderr=False)  # type: ignore[assignment]
err_console: Console = _LazyConsole(stderr=True)  # type: ignore[assignment]


def literal(value: object) -> str:
    """User text (a path, a dataset or job name, a caption, a job error, a worker or queue name)
    as rich prints it verbatim: `[red]` or `v2[/]` in it is text, never markup. Every value that
    goes into a string rich reads as markup (print, a table cell) passes through here."""
    from rich.markup import escape

    return escape(str(value))


# Exit codes, as the README lists them: 0 success; 1 an error, a refused input or a job that did
# not succeed; 2 a usage error (click's own); 130 interrupted (Ctrl+C).
FAILED, USAGE, INTERRUPTED = 1, 2, 130

# The exit code of each typed error. The README documents 1 for every error, so all map to 1
# today; a command that needs to tell them apart gets its own code here, and a row in the README.
EXIT_CODES: dict[type[AutotrainError], int] = {
    NoSuchJob: FAILED,
    AmbiguousJobId: FAILED,
    NameInUse: FAILED,
    JobNotFinal: FAILED,
    RedisUnavailable: FAILED,
    AutotrainError: FAILED,
}


def exit_code_for(error: AutotrainError) -> int:
    """The exit code of an error: that of its nearest class in EXIT_CODES."""
    for kind in type(error).__mro__:
        if kind in EXIT_CODES:
            return EXIT_CODES[kind]
    return FAILED


class CommandGroup(click.Group):
    """Turns AutotrainError into a one-line message and its exit code (EXIT_CODES) instead of a
    traceback, and
    Ctrl+C into 130 (click's own handler would say "Aborted!" and exit 1)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            err_console.print("\nInterrupted.")
            sys.exit(INTERRUPTED)
        except AutotrainError as exc:
            err_console.print(f"[bold red]Error:[/] {literal(exc)}", soft_wrap=True)
            # Into logs/autotrain_errors.log when this command writes logs (a dry run does not).
            if logging.getLogger("autotrain").handlers:
                logging.getLogger("autotrain.errors").error("%s", exc)
            sys.exit(exit_code_for(exc))


def settings_of(ctx: click.Context) -> Settings:
    """The effective settings, loaded once per command from the chosen workspace."""
    from autotrain.settings import load_settings

    root = ctx.find_root()
    if "settings" not in root.meta:
        root.meta["settings"] = load_settings(root.params.get("workspace"))
    return root.meta["settings"]
