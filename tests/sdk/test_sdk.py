"""The SDK's verbs from a fresh Python process, given only the settings in the environment
(AUTOTRAIN_REDIS_URL, AUTOTRAIN_WORKSPACE): no configure_app, no store, nothing called first.
Real Redis, a real worker, the Tiny trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from autotrain.jobs.job import JobState
from tests.conftest import REPO, copy_example, wait_for


def _sdk(cluster, code: str, *args: str) -> dict:
    """Run `code` in a new interpreter that knows only the settings; its last line is JSON."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
           "PYTHONPATH": str(REPO), "AUTOTRAIN_REDIS_URL": cluster.redis_url,
           "AUTOTRAIN_WORKSPACE": str(cluster.root)}  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=cluster.root,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


_STEER = """
import json, sys
from autotrain import cancel_job, get_job, hold_job, list_jobs
held, cancelled = hold_job(sys.argv[1]), cancel_job(sys.argv[2])
print(json.dumps({"held": [held.held, held.state.value, get_job(held.id).held],
                  "cancelled": cancelled.state.value,
                  "listed": [j.id for j in list_jobs(state="cancelled")],
                  "named": [j.name for j in list_jobs(name="alp", state=["queued", "failed"])]}))
"""

_REFUSED = """
import json, sys
from autotrain import AutotrainError, get_job, retry_job
errors = {}
for what, call in (("unknown", lambda: get_job("20000101-000000-zzzzzz")),
                   ("under way", lambda: retry_job(sys.argv[1]))):
    try:
        call()
    except AutotrainError as exc:
        errors[what] = type(exc).__name__
print(json.dumps(errors))
"""

_RESTART = """
import json, sys
from autotrain import release_job, retry_job
released, retried = release_job(sys.argv[1]), retry_job(sys.argv[2])
print(json.dumps({"released": released.held, "attempt": retried.attempt,
                  "state": retried.state.value}))
"""

_LOOK = """
import json, sys
from autotrain import fleet_status, job_logs, show_job
status, details = fleet_status(), show_job(sys.argv[1])
print(json.dumps({"workers": {w.record.name: type(w.record).__name__ for w in status.workers},
                  "redis": status.redis.running, "log": "".join(job_logs(sys.argv[1])),
                  "history": [e["event"] for e in details.history]}))
"""


@pytest.mark.slow
def test_the_verbs_work_from_a_fresh_process_with_only_settings(cluster, tmp_path):
    quick = cluster.short_profile("TinyQuick", 8)
    alpha = cluster.submit(copy_example(tmp_path, "alpha"), profile=quick)  # no worker yet:
    beta = cluster.submit(copy_example(tmp_path, "beta"), profile=quick)  # both stay queued

    steered = _sdk(cluster, _STEER, alpha, beta)
    assert steered["held"] == [True, "queued", True]
    assert steered["cancelled"] == "cancelled"
    assert steered["listed"] == [beta] and steered["named"] == ["alpha"]
    refused = _sdk(cluster, _REFUSED, alpha)
    assert refused == {"unknown": "NoSuchJob", "under way": "JobNotFinal"}

    cluster.start_worker("h1")
    store = cluster.store()
    assert store.get(alpha).training_started_at is None, "a held job started"
    restarted = _sdk(cluster, _RESTART, alpha, beta)
    assert restarted == {"released": False, "attempt": 2, "state": "queued"}
    wait_for(lambda: store.get(alpha).is_final and store.get(beta).is_final, 120, "both to end")
    assert [store.get(i).state for i in (alpha, beta)] == [JobState.SUCCEEDED] * 2

    looked = _sdk(cluster, _LOOK, alpha)
    assert looked["redis"] and looked["workers"]["cpu@h1"] == "WorkerRecord"
    assert looked["log"].strip(), "the trainer's output, read back"
    assert looked["history"][:2] == ["held", "released"] and looked["history"][-1] == "succeeded"
