"""Flower as a user meets it: a fresh `autotrain up` + `autotrain flower`, a job training, seen
over Flower's HTTP API and in a real browser (Debian's chromium driven by Playwright).

The browser test skips, saying why, where chromium or Playwright is missing; the HTTP tests check
the same facts without it. Screenshots go to docs/screenshots/, which the README shows.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, copy_example, free_port, job_id_in, wait_for, write_tiny_profile

pytestmark = pytest.mark.slow

PASSWORD = "s3cret-pw"
SCREENSHOTS = REPO / "docs" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Flower:
    """The running cluster, Flower and one training job; `get` reads Flower's JSON API."""

    def __init__(self, url: str, pid: int, workspace: Path) -> None:
        self.url, self.pid, self.workspace = url, pid, workspace
        self.job_id, self.first_worker = "", 0.0

    def get(self, path: str, auth: bool = True):
        headers = {
            "Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
        }
        request = urllib.request.Request(self.url + path, headers=headers if auth else {})
        with urllib.request.urlopen(request, timeout=20) as reply:
            return json.loads(reply.read())

    def tasks(self) -> dict:
        try:
            return self.get("/api/tasks")
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return {}

    def training_task(self) -> tuple[str, dict] | None:
        """The job's training task once Flower shows it in PROGRESS with a loss."""
        for task_id, task in self.tasks().items():
            result = task.get("result") or {}
            if task.get("state") == "PROGRESS" and "loss" in result:
                return task_id, task
        return None


def _slow_tiny_profile(workspace: Path) -> None:
    """`TinyLong`: Tiny with steps enough to still be training while the tests look."""
    write_tiny_profile(workspace, "TinyLong", max_train_steps=200_000, save_every_n_steps=100_000,
                       sample_every_n_steps=100_000)  # fmt: skip


@pytest.fixture(scope="module")
def flower(tmp_path_factory):
    root = tmp_path_factory.mktemp("flower")
    workspace = root / "ws"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOTRAIN_")}
    env.update(AUTOTRAIN_WORKSPACE=str(workspace), AUTOTRAIN_FLOWER_PORT=str(port),
               AUTOTRAIN_FLOWER_PASSWORD=PASSWORD, AUTOTRAIN_MIN_FREE_DISK_GB="0")  # fmt: skip
    cli = [sys.executable, "-m", "autotrain.cli"]
    subprocess.run([*cli, "up", "--cpu"], env=env, check=True, capture_output=True, timeout=120)
    _slow_tiny_profile(workspace)
    started = time.monotonic()
    process = subprocess.Popen([*cli, "flower"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    view = Flower(f"http://127.0.0.1:{port}", process.pid, workspace)
    try:

        def workers():
            try:
                found = view.get("/api/workers?refresh=1")
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return None
            return {"cpu", "prep"} <= {name.split("@")[0] for name in found}

        wait_for(workers, 60, "Flower to list the cpu and prep workers")
        view.first_worker = time.monotonic() - started
        dataset = copy_example(root)
        run = subprocess.run([*cli, "pipeline", "run", "--dataset-path", str(dataset),
                              "--profile", "TinyLong"], env=env, check=True, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        view.job_id = job_id_in(run.stdout)
        yield view
    finally:
        os.killpg(process.pid, 9)
        if view.job_id:  # stop the long trainer first: `down` then has nothing to wait for
            subprocess.run([*cli, "train", "cancel", "--job", view.job_id], env=env,
                           capture_output=True, timeout=60)  # fmt: skip
        subprocess.run([*cli, "down", "--force"], env=env, capture_output=True, timeout=120)


def test_flower_lists_the_workers_within_seconds_and_refuses_strangers(flower):
    print(f"\nautotrain flower -> both workers in Flower's API: {flower.first_worker:.1f} s")
    assert flower.first_worker < 30
    with pytest.raises(urllib.error.HTTPError) as refused:
        flower.get("/api/workers", auth=False)
    assert refused.value.code == 401
    argv = Path(f"/proc/{flower.pid}/cmdline").read_bytes().decode()
    assert PASSWORD not in argv


def test_every_task_names_its_job_dataset_and_profile(flower):
    def phases_seen() -> set[str]:
        return {t["name"] for t in flower.tasks().values()
                if "dataset=tiny_shapes profile=TinyLong" in (t.get("args") or "")}  # fmt: skip

    wanted = {"autotrain.validate", "autotrain.prepare", "autotrain.configure", "autotrain.train"}
    wait_for(lambda: wanted <= phases_seen(), 60, f"Flower to show the tasks {sorted(wanted)}")
    assert all(flower.job_id in t["args"] for t in flower.tasks().values())


def test_the_training_task_is_in_progress_with_step_total_loss_and_eta(flower):
    task_id, _ = wait_for(flower.training_task, 90, "the training task in PROGRESS")
    info = flower.get(f"/api/task/info/{task_id}")
    assert info["name"] == "autotrain.train" and info["state"] == "PROGRESS"
    progress = info["result"]
    assert progress["total"] == 200_000 and 0 < progress["step"] < progress["total"]
    assert progress["loss"] > 0 and re.fullmatch(r"\d\d:\d\d:\d\d", progress["eta"])
    # the step moves on: Flower follows the trainer, not a snapshot
    wait_for(
        lambda: flower.get(f"/api/task/info/{task_id}")["result"]["step"] > progress["step"],
        30,
        "Flower's step to move on",
    )


def _browser():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (pip install playwright)")
    return sync_playwright, Error, ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                             "--disable-component-update", "--no-first-run", "--disable-sync"]  # fmt: skip


def test_a_browser_sees_the_workers_and_the_training_progress(flower):
    sync_playwright, PlaywrightError, args = _browser()
    task_id, _ = wait_for(flower.training_task, 90, "the training task in PROGRESS")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        try:
            # without credentials: Flower answers 401, and chromium shows no page
            stranger = browser.new_context()
            assert stranger.request.get(flower.url + "/workers").status == 401
            with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
                stranger.new_page().goto(flower.url + "/workers")
            context = browser.new_context(
                http_credentials={"username": "admin", "password": PASSWORD},
                viewport={"width": 1280, "height": 720},
            )
            page = context.new_page()
            page.goto(flower.url + "/workers")
            page.wait_for_selector("text=cpu@", timeout=30_000)
            page.wait_for_selector("text=prep@", timeout=30_000)
            page.screenshot(path=str(SCREENSHOTS / "flower-workers.png"))

            ages = []
            for _ in range(5):
                page.goto(f"{flower.url}/task/{task_id}")
                loaded = time.time()
                body = page.inner_text("body")
                assert "PROGRESS" in body and "autotrain.train" in body
                assert "dataset=tiny_shapes profile=TinyLong" in body
                shown = re.search(
                    r"\{'step': (\d+), 'total': 200000, 'loss': [\d.]+, 'eta': ", body
                )
                assert shown, f"no progress on the task page:\n{body}"
                ages.append(_step_age(flower, shown, loaded))
                time.sleep(0.7)
            page.screenshot(path=str(SCREENSHOTS / "flower-task.png"), full_page=True)
        finally:
            browser.close()
    ages.sort()
    print(f"\ntrainer step -> Flower task page: median {ages[2]:.2f} s, max {ages[-1]:.2f} s")


def _step_age(flower: Flower, shown: re.Match, loaded: float) -> float:
    """Seconds from the trainer reporting the step the page shows to the page being loaded."""
    step = int(shown[1])
    log = flower.workspace / "output" / "tiny_shapes" / "log" / "progress.jsonl"
    for line in log.read_text().splitlines():
        event = json.loads(line)
        if event.get("kind") == "step" and event.get("step") == step:
            return loaded - event["ts"]
    pytest.fail(f"step {step} shown by Flower is not in {log}")


def _status(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=20) as r:
            return r.status
    except urllib.error.HTTPError as refused:
        return refused.code


def test_metrics_ask_for_the_credential_and_healthcheck_does_not(flower):
    basic = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    assert _status(flower.url + "/metrics", {}) == 401
    assert _status(flower.url + "/metrics", {"Authorization": basic}) == 200
    assert _status(flower.url + "/healthcheck", {}) == 200


def test_a_foreign_host_name_is_refused(flower):
    """DNS rebinding: a page of another origin re-bound to 127.0.0.1 sends its own Host."""
    basic = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    assert (
        _status(flower.url + "/api/workers", {"Authorization": basic, "Host": "evil.example"})
        == 400
    )
    assert _status(flower.url + "/api/workers", {"Authorization": basic}) == 200


@pytest.mark.parametrize("passed", [["--address=0.0.0.0"], ["--address", "0.0.0.0"]])
def test_an_address_passed_through_to_flower_is_checked_too(tmp_path, passed):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOTRAIN_", "FLOWER_"))}
    env["AUTOTRAIN_WORKSPACE"] = str(tmp_path)
    run = subprocess.run([sys.executable, "-m", "autotrain.cli", "flower", *passed], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 1
    assert "0.0.0.0" in run.stderr and "AUTOTRAIN_FLOWER_PASSWORD" in run.stderr
