"""Notifications through Apprise to a real HTTP server on loopback (a JSON webhook), sent by
real workers as jobs and their batch end."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import EXAMPLE_DATASET, copy_example, free_port, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def webhook():
    """A JSON webhook on loopback; yields (url, list of received JSON bodies)."""
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"json://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()


def test_one_message_per_finished_job_and_one_per_batch(cluster, tmp_path, webhook):
    url, received = webhook
    cluster.start_worker("h1")
    sets = tmp_path / "sets"
    copy_example(sets, "alpha")
    copy_example(sets, "beta")
    broken = sets / "gamma"  # truncated PNGs: queued (the header reads), fails in phase 1
    broken.mkdir()
    sample = next(EXAMPLE_DATASET.glob("*.png")).read_bytes()
    for i in range(3):
        (broken / f"img{i}.png").write_bytes(sample[: len(sample) // 2])
    dead = f"json://127.0.0.1:{free_port()}/nobody"  # fails: never fails a job
    quick = cluster.short_profile("TinyQuick", 6)
    queued = cluster.cli("pipeline", "batch", "--datasets-dir", str(sets), "--profile", quick,
                         "--max-concurrent", "2", "--notify", url, "--notify", dead, check=True)  # fmt: skip
    batch_id = next(w for w in queued.stdout.split() if w.startswith("b2"))
    cluster.cli("train", "monitor", "--batch", batch_id, timeout=240)
    wait_for(lambda: len(received) >= 4, 30, "three job messages and one batch message")
    assert len(received) == 4, received
    by_title = {m["title"]: m["message"] for m in received}
    alpha = by_title["autotrain: alpha succeeded"]
    assert "profile: TinyQuick" in alpha and "steps: 6/6, final loss " in alpha
    assert "duration: " in alpha and "(training " in alpha
    assert "weights: " in alpha and "alpha.safetensors" in alpha
    assert "autotrain: beta succeeded" in by_title
    gamma = by_title["autotrain: gamma failed"]
    store = cluster.store()
    error = next(j.error for j in store.list(batch_id=batch_id) if j.name == "gamma")
    assert f"error: {error}" in gamma
    batch = by_title["autotrain: batch sets done, 2/3 succeeded"]
    assert "alpha: succeeded, 6/6 steps" in batch and "gamma: failed, 0/? steps" in batch
    assert error in batch
