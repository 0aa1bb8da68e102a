"""The Flower process `autotrain flower` execs: Celery's own `flower` command, with two guards
Flower lacks.

- `/metrics` (Prometheus) asks for Flower's credential like every other page, unless
  `flower_public_metrics` opts out; `/healthcheck` stays open, it says only "OK".
- A request whose Host header is not the address Flower serves, a loopback name or one of
  `allowed_hosts` gets 400: a page of another origin that re-binds its DNS name to 127.0.0.1
  (DNS rebinding) cannot drive a password-less Flower on loopback.

Run as `python -m autotrain.cli.flower_server <celery flower arguments>`.
"""

from __future__ import annotations

import sys

__all__ = ["guard_flower", "main"]


def guard_flower(trusted_hosts: list[str], public_metrics: bool) -> None:
    """Patch Flower's handlers in this process before Celery starts it."""
    import tornado.web
    from flower.api import BaseApiHandler
    from flower.views import BaseHandler, monitor

    if not public_metrics:
        monitor.Metrics.get = tornado.web.authenticated(monitor.Metrics.get)
    allowed = {name.lower() for name in trusted_hosts}
    # Every Flower page derives from BaseHandler, every API handler from BaseApiHandler, whose
    # own `prepare` does not call BaseHandler's: both are guarded.
    for handler in (BaseHandler, BaseApiHandler):
        handler.prepare = _checking_host(handler.prepare, allowed)


def _checking_host(prepare, allowed: set[str]):
    import tornado.web

    def checked(self):
        host = self.request.host.lower()
        name = host if host.startswith("[") and host.endswith("]") else host.rsplit(":", 1)[0]
        if host not in allowed and name not in allowed:
            raise tornado.web.HTTPError(400, "Invalid host header")
        return prepare(self)

    return checked


def main(argv: list[str]) -> None:
    from celery.bin.celery import main as celery_main

    from autotrain.settings import load_settings

    settings = load_settings()
    address = next((a.split("=", 1)[1] for a in argv if a.startswith("--address=")), "")
    guard_flower(settings.trusted_hosts(address), settings.flower_public_metrics)
    sys.argv = ["celery", *argv]
    celery_main()


if __name__ == "__main__":
    main(sys.argv[1:])
