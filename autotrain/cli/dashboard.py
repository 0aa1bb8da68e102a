"""`autotrain dashboard`: the web page of jobs, batches and the fleet."""

from __future__ import annotations

import os
import stat
import sys

import click

from autotrain.cli.common import console, settings_of
from autotrain.errors import AutotrainError

__all__ = ["COMMANDS"]


@click.command("dashboard")
@click.option("--address", help="Listen address (default: dashboard_address, 127.0.0.1).")
@click.option("--port", type=int, help="Port (default: dashboard_port, 8642).")
@click.pass_context
def dashboard_cmd(ctx, address, port) -> None:
    """Serve the dashboard: every job live, loss curves, samples, batches side by side, the fleet.

    It reads the same Redis and workspace as the CLI. It prints the link to open: it carries
    the dashboard's token (AUTOTRAIN_DASHBOARD_TOKEN, else one made on the first start and kept
    in .autotrain/dashboard.token). Beyond 127.0.0.1 it needs a credential you set:
    AUTOTRAIN_DASHBOARD_TOKEN or the Flower password.

    \b
    Examples:
      autotrain dashboard                                    # http://127.0.0.1:8642
      AUTOTRAIN_DASHBOARD_TOKEN=s3cret autotrain dashboard --address 0.0.0.0
      autotrain up --dashboard                               # with the local cluster
    """
    from autotrain.dashboard import serve
    from autotrain.dashboard.access import needs_credential, open_url

    settings = settings_of(ctx)
    address, port = address or settings.dashboard_address, port or settings.dashboard_port
    if why := needs_credential(settings, address):
        raise AutotrainError(why)
    _private_log()
    console.print(f"Dashboard on {open_url(settings, address, port)} (Ctrl+C stops it)",
                  soft_wrap=True)  # fmt: skip
    serve(settings, address, port)


def _private_log() -> None:
    """The link printed carries the token: a log file it goes to (`up --dashboard` sends it to
    .autotrain/dashboard.log) is made readable by its owner only."""
    try:
        info = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError):
        return
    if stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid():
        os.fchmod(sys.stdout.fileno(), stat.S_IMODE(info.st_mode) & 0o600)


COMMANDS = [dashboard_cmd]
