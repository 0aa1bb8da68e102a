"""The dashboard's ASGI app: four server-rendered pages, one live channel, and the buttons.

Pages are Jinja templates filled from autotrain.dashboard.views. `/events` is a server-sent
event stream per page: it sends the page's data again whenever it changes (a job page follows
its job's progress stream, so a step shows within a blocking read of the trainer printing it).
A Redis that goes away makes the stream say `reconnecting` until it is back; the browser's
EventSource reconnects by itself if the server restarts. Buttons POST to `/jobs/<id>/<action>`
and call the same SDK functions as `autotrain train cancel/retry/move/hold/release`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import redis
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from autotrain import control
from autotrain.dashboard import files, views
from autotrain.dashboard.access import AccessGuard
from autotrain.errors import AutotrainError, RedisUnavailable
from autotrain.settings import Settings
from autotrain.workspace import Workspace

__all__ = ["create_app"]

HERE = Path(__file__).parent


def create_app(settings: Settings) -> Starlette:
    """The dashboard for this workspace and its Redis (the embedded one, or `redis_url`)."""
    templates = Environment(loader=FileSystemLoader(HERE / "templates"),
                            autoescape=select_autoescape(["html"]))  # fmt: skip
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
    app.add_middleware(AccessGuard, settings=settings)
    return app


class _Pages:
    def __init__(self, settings: Settings, templates: Environment) -> None:
        self.settings, self.templates = settings, templates

    def _render(self, request: Request, name: str, data: dict[str, Any], page: str,
                key: str = "") -> HTMLResponse:  # fmt: skip
        html = self.templates.get_template(name).render(
            **data, page=page, key=key, data_json=json.dumps(data),
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
        return self._render(request, "job.html", await self._data("job", job_id), "job", job_id)

    async def batch(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        data = await self._data("batch", batch_id)
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
        filters = [q.get(f, "") for f in ("state", "batch", "profile")] if page == "jobs" else []
        return StreamingResponse(self._stream(request, page, key, filters),
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
        try:
            job = await run_in_threadpool(self._job, job_id)
        except AutotrainError:
            return Response("no such job", status_code=404)
        path = files.sample_file(Workspace(self.settings.workspace), job, name)
        if path is None:
            return Response("no such sample", status_code=404)
        return FileResponse(path, headers={"Cache-Control": "max-age=86400"})

    async def act(self, request: Request) -> Response:
        job_id, action = request.path_params["job_id"], request.path_params["action"]
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
