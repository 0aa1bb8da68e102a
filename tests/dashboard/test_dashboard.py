"""The dashboard against a real cluster: real redis-server, a real Celery worker, the Tiny trainer,
the dashboard as its own uvicorn process; pages in Debian's chromium driven by Playwright, and
over plain HTTP (the credential, the CSRF guard, the live channel across a Redis restart).

The browser test skips, saying why, where chromium or Playwright is missing; the HTTP tests
check the same facts without it.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from autotrain.dashboard.access import session_cookie, session_value
from autotrain.jobs.job import JobState
from tests.conftest import (
    REPO,
    copy_example,
    free_port,
    pids_of,
    redis_server_command,
    wait_for,
    write_tiny_profile,
)

TOKEN = "board-test-token"
SCREENSHOTS = Path(__file__).resolve().parent.parent.parent / "docs" / "screenshots"
STANDIN_NVML = Path(__file__).resolve().parent.parent / "standins" / "nvml"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Board:
    def __init__(self, cluster, port: int) -> None:
        self.cluster, self.port, self.url = cluster, port, f"http://127.0.0.1:{port}"
        log = open(cluster.root / "dashboard.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autotrain.cli", "dashboard", "--port", str(port)],
            env=cluster.env, cwd=cluster.root, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)  # fmt: skip
        cluster.workers.append(self.proc)
        wait_for(lambda: self.status("/") is not None, 30, "the dashboard to answer")

    @property
    def token(self) -> str:
        """The token set for it, else the one it made on its first start."""
        given = self.cluster.env.get("AUTOTRAIN_DASHBOARD_TOKEN")
        return given or (self.cluster.root / ".autotrain" / "dashboard.token").read_text().strip()

    @property
    def session(self) -> str:
        """The Cookie header of a signed-in browser."""
        return f"{session_cookie(self.port)}={session_value(self.token)}"

    def status(self, path: str, **headers: str) -> int | None:
        request = urllib.request.Request(self.url + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as reply:
                return reply.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None


def _profile(cluster, name: str, steps: int, sample_every: int) -> str:
    return write_tiny_profile(cluster.root, name, max_train_steps=steps,
                              save_every_n_steps=steps, sample_every_n_steps=sample_every)  # fmt: skip


@pytest.fixture
def board(cluster):
    cluster.env.update(AUTOTRAIN_DASHBOARD_TOKEN=TOKEN, AUTOTRAIN_TINY_STEP_DELAY="0.08")
    cluster.start_worker("h1")
    return Board(cluster, free_port())


@pytest.mark.slow
def test_the_pages_follow_a_batch_live_in_a_browser(board, tmp_path):
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    cluster = board.cluster
    profile = _profile(cluster, "TinyBoard", 80, 20)
    sets = tmp_path / "sets"
    for name in ("alpha", "beta"):
        copy_example(sets, name)
    queued = cluster.cli("pipeline", "batch", "--datasets-dir", str(sets), "--profile", profile,
                         "--name", "night", check=True)  # fmt: skip
    store = cluster.store()
    batch_id = store.list()[0].spec.batch_id
    first = next(j for j in reversed(store.list(batch_id=batch_id)))
    assert queued.returncode == 0
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    args = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        try:
            stranger = browser.new_context().new_page()
            assert stranger.goto(board.url + "/").status == 401  # no credential, no page

            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            page.goto(f"{board.url}/?token={TOKEN}")  # the token becomes a cookie
            assert "token=" not in page.url
            row = f'tr[data-id="{first.id}"]'
            page.wait_for_selector(f"{row} .state.training", timeout=90_000)
            width = lambda: page.eval_on_selector(f"{row} .fill", "e => e.style.width")  # noqa: E731
            before = width()
            wait_for(lambda: width() != before, 30, "the jobs page's bar to move")
            assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
            assert page.evaluate("window.__loadedAt") == page.evaluate("performance.timeOrigin")
            page.screenshot(path=str(SCREENSHOTS / "dashboard-jobs.png"))

            page.goto(f"{board.url}/jobs/{first.id}")
            points = lambda: int(page.eval_on_selector("#loss-curve", "e => e.dataset.points || 0"))  # noqa: E731
            wait_for(lambda: points() > 0, 30, "the loss curve's first points")
            seen = points()
            wait_for(lambda: points() > seen + 5, 30, "the loss curve to grow while it trains")
            page.wait_for_selector("#gallery img", timeout=60_000)
            wait_for(lambda: page.evaluate(
                "[...document.querySelectorAll('#gallery img')].every(i => i.naturalWidth > 0)"), 10,
                "the samples to load")  # fmt: skip
            wait_for(lambda: store.get(first.id).is_final, 90, "the first job to end")
            page.wait_for_selector("#state:text('succeeded')", timeout=15_000)
            page.screenshot(path=str(SCREENSHOTS / "dashboard-job.png"), full_page=True)
            shown = page.evaluate("window.__stepShown")
            _report_latency(cluster, first.name, shown)

            wait_for(lambda: all(j.is_final for j in store.list(batch_id=batch_id)), 120,
                     "the batch to end")  # fmt: skip
            page.goto(f"{board.url}/batches/{batch_id}")
            page.wait_for_selector("#sheet .sheet-row img", timeout=15_000)

            def loaded_per_row() -> list[int]:
                return page.eval_on_selector_all("#sheet .sheet-row", "rows => rows.map(r => [...r."
                                                 "querySelectorAll('img')].filter(i => i.complete "
                                                 "&& i.naturalWidth > 0).length)")  # fmt: skip

            wait_for(lambda: (rows := loaded_per_row()) and all(n == 2 for n in rows), 15,
                     "one loaded sample per job in every prompt row of the contact sheet")  # fmt: skip
            rows = page.eval_on_selector_all("#sheet .sheet-row", "rows => rows.map(r => "
                                             "r.querySelectorAll('img').length)")  # fmt: skip
            assert rows and all(n == 2 for n in rows), f"one sample per job per prompt: {rows}"
            assert "2 of 2 jobs finished" in page.inner_text("main")
            page.screenshot(path=str(SCREENSHOTS / "dashboard-batch.png"), full_page=True)

            _start_nvml_host(cluster, tmp_path)
            page.goto(f"{board.url}/fleet")
            page.wait_for_selector("#workers td:text('cpu@h1')", timeout=15_000)
            for worker in ("gpu0@nv1", "gpu1@nv1"):  # the two GPU workers announce separately
                page.wait_for_selector(f"#workers td:text('{worker}')", timeout=60_000)
            busy_gpu = page.inner_text("#workers tr:has(td:text('gpu0@nv1'))")
            assert "NVIDIA GeForce RTX 4090" in busy_gpu and "4.0 of 24 GiB free" in busy_gpu
            assert "97%" in busy_gpu and "61 °C" in busy_gpu
            page.screenshot(path=str(SCREENSHOTS / "dashboard-fleet.png"))

            long_run = _profile(cluster, "TinyLongBoard", 2000, 2000)
            job_id = cluster.submit(copy_example(tmp_path, "gamma"), profile=long_run)
            wait_for(lambda: store.get(job_id).step > 2, 90, "the long job to train")
            assert pids_of("autotrain.tiny_trainer", cluster.root)
            page.goto(f"{board.url}/jobs/{job_id}")
            page.click("button[data-action=cancel]")
            page.wait_for_selector("#state:text('cancelled')", timeout=30_000)
            assert store.get(job_id).state == JobState.CANCELLED
            blocked = [m for m in console if "Content Security Policy" in m]
            assert not blocked, f"the pages break their own CSP: {blocked}"
            wait_for(lambda: not pids_of("autotrain.tiny_trainer", cluster.root), 20,
                     "the trainer to stop")  # fmt: skip
        finally:
            browser.close()


def _start_nvml_host(cluster, tmp_path) -> None:
    """The real `autotrain worker` on two GPUs of the stand-in NVML (tests/standins/nvml: no
    driver here), one of them busy with another program, for the fleet page to show."""
    nvml = tmp_path / "nvml.json"
    gpus = [{"name": "NVIDIA GeForce RTX 4090", "uuid": f"GPU-nv-{i}", "total_gib": 24,
             "used_gib": used, "utilization": util, "temperature": temp}
            for i, (used, util, temp) in enumerate([(20, 97, 61), (0, 0, 38)])]  # fmt: skip
    nvml.write_text(json.dumps({"driver": "570.86.15", "gpus": gpus}))
    env = {**cluster.env, "STANDIN_NVML_FILE": str(nvml),
           "PYTHONPATH": os.pathsep.join([str(STANDIN_NVML), str(REPO)])}  # fmt: skip
    log = open(cluster.root / "nv1.log", "ab")  # noqa: SIM115
    cluster.workers.append(subprocess.Popen(
        [sys.executable, "-m", "autotrain.cli", "worker", "--host", "nv1", "--no-prep"], env=env,
        cwd=cluster.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip


def _report_latency(cluster, name: str, shown: dict) -> None:
    """Trainer step (its event's time) to the page showing it, as the browser measured."""
    progress = cluster.root / "output" / name / "log" / "progress.jsonl"
    emitted = {e["step"]: e["ts"] for e in map(json.loads, progress.read_text().splitlines())
               if e["kind"] == "step"}  # fmt: skip
    delays = sorted(shown[str(s)] / 1000 - emitted[s] for s in emitted if str(s) in shown and s)
    assert len(delays) > 10, f"the page showed few steps: {len(delays)}"
    p50 = statistics.median(delays)
    p99 = delays[min(len(delays) - 1, round(0.99 * (len(delays) - 1)))]
    print(
        f"\nstep -> page: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms over {len(delays)} steps"
    )


@pytest.mark.slow
def test_credentials_and_buttons_are_guarded_over_http(board, tmp_path):
    cluster = board.cluster
    assert board.status("/") == 401 and board.status("/events") == 401
    assert board.status("/", Authorization=f"Bearer {TOKEN}") == 200
    assert board.status("/", Cookie=board.session) == 200
    assert board.status("/", Authorization="Bearer wrong") == 401
    long_run = _profile(cluster, "TinyLongHttp", 2000, 2000)
    job_id = cluster.submit(copy_example(tmp_path, "delta"), profile=long_run)
    auth = {"Cookie": f"{board.session}; autotrain_csrf=abc"}

    def post(**headers: str) -> int:
        connection = http.client.HTTPConnection(board.url.removeprefix("http://"), timeout=10)
        connection.request("POST", f"/jobs/{job_id}/cancel", headers={**auth, **headers})
        return connection.getresponse().status

    assert post() == 403, "a POST without the page's CSRF token"
    assert post(**{"X-CSRF-Token": "abc", "Sec-Fetch-Site": "cross-site"}) == 403
    assert post(**{"X-CSRF-Token": "abc", "Origin": "http://evil.example"}) == 403
    assert cluster.store().get(job_id).state != JobState.CANCELLED
    assert post(**{"X-CSRF-Token": "abc", "Origin": board.url}) == 200
    wait_for(lambda: cluster.store().get(job_id).state == JobState.CANCELLED, 30, "the cancel")
    page = urllib.request.urlopen(urllib.request.Request(
        f"{board.url}/jobs/{job_id}", headers=auth), timeout=10).read().decode()  # fmt: skip
    assert "cancelled" in page and 'data-action="retry"' in page

    env = {k: v for k, v in cluster.env.items() if k != "AUTOTRAIN_DASHBOARD_TOKEN"}
    refused = subprocess.run([sys.executable, "-m", "autotrain.cli", "dashboard", "--address",
                              "0.0.0.0", "--port", str(free_port())], env=env, cwd=cluster.root,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert refused.returncode != 0 and "AUTOTRAIN_DASHBOARD_TOKEN" in refused.stderr


def test_the_live_channel_says_reconnecting_while_redis_restarts(cluster, tmp_path):
    """A private redis-server: stopped and started again on the same port under a live page."""
    port = free_port()
    data = tmp_path / "redis"
    data.mkdir()

    def start_redis() -> subprocess.Popen:
        proc = subprocess.Popen(redis_server_command(port, data, "--appendonly", "no"),
                                stdout=subprocess.DEVNULL)  # fmt: skip
        wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 10, "redis")
        return proc

    server = start_redis()
    cluster.env["AUTOTRAIN_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    board = Board(cluster, free_port())
    connection = http.client.HTTPConnection(board.url.removeprefix("http://"), timeout=30)
    connection.request(
        "GET", "/events?page=jobs", headers={"Authorization": f"Bearer {board.token}"}
    )
    reply = connection.getresponse()
    assert reply.status == 200

    def next_event() -> str:
        """The type of the next server-sent event ("data" for a plain message)."""
        kind, has_data = None, False
        while True:
            line = reply.fp.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line.split(": ", 1)[1]
            elif line.startswith("data: "):
                has_data = True
            elif not line and (kind or has_data):
                return kind or "data"

    assert next_event() == "data"
    server.send_signal(signal.SIGTERM)
    server.wait(10)
    assert next_event() == "reconnecting"
    time.sleep(1)
    server = start_redis()
    try:
        assert next_event() == "connected"
        assert next_event() == "data", "the page gets its data again"
    finally:
        server.kill()
        connection.close()
