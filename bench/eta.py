"""How far the queue ETA's predicted start times are from the real ones.

    python bench/eta.py [--jobs 12] [--gpus 2] [--seconds-per-step 0.15] [--jitter 0.3] [--cold]

A stand-in GPU host (tests/standins/gpu_host.py: real Celery workers, one per made-up GPU) on a
redis-server of its own; the trainer is bench/scale_trainer.py in its pace mode: each dataset
trains kohya's count of steps (images x repeats), each step taking `--seconds-per-step` give or
take `--jitter`, after a silent startup and before a save. The datasets differ in size, so the
jobs differ in length.

First a warm-up batch of `--gpus` jobs finishes, so the pace of the profile on this GPU model
is measured, as it would be after a fleet's first night (`--cold` skips it: the forecast then
starts from the profile's default pace). Then a batch of `--jobs` datasets is queued; once the
first jobs train at a live rate, autotrain.fleet.eta.forecast() is read once, and the batch runs to the
end. It prints, for the jobs that had not started when the forecast was made, predicted and
actual start times, and the mean and worst absolute error as a fraction of the batch's makespan
(first training start to last training end), for all of them and for the last half.

    python bench/eta.py --replay-jobs 1000 --replay-gpus 64

The cost of one forecast at scale instead (what every `train list` pays): that many waiting
jobs, queued through the job store and the broker lists as submit leaves them, on that many live
GPU workers' heartbeats (no processes: only the records the forecast reads). It prints the
forecast's time against reading the same jobs' records (`JobStore.list`), in one process.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import tomli_w

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale  # noqa: E402 - the bench's shared setup: Redis, workspace, stand-in launcher

from autotrain.jobs.job import JobState  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--seconds-per-step", type=float, default=0.15)
    parser.add_argument("--jitter", type=float, default=0.3)
    parser.add_argument("--startup", type=float, default=2.0)
    parser.add_argument("--save", type=float, default=0.5)
    parser.add_argument("--cold", action="store_true", help="no warm-up: default pace")
    parser.add_argument("--replay-jobs", type=int, help="measure a forecast's cost instead")
    parser.add_argument("--replay-gpus", type=int, default=64)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="autotrain-eta-"))
    redis_proc, url = scale._start_redis(root)
    try:
        if args.replay_jobs:
            scale._workspace(root, url, argparse.Namespace(lease=10.0, trainer_seconds=0))
            replay_cost(url, args.replay_jobs, args.replay_gpus)
            return
        env = scale._workspace(root, url, argparse.Namespace(lease=10.0, trainer_seconds=0))
        env.update(SCALE_SECONDS_PER_STEP=str(args.seconds_per_step), SCALE_JITTER=str(args.jitter),
                   SCALE_STARTUP_SECONDS=str(args.startup), SCALE_SAVE_SECONDS=str(args.save),
                   AUTOTRAIN_VRAM_MARGIN_GB="0")  # fmt: skip
        _train_by_epochs(root)
        run(root, env, args)
    finally:
        redis_proc.kill()
        shutil.rmtree(root, ignore_errors=True)


def _train_by_epochs(root: Path) -> None:
    """One epoch of images x repeats steps, so that a dataset's size sets its job's length."""
    base_file = root / "ws" / "templates" / "Scale" / "base.toml"
    base = tomllib.loads(base_file.read_text())
    base.pop("max_train_steps", None)
    base["max_train_epochs"] = 1
    base_file.write_text(tomli_w.dumps(base))


def _datasets(root: Path, sizes: list[int], prefix: str) -> list[Path]:
    from PIL import Image

    paths = []
    for i, size in enumerate(sizes):
        target = root / "datasets" / prefix / f"{prefix}{i:02d}"
        target.mkdir(parents=True)
        for k in range(size):
            Image.new("RGB", (16, 16), (20 * k, 60, 200)).save(target / f"{k}.png")
            (target / f"{k}.txt").write_text(f"square number {k}")
        paths.append(target)
    return paths


def run(root: Path, env: dict[str, str], args) -> None:
    from autotrain.fleet.eta import forecast
    from autotrain.jobs.celery_app import configure_app
    from autotrain.jobs.connection import job_store
    from autotrain.pipeline import run_batch_pipeline
    from autotrain.settings import load_settings

    settings = load_settings()
    configure_app(settings)
    store = job_store(settings)
    host = subprocess.Popen(
        [sys.executable, str(scale.GPU_HOST), "h0", str(args.gpus), ",".join(["80"] * args.gpus)],
        env={**env, "AUTOTRAIN_HOST": "h0"}, stdout=open(root / "host.log", "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        scale._wait_for_workers(store, args.gpus + 1, 120)
        if not args.cold:
            warm = run_batch_pipeline("Scale", dataset_paths=[str(p) for p in _datasets(
                root, [4] * args.gpus, "warm")], max_concurrent=args.gpus, settings=settings)  # fmt: skip
            _wait_until_done(store, warm.batch_id)
        sizes = [2 + (i * 5) % 7 for i in range(args.jobs)]  # 2 to 8 images: 20 to 80 steps
        batch = run_batch_pipeline("Scale", dataset_paths=[str(p) for p in _datasets(
            root, sizes, "job")], max_concurrent=args.jobs, settings=settings)  # fmt: skip
        predicted, made_at = _forecast_once_training(store, settings, batch.batch_id, args.gpus,
                                                     forecast)  # fmt: skip
        _wait_until_done(store, batch.batch_id)
        jobs = store.list(batch_id=batch.batch_id)
    finally:
        scale._stop_fleet([host])
    _report(jobs, predicted, made_at, args)


def replay_cost(url: str, jobs: int, gpus: int) -> None:
    import json

    import redis

    from autotrain.fleet.eta import forecast
    from autotrain.jobs import keys
    from autotrain.jobs.store import JobStore
    from autotrain.settings import load_settings
    from autotrain.spec import JobSpec

    client = redis.Redis.from_url(url, decode_responses=True)
    store, settings = JobStore(client), load_settings()
    now = time.time()
    for g in range(gpus):  # heartbeats as autotrain.worker.heartbeat writes them
        name = f"gpu{g % 8}@h{g // 8}"
        info = {"name": name, "host": f"h{g // 8}", "gpu": str(g % 8), "gpu_name": "NVIDIA H100",
                "slots": 1, "memory_total": 80 << 30, "memory_free": 80 << 30,
                "queues": [keys.gpu_queue_name(f"h{g // 8}", g % 8), keys.GPU_QUEUE]}  # fmt: skip
        client.set(keys.worker(name), json.dumps(info))
        client.zadd(keys.WORKERS, {name: now})
    for i in range(jobs):
        spec = JobSpec(dataset_path=Path(f"/data/set{i}"), name=f"set{i:05d}", profile="Scale")
        task = f"task-{i:05d}"
        store.create(spec, state="waiting_gpu", owner=f"queue:{task}", phase="train",
                     next_task={"name": "train", "id": task, "queue": keys.GPU_QUEUE},
                     plan={"total_steps": 200 + i % 300}, total=200 + i % 300)  # fmt: skip
        message = {"headers": {"id": task}, "properties": {"priority": 1}}
        client.lpush(keys.broker_lists(keys.GPU_QUEUE)[1], json.dumps(message))
    rounds = {"JobStore.list (the records)": [], "forecast": []}
    for _ in range(5):
        t0 = time.perf_counter()
        store.list(states={JobState.WAITING_GPU})
        rounds["JobStore.list (the records)"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        predicted = forecast(store, settings)
        rounds["forecast"].append(time.perf_counter() - t0)
    last = max(f.starts_at for f in predicted.values())
    print(
        f"{jobs} waiting jobs on {gpus} GPU workers; the last starts in {(last - now) / 3600:.1f} h"
    )
    for label, times in rounds.items():
        print(f"  {label}: median {statistics.median(times) * 1000:.0f} ms")
    ratio = statistics.median(rounds["forecast"]) / statistics.median(
        rounds["JobStore.list (the records)"]
    )
    print(f"  forecast / reading the records: {ratio:.1f}x")


def _forecast_once_training(store, settings, batch_id: str, gpus: int, forecast):
    """The forecast read once `gpus` jobs of the batch train at a live rate."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        jobs = store.list(batch_id=batch_id)
        training = [j for j in jobs if j.state == JobState.TRAINING and j.rate and j.step >= 3]
        configured = all(j.plan for j in jobs if not j.is_final)
        if len(training) >= gpus and configured:
            now = time.time()
            return forecast(store, settings, now), now
        time.sleep(0.2)
    raise SystemExit("the batch never started training")


def _wait_until_done(store, batch_id: str) -> None:
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:
        jobs = store.list(batch_id=batch_id)
        if all(j.is_final for j in jobs):
            failed = [j for j in jobs if j.state != JobState.SUCCEEDED]
            if failed:
                raise SystemExit(f"{len(failed)} jobs did not succeed: {failed[0].error}")
            return
        time.sleep(0.5)
    raise SystemExit("the batch did not finish")


def _report(jobs, predicted, made_at: float, args) -> None:
    starts = [j.training_started_at for j in jobs]
    ends = [j.training_finished_at for j in jobs]
    makespan = max(ends) - min(starts)
    rows = sorted(
        (j.training_started_at, predicted[j.id].starts_at, j)
        for j in jobs
        if j.training_started_at > made_at and predicted.get(j.id) and predicted[j.id].starts_at
    )  # fmt: skip
    print(f"{len(jobs)} jobs on {args.gpus} stand-in GPUs, {args.seconds_per_step} s/step "
          f"+-{args.jitter:.0%}, {'cold (default pace)' if args.cold else 'pace measured by a warm-up batch'}")  # fmt: skip
    print(
        f"makespan {makespan:.1f} s; forecast made {made_at - min(starts):.1f} s after the first start"
    )
    print(f"{'job':<10} {'steps':>5} {'predicted':>10} {'actual':>8} {'error':>7}")
    for actual, guess, job in rows:
        print(f"{job.name:<10} {job.total:>5} {guess - made_at:>9.1f}s {actual - made_at:>7.1f}s "
              f"{guess - actual:>+6.1f}s")  # fmt: skip
    for label, chosen in (("all not yet started", rows), ("last half", rows[len(rows) // 2 :])):
        errors = [abs(guess - actual) / makespan for actual, guess, _ in chosen]
        if errors:
            print(f"start-time error, {label} ({len(errors)} jobs): mean "
                  f"{statistics.mean(errors):.1%}, worst {max(errors):.1%} of the makespan")  # fmt: skip


if __name__ == "__main__":
    main()
