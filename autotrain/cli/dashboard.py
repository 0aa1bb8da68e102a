"""`autotrain dashboard`: the web page of jobs, batches and the fleet."""

from __future__ import annotations

import click

from autotrain.cli.common import console, settings_of

__all__ = ["COMMANDS"]


@click.command("dashboard")
@click.option("--address", help="Listen address (default: dashboard_address, 127.0.0.1).")
@click.option("--port", type=int, help="Port (default: dashboard_port, 8642).")
@click.pass_context
def dashboard_cmd(ctx, address, port) -> None:
    """Serve the dashboard: every job live, loss curves, samples, batches side by side, the fleet.

    It reads the same Redis and workspace as the CLI. Beyond 127.0.0.1 it needs a credential:
    AUTOTRAIN_DASHBOARD_TOKEN (open the page once with ?token=...) or the Flower password.

    \b
    Examples:
      autotrain dashboard                                    # http://127.0.0.1:8642
      AUTOTRAIN_DASHBOARD_TOKEN=s3cret autotrain dashboard --address 0.0.0.0
      autotrain up --dashboard                               # with the local cluster
    """
    from autotrain.dashboard import serve

    settings = settings_of(ctx)
    shown = address or settings.dashboard_address
    console.print(
        f"Dashboard on http://{shown}:{port or settings.dashboard_port} (Ctrl+C stops it)"
    )
    serve(settings, address, port)


COMMANDS = [dashboard_cmd]
