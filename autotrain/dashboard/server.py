"""The dashboard's ASGI app: four server-rendered pages, one live channel, and the buttons.

Pages are Jinja templates filled from autotrain.dashboard.views. `/events` is a server-sent
event stream per page: it sends the page's data again whenever it changes (a job page follows
its job's progress stream, so a step shows within a blocking read of the trainer printing it).
A Redis that goes away makes the stream say `reconnecting` until it is back; the browser's
EventSource reconnects by itself if the server restarts. Buttons POST to `/jobs/<id>/<action>`
and call the same SDK functions as `autotrain train cancel/retry/move/hold/release`.

What a request names is checked before anything is read: job and batch ids against ID_PATTERN
(an id is never another Redis key), files through autotrain.dashboard.files. Live channels are
capped per client and in total (STREAMS_PER_CLIENT, STREAMS_IN_ALL): each holds a connection and
a thread's turn. Who may ask at all is autotrain.dashboard.access's business, and which Host
names the server answers to Starlette's TrustedHostMiddleware's (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import re
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from autotrain import control
from autotrain.dashboard import files, views
from autotrain.dashboard.access import AccessGuard, SecurityHeaders
from autotrain.errors import AmbiguousJobId, AutotrainError, NoSuchJob, RedisUnavailable
from autotrain.settings import Settings
from autotrain.workspace import Workspace

__all__ = ["create_app", "ID_PATTERN", "STREAMS_PER_CLIENT", "STREAMS_IN_ALL"]

HERE = Path(__file__).parent
# Job ids (`20261206-033000-1a2b3c`, or a prefix) and batch ids (`b20261206-...`)
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
STREAMS_PER_CLIENT = 8
STREAMS_IN_ALL = 64


def create_app(settings: Settings, address: str | None = None, port: int | None = None,
               ) -> Starlette:  # fmt: skip
    """The dashboard for this workspace and its Redis (the embedded one, or `redis_url`),
    listening on `address` and `port` (the settings' by default)."""
    address = address or settings.dashboard_address
    templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                            autoescape=select_autoescape(["html"]))  # fmt: skip
    # page data in the order the live channel sends it
    templates.policies["json.dumps_kwargs"] = {"sort_keys": False}
    pages = _Pages(settings, templates)
    routes = [
        Route("/", pages.jobs),
        Route("/jobs/{job_id}", pages.job),
        Route("/batches/{batch_id}", pages.batch),
        Route("/fleet", pages.fleet),
        Route("/events", pages.events),
        Route("/jobs/{job_id}/samples/{name}", pages.sample),
        Route("/jobs/{job_id}/{action}", pages.act, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes)
    # the last added runs first: headers on every answer, then the Host check, then the credential
    app.add_middleware(AccessGuard, settings=settings, port=port or settings.dashboard_port)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.trusted_hosts(address))
    app.add_middleware(SecurityHeaders)
    return app


def _not_found(what: str) -> PlainTextResponse:
    return PlainTextResponse(what, status_code=404)


def _not_an_id(kind: str, value: str) -> PlainTextResponse | None:
    """A 404 for a job or batch id that cannot be one (checked before any Redis read)."""
    if ID_PATTERN.fullmatch(value):
        return None
    return _not_found(f"No {kind} {value[:80]!r}: not a {kind} id.")


class _CappedStream(StreamingResponse):
    """A live channel that holds one of its client's slots (and one of all) while it is open."""

    held: Counter[str] = Counter()

    def __init__(self, client: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.client = client

    @classmethod
    def refusal(cls, client: str) -> Response | None:
        """A 503 that says why when `client` (or everyone together) has all the channels allowed."""
        if cls.held[client] >= STREAMS_PER_CLIENT:
            why = f"this client has {STREAMS_PER_CLIENT} live pages open already"
        elif sum(cls.held.values()) >= STREAMS_IN_ALL:
            why = f"{STREAMS_IN_ALL} live pages are open already"
        else:
            return None
        return PlainTextResponse(f"Too many live pages: {why}; close some and reload.",
                                 status_code=503, headers={"Retry-After": "10"})  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.held[self.client] += 1
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.held[self.client] -= 1
            if self.held[self.client] <= 0:
                del self.held[self.client]


class _Pages:
    def __init__(self, settings: Settings, templates: Environment) -> None:
        self.settings, self.templates = settings, templates

    def _render(self, request: Request, name: str, data: dict[str, Any], page: str,
                key: str = "") -> HTMLResponse:  # fmt: skip
        # `initial` goes through Jinja's tojson, which escapes <, >, & and ' (no `</script>`)
        html = self.templates.get_template(name).render(
            **data, page=page, key=key, initial=data,
            csrf=getattr(request.state, "csrf", ""), path=request.url.path)  # fmt: skip
        return HTMLResponse(html)

    async def jobs(self, request: Request) -> Response:
        q = request.query_params
        data = await self._data(
            "jobs", "", q.get("state", ""), q.get("batch", ""), q.get("profile", "")
        )
        data["states"] = views.FILTER_STATES
        query = (
            f"state={q.get('state', '')}&batch={q.get('batch', '')}&profile={q.get('profile', '')}"
        )
        return self._render(request, "jobs.html", data, "jobs", query)

    async def job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if refused := _not_an_id("job", job_id):
            return refused
        try:
            data = await self._data("job", job_id)
        except (NoSuchJob, AmbiguousJobId) as exc:
            return _not_found(str(exc))
        return self._render(request, "job.html", data, "job", job_id)

    async def batch(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        if refused := _not_an_id("batch", batch_id):
            return refused
        data = await self._data("batch", batch_id)
        if not data["jobs"]:
            return _not_found(f"No batch {batch_id!r}: it has no jobs.")
        return self._render(request, "batch.html", data, "batch", batch_id)

    async def fleet(self, request: Request) -> Response:
        return self._render(request, "fleet.html", await self._data("fleet", ""), "fleet")

    async def _data(self, page: str, key: str, *filters: str) -> dict:
        return await run_in_threadpool(self._build, page, key, *filters)

    def _build(self, page: str, key: str, *filters: str) -> dict:
        if page == "jobs":
            return views.jobs_page(self.settings, *filters)
        if page == "job":
            return views.job_page(self.settings, key)
        if page == "batch":
            return views.batch_page(self.settings, key)
        return views.fleet_page(self.settings)

    async def events(self, request: Request) -> Response:
        q = request.query_params
        page, key = q.get("page", "jobs"), q.get("key", "")
        if page not in ("jobs", "job", "batch", "fleet"):
            return _not_found(f"No page {page[:80]!r}: jobs, job, batch or fleet.")
        if page in ("job", "batch") and (refused := _not_an_id(page, key)):
            return refused
        client = request.client.host if request.client else ""
        if refused := _CappedStream.refusal(client):
            return refused
        filters = [q.get(f, "") for f in ("state", "batch", "profile")] if page == "jobs" else []
        return _CappedStream(client, self._stream(request, page, key, filters),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})  # fmt: skip

    async def _stream(self, request: Request, page: str, key: str, filters: list[str]):
        last, down, after = None, False, "$"
        yield "retry: 2000\n\n"
        while not await request.is_disconnected():
            try:
                if page == "job":  # wake on the job's next progress event, not on a timer
                    after = await run_in_threadpool(self._wait_for_progress, key, after)
                data = await run_in_threadpool(self._build, page, key, *filters)
            except (redis.RedisError, RedisUnavailable):
                if not down:
                    yield "event: reconnecting\ndata: {}\n\n"
                down = True
                await asyncio.sleep(1.0)
                continue
            except AutotrainError as exc:
                yield f"event: gone\ndata: {json.dumps(str(exc))}\n\n"
                return
            if down:
                down, last = False, None
                yield "event: connected\ndata: {}\n\n"
            text = json.dumps(data)
            if text != last:
                last = text
                yield f"data: {text}\n\n"
            if page != "job":
                await asyncio.sleep(0.5)

    def _wait_for_progress(self, job_id: str, after: str) -> str:
        """Block up to a second for the job's next progress event; the id to read from next."""
        return control.wait_for_progress(job_id, after, block_ms=1000, settings=self.settings)

    async def sample(self, request: Request) -> Response:
        job_id, name = request.path_params["job_id"], request.path_params["name"]
        if refused := _not_an_id("job", job_id):
            return refused
        try:
            job = await run_in_threadpool(self._job, job_id)
        except AutotrainError:
            return _not_found("No such job.")
        workspace = Workspace(self.settings.workspace)
        image = await run_in_threadpool(files.sample_bytes, workspace, job, name)
        if image is None:
            return _not_found("No such sample.")
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Response(image, media_type=kind, headers={"Cache-Control": "max-age=86400"})

    async def act(self, request: Request) -> Response:
        job_id, action = request.path_params["job_id"], request.path_params["action"]
        if not ID_PATTERN.fullmatch(job_id):
            return JSONResponse({"error": "not a job id"}, status_code=404)
        try:
            message = await run_in_threadpool(self._act, job_id, action)
        except AutotrainError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except KeyError:
            return JSONResponse({"error": f"unknown action {action!r}"}, status_code=404)
        return JSONResponse({"message": message})

    def _job(self, job_id: str):
        return control.get_job(job_id, settings=self.settings)

    def _act(self, job_id: str, action: str) -> str:
        settings = self.settings
        do = {
            "cancel": lambda: control.cancel_job(job_id, settings=settings),
            "retry": lambda: control.retry_job(job_id, settings=settings),
            "hold": lambda: control.hold_job(job_id, settings=settings),
            "release": lambda: control.release_job(job_id, settings=settings),
            "top": lambda: control.move_job(job_id, "top", settings=settings),
            "bottom": lambda: control.move_job(job_id, "bottom", settings=settings),
        }[action]
        job = do()
        return f"{action}: job {job.id} is {job.state.value}"
