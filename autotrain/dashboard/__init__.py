"""autotrain's own web page: jobs, their live progress, loss curves and samples, batches side by
side, and the fleet. A small Starlette app on uvicorn, rendered on the server from the same SDK
the CLI uses; see autotrain.dashboard.server for the pages and autotrain.dashboard.access for who
may use them."""

from __future__ import annotations

from autotrain.errors import AutotrainError
from autotrain.settings import Settings

__all__ = ["serve"]


def serve(settings: Settings, address: str | None = None, port: int | None = None) -> None:
    """Serve the dashboard until interrupted; refuses a non-loopback address without a credential."""
    import uvicorn

    from autotrain.dashboard.access import needs_credential
    from autotrain.dashboard.server import create_app

    address = address or settings.dashboard_address
    port = port or settings.dashboard_port
    if why := needs_credential(settings, address):
        raise AutotrainError(why)
    uvicorn.run(create_app(settings, address, port), host=address, port=port, log_level="warning",
                timeout_graceful_shutdown=2)  # fmt: skip
