"""What the queue costs: the same Tiny job run directly and through `pipeline run`, in one run.

    python bench/overhead.py [--steps 600] [--rounds 2]

For each round, in a fresh temporary workspace with the embedded Redis and one local CPU worker
(started before timing, as a user's `autotrain up` would be):

- direct: phases 1-3 once, then the trainer's own command line as a plain child process;
- queued: `run_pipeline(...)` (all five phases through Redis and the workers) until the job is
  final, watched the way `train monitor` watches it (XREAD on the job's stream).

It prints the submit-to-trainer-start latency (submit call to the worker starting the trainer
process), the end-to-end ratio queued/direct, and the monitor lag: for every step event, the
time the monitor received it minus the time the worker read the trainer's line (both clocks of
this host). Targets: latency <= 0.5 s, ratio <= 1.05 on a ~20 s job, lag p99 <= 100 ms.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autotrain.fleet import cluster  # noqa: E402
from autotrain.jobs.store import JobStore  # noqa: E402
from autotrain.pipeline import prepare_pipeline, run_pipeline  # noqa: E402
from autotrain.settings import load_settings  # noqa: E402

DATASET = REPO / "examples" / "datasets" / "tiny_shapes"


def make_workspace(root: Path, steps: int) -> None:
    import tomllib

    profile = root / "templates" / "TinyBench"
    profile.mkdir(parents=True)
    shutil.copy(REPO / "templates" / "Tiny" / "profile.toml", profile / "profile.toml")
    base = tomllib.loads((REPO / "templates" / "Tiny" / "base.toml").read_text())
    base.update(max_train_steps=steps, save_every_n_steps=max(1, steps // 4))
    base.pop("sample_every_n_steps", None)
    (profile / "base.toml").write_text(tomli_w.dumps(base))
    for name in ("direct", "queued"):
        shutil.copytree(DATASET, root / "datasets" / name)


def run_direct(settings, root: Path) -> float:
    prepared = prepare_pipeline(
        root / "datasets" / "direct", "TinyBench", settings=settings, force=True
    )
    shutil.rmtree(prepared.plan.model_dir, ignore_errors=True)
    prepared.plan.model_dir.mkdir(parents=True)
    started = time.perf_counter()
    done = subprocess.run(prepared.command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"direct trainer run failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def run_queued(settings, root: Path) -> tuple[float, float, list[float]]:
    store = JobStore(cluster_client(settings))
    shutil.rmtree(root / "output" / "queued", ignore_errors=True)
    submitted = time.time()
    started = time.perf_counter()
    job = run_pipeline(root / "datasets" / "queued", "TinyBench", settings=settings, force=True)
    lags: list[float] = []
    last = "0-0"
    while True:
        for entry_id, event in store.read_events(job.id, after=last, block_ms=200):
            last = entry_id
            if event.get("kind") == "step":
                lags.append(time.time() - event["ts"])
        current = store.get(job.id)
        if current.is_final:
            break
    elapsed = time.perf_counter() - started
    if current.state != "succeeded":
        sys.exit(f"queued job failed: {current.error}")
    trainer = current.training_finished_at - current.training_started_at
    after = current.finished_at - current.training_finished_at
    print(
        f"  queued breakdown: trainer phase {trainer:.2f}s, trainer end -> job final {after * 1000:.0f} ms"
    )
    return elapsed, current.training_started_at - submitted, lags


def cluster_client(settings):
    from autotrain.jobs.connection import get_redis

    return get_redis(settings)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--steps", type=int, default=600, help="training steps (600 is about 20 s here)"
    )
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="autotrain-overhead-"))
    try:
        make_workspace(root, args.steps)
        settings = load_settings(root, min_free_disk_gb=0)
        cluster.up(settings, worker_args=["--cpu"])
        wait_for_workers(settings)
        rows = []
        for round_no in range(1, args.rounds + 1):
            direct = run_direct(settings, root)
            queued, latency, lags = run_queued(settings, root)
            rows.append((direct, queued, latency, lags))
            p99 = statistics.quantiles(lags, n=100)[98] if len(lags) >= 2 else float("nan")
            print(
                f"round {round_no}: direct {direct:.2f}s  queued {queued:.2f}s  ratio {queued / direct:.3f}  "
                f"submit->trainer {latency * 1000:.0f} ms  lag p50 {statistics.median(lags) * 1000:.1f} ms "
                f"p99 {p99 * 1000:.1f} ms ({len(lags)} events)"
            )
        all_lags = [lag for row in rows for lag in row[3]]
        ratios = [q / d for d, q, _, _ in rows]
        print(
            f"\nmedian ratio {statistics.median(ratios):.3f} (target <= 1.05); "
            f"median submit->trainer {statistics.median(r[2] for r in rows) * 1000:.0f} ms (target <= 500); "
            f"lag p99 {statistics.quantiles(all_lags, n=100)[98] * 1000:.1f} ms (target <= 100)"
        )
    finally:
        cluster.down(load_settings(root))
        shutil.rmtree(root, ignore_errors=True)


def wait_for_workers(settings, timeout: float = 60) -> None:
    from autotrain.fleet.registry import live_workers

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = {w.name.split("@")[0] for w in live_workers(cluster_client(settings))}
        if {"cpu", "prep"} <= names:
            return
        time.sleep(0.2)
    sys.exit("workers did not start; see .autotrain/worker.log")


if __name__ == "__main__":
    main()
