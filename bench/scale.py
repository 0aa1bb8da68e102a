"""Exactly once at fleet scale: a simulated fleet on one Redis, then a store full of history.

    python bench/scale.py [--hosts 8] [--gpus 8] [--jobs 1000] [--trainer-seconds 16]
                          [--kills 10] [--lease 30] [--history 0,10000,50000]

Part 1, the fleet: `--hosts` stand-in GPU hosts (tests/standins/gpu_host.py: real Celery
workers, one per made-up GPU, plus each host's prep worker) on one redis-server, `--jobs`
datasets queued as one batch. The trainer is bench/scale_trainer.py, which prints kohya-style
progress for `--trainer-seconds` and writes its weights; it is started by the kohya backend's
command through a stand-in for `python -m accelerate.commands.launch` that runs the script
directly (the real launcher costs seconds of imports per job, which would measure this 2-core
machine, not the queue). `--kills` random GPU workers are SIGKILLed during the run.

It prints: jobs, trainer invocations, duplicates (a job trained to the end more than once), jobs
lost (not succeeded), makespan / ideal (jobs x trainer seconds / GPUs), the dispatch gap (per
GPU, trainer end to the next trainer start while jobs were waiting) p50/p99, Redis bytes per
finished job after retention.

Part 2, history: for each count in `--history`, that many finished jobs are written into the
store (records and index entries as the job store writes them); then the time of a reaper pass,
the fleet's CPU use while idle (a smaller fleet: 2 hosts x 2 GPUs), `train list` (first page) and
`status` (in-process, and as the CLI command including Python's start-up).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autotrain.jobs import keys  # noqa: E402
from autotrain.jobs.job import JobState, encode_fields  # noqa: E402
from autotrain.jobs.local_redis import find_redis_server  # noqa: E402
from autotrain.jobs.store import JobStore  # noqa: E402
from autotrain.profile import builtin_templates_dir  # noqa: E402
from autotrain.spec import JobSpec  # noqa: E402

GPU_HOST = REPO / "tests" / "standins" / "gpu_host.py"
LAUNCHER = """#!/bin/sh
# Stand-in for `python -m accelerate.commands.launch [options] script args` (bench only): runs
# the script directly, so the bench measures the queue and not the launcher's imports.
while [ $# -gt 0 ]; do
  case "$1" in *.py) break ;; esac
  shift
done
exec {python} -u "$@"
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--trainer-seconds", type=float, default=16.0)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--lease", type=float, default=30.0)
    parser.add_argument("--history", default="0,10000,50000")
    parser.add_argument("--skip-fleet", action="store_true", help="only part 2")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="autotrain-scale-"))
    redis_proc, url = _start_redis(root)
    try:
        env = _workspace(root, url, args)
        if not args.skip_fleet:
            fleet_run(root, url, env, args)
        history_run(root, url, env, args)
    finally:
        redis_proc.kill()
        shutil.rmtree(root, ignore_errors=True)


# --- setup ---------------------------------------------------------------------------------------


def _start_redis(root: Path):
    import socket

    import redis

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (root / "redis").mkdir()
    proc = subprocess.Popen(
        [find_redis_server(), "--bind", "127.0.0.1", "--port", str(port), "--dir",
         str(root / "redis"), "--appendonly", "yes", "--save", "", "--maxmemory-policy",
         "noeviction", "--maxclients", "10000"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    return proc, url


def _workspace(root: Path, url: str, args) -> dict[str, str]:
    ws = root / "ws"
    profile = ws / "templates" / "Scale"
    profile.mkdir(parents=True)
    descriptor = (builtin_templates_dir() / "FluxLORA" / "profile.toml").read_text()
    descriptor = descriptor.replace(
        'script = "flux_train_network.py"', 'script = "scale_trainer.py"'
    )
    descriptor = descriptor.replace("min_resolution = 512", "min_resolution = 8")
    (profile / "profile.toml").write_text(descriptor.replace("disk_gb = 10", "disk_gb = 0"))
    import tomllib

    base = tomllib.loads((builtin_templates_dir() / "FluxLORA" / "base.toml").read_text())
    for key in ("max_train_epochs", "sample_every_n_steps", "save_every_n_steps"):
        base.pop(key, None)
    base.update(max_train_steps=16, save_state=False)
    (profile / "base.toml").write_text(tomli_w.dumps(base))
    scripts = root / "sd-scripts"
    scripts.mkdir()
    shutil.copy(REPO / "bench" / "scale_trainer.py", scripts / "scale_trainer.py")
    launcher = root / "python-launch"
    launcher.write_text(LAUNCHER.format(python=sys.executable))
    launcher.chmod(0o755)
    models = root / "models"
    models.mkdir()
    env = {**os.environ, "AUTOTRAIN_WORKSPACE": str(ws), "AUTOTRAIN_REDIS_URL": url,
           "AUTOTRAIN_LEASE_SECONDS": str(args.lease), "AUTOTRAIN_MIN_FREE_DISK_GB": "0",
           "AUTOTRAIN_SD_SCRIPTS_DIR": str(scripts), "AUTOTRAIN_SD_SCRIPTS_PYTHON": str(launcher),
           "AUTOTRAIN_RETENTION_DAYS": str(2 / 86400), "SCALE_INVOCATIONS": str(root / "runs.jsonl"),
           "SCALE_TRAINER_SECONDS": str(args.trainer_seconds), "PYTHONUNBUFFERED": "1"}  # fmt: skip
    for name in ("flux_model", "clip_l", "t5xxl", "ae"):
        (models / f"{name}.safetensors").write_bytes(b"stand-in")
        env[f"AUTOTRAIN_{name.upper()}"] = str(models / f"{name}.safetensors")
    os.environ.update(env)
    return env


def _datasets(root: Path, count: int) -> list[Path]:
    from PIL import Image

    folder = root / "datasets"
    image = Image.new("RGB", (16, 16), (120, 60, 200))
    paths = []
    for i in range(count):
        target = folder / f"set{i:05d}"
        target.mkdir(parents=True)
        image.save(target / "a.png")
        (target / "a.txt").write_text("a purple square")
        paths.append(target)
    return paths


def _start_fleet(root: Path, env: dict[str, str], hosts: int, gpus: int) -> list[subprocess.Popen]:
    procs = []
    for h in range(hosts):
        log = open(root / f"host{h}.log", "ab")  # noqa: SIM115
        procs.append(subprocess.Popen(
            [sys.executable, str(GPU_HOST), f"h{h}", str(gpus)], env={**env, "AUTOTRAIN_HOST": f"h{h}"},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        ))  # fmt: skip
    return procs


def _wait_for_workers(store: JobStore, count: int, timeout: float) -> None:
    from autotrain.fleet.registry import live_workers

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(live_workers(store.redis)) >= count:
            return
        time.sleep(1)
    raise SystemExit(f"only {len(live_workers(store.redis))} of {count} workers came up")


def _stop_fleet(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


# --- part 1 ---------------------------------------------------------------------------------


def fleet_run(root: Path, url: str, env: dict[str, str], args) -> None:
    from autotrain.jobs.celery_app import configure_app
    from autotrain.jobs.connection import job_store
    from autotrain.pipeline import run_batch_pipeline
    from autotrain.settings import load_settings

    settings = load_settings()
    configure_app(settings)
    store = job_store(settings)
    datasets = _datasets(root, args.jobs)
    procs = _start_fleet(root, env, args.hosts, args.gpus)
    _wait_for_workers(store, args.hosts * (args.gpus + 1), 300)
    memory_before = store.redis.info("memory")["used_memory"]
    print(f"fleet up: {args.hosts} hosts x {args.gpus} GPUs; queueing {args.jobs} jobs", flush=True)
    submitted = time.time()
    busy_before = _cpu_busy()
    commands_before = _command_counts(store.redis)
    batch = run_batch_pipeline("Scale", dataset_paths=[str(p) for p in datasets],
                               max_concurrent=10**6, settings=settings)  # fmt: skip
    kills = sorted(random.uniform(0.1, 0.7) for _ in range(args.kills))
    ideal = args.jobs * args.trainer_seconds / (args.hosts * args.gpus)
    killed: list[str] = []
    while store.redis.zcard(keys.ACTIVE):
        elapsed = time.time() - submitted
        if kills and elapsed > kills[0] * ideal:
            kills.pop(0)
            killed.append(_kill_a_training_worker(store))
        if elapsed > ideal * 6 + 600:
            print("giving up: the fleet did not finish", flush=True)
            break
        time.sleep(1)
    finished = time.time()
    busy = _cpu_busy(busy_before)
    _report_commands(_command_counts(store.redis), commands_before, args.jobs)
    print(f"machine CPU busy during the run: {busy:.0%} of {os.cpu_count()} cores", flush=True)
    time.sleep(3)  # retention here is 2 s: finished jobs' events and reports expire
    memory_after = store.redis.info("memory")["used_memory"]
    kept = _memory_by_kind(store.redis)
    _stop_fleet(procs)
    jobs = store.list(batch_id=batch.batch_id)
    runs = [json.loads(line) for line in (root / "runs.jsonl").read_text().splitlines()]
    _report_fleet(args, jobs, runs, submitted, finished, ideal, killed,
                  (memory_after - memory_before) / max(1, len(jobs)), kept / max(1, len(jobs)))  # fmt: skip


def _command_counts(client) -> dict[str, int]:
    """Calls per Redis command since the server started (INFO commandstats)."""
    return {name.removeprefix("cmdstat_"): int(stats["calls"])
            for name, stats in client.info("commandstats").items()}  # fmt: skip


def _report_commands(after: dict[str, int], before: dict[str, int], jobs: int) -> None:
    """Redis commands per job over the run, everything counted (workers, broker, heartbeats,
    the bench's own polling), and the commands that make up most of it."""
    calls = {name: n - before.get(name, 0) for name, n in after.items()}
    calls = {name: n for name, n in calls.items() if n > 0}
    total = sum(calls.values())
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:20]
    print(f"Redis commands per job {total / max(1, jobs):.0f} ({total} in all); most: "
          + ", ".join(f"{name} {n / max(1, jobs):.1f}" for name, n in top), flush=True)  # fmt: skip


def _cpu_busy(since: tuple[float, float] | None = None):
    """/proc/stat: (busy, total) jiffies now, or the busy fraction since an earlier reading."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle, total = fields[3] + fields[4], sum(fields)
    if since is None:
        return (total - idle, total)
    return ((total - idle) - since[0]) / max(1.0, total - since[1])


def _kill_a_training_worker(store: JobStore) -> str:
    from autotrain.fleet.registry import live_workers

    busy = [w.name for w in live_workers(store.redis) if w.jobs]
    if not busy:
        return "-"
    name = random.choice(busy)
    out = subprocess.run(
        ["pgrep", "-f", "--", f"--hostname {name} "], capture_output=True, text=True
    )
    for pid in out.stdout.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    print(f"  killed {name} (training {[w for w in busy if w == name] and 'yes'})", flush=True)
    return name


def _report_fleet(args, jobs, runs, submitted, finished, ideal, killed, bytes_per_job,
                  kept_per_job) -> None:  # fmt: skip
    ends: dict[str, int] = {}
    starts: dict[str, int] = {}
    for run in runs:
        bucket = ends if run["event"] == "end" else starts
        bucket[run["job"]] = bucket.get(run["job"], 0) + 1
    duplicates = sum(n - 1 for n in ends.values() if n > 1)
    lost = [j for j in jobs if j.state != JobState.SUCCEEDED]
    gaps = _dispatch_gaps(runs)
    makespan = finished - submitted
    print(f"jobs                  {len(jobs)}")
    print(f"trainer invocations   {sum(starts.values())} (kills: {len(killed)})")
    print(f"duplicates            {duplicates} (jobs trained to the end more than once)")
    print(
        f"jobs lost             {len(lost)}"
        + (f" e.g. {lost[0].id}: {lost[0].state} {lost[0].error}" if lost else "")
    )
    print(f"resumed jobs          {sum(1 for n in starts.values() if n > 1)}")
    print(f"makespan / ideal      {makespan:.0f} s / {ideal:.0f} s = {makespan / ideal:.3f}")
    if gaps:
        print(
            f"dispatch gap          p50 {_pct(gaps, 50):.2f} s, p99 {_pct(gaps, 99):.2f} s ({len(gaps)} gaps)"
        )
    print(
        f"Redis bytes per finished job (after retention): {kept_per_job:.0f} in its keys "
        f"(MEMORY USAGE); used_memory grew {bytes_per_job:.0f} per job"
    )
    hosts_right = sum(
        1 for j in jobs if j.host and j.train_worker and j.train_worker.endswith("@" + j.host)
    )
    print(f"host names where the job trained: {hosts_right}/{len(jobs)}", flush=True)


def _memory_by_kind(client) -> None:
    """Redis memory per kind of key (the first two parts of the name), largest first."""
    sizes: dict[str, list[int]] = {}
    for key in client.scan_iter(count=1000):
        kind = ":".join(key.split(":")[:2]) if ":" in key else key.split("-")[0]
        if key.startswith(keys.JOB_PREFIX):
            kind = keys.JOB_PREFIX + (key.split(":")[3] if key.count(":") > 2 else "<id>")
        sizes.setdefault(kind, []).append(client.memory_usage(key) or 0)
    rows = sorted(sizes.items(), key=lambda kv: -sum(kv[1]))[:8]
    print("Redis memory by key kind: " + ", ".join(
        f"{kind} {len(v)} keys {sum(v) / 1024:.0f} KiB" for kind, v in rows))  # fmt: skip
    per_job = (keys.JOB_PREFIX, "celery-task-meta")
    return sum(sum(v) for kind, v in sizes.items() if kind.startswith(per_job))


def _dispatch_gaps(runs: list[dict]) -> list[float]:
    """Per GPU: from a trainer's end to the next start, for every start but the last ones."""
    by_gpu: dict[tuple, list[tuple[float, str]]] = {}
    for run in runs:
        by_gpu.setdefault((run["worker_host"], run["gpu"]), []).append((run["t"], run["event"]))
    last_start = max(r["t"] for r in runs if r["event"] == "start")
    gaps = []
    for events in by_gpu.values():
        events.sort()
        for (t0, e0), (t1, e1) in zip(events, events[1:], strict=False):
            if e0 == "end" and e1 == "start" and t1 < last_start:
                gaps.append(t1 - t0)
    return gaps


def _pct(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


# --- part 2 ---------------------------------------------------------------------------------


def history_run(root: Path, url: str, env: dict[str, str], args) -> None:
    import redis

    from autotrain.jobs.reaper import reap
    from autotrain.settings import load_settings

    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushall()
    store = JobStore(client)
    settings = load_settings()
    procs = _start_fleet(root, env, 2, 2)
    _wait_for_workers(store, 6, 300)
    stored = 0
    print(
        "\nfinished jobs | reaper pass | idle fleet CPU | train list (SDK / CLI) | status (SDK / CLI) | workers listed"
    )
    for count in [int(c) for c in args.history.split(",")]:
        stored = _fill(client, stored, count)
        passes = []
        for _ in range(20):
            t0 = time.perf_counter()
            reap(store, settings)
            passes.append(time.perf_counter() - t0)
        cpu = _fleet_cpu(procs, 20.0)
        t0 = time.perf_counter()
        store.page(limit=50)
        list_sdk = time.perf_counter() - t0
        t0 = time.perf_counter()
        _status_sdk(store)
        status_sdk = time.perf_counter() - t0
        list_cli, _ = _timed_cli(env, "train", "list")
        status_cli, status_out = _timed_cli(env, "status")
        listed = sum(1 for line in status_out.splitlines() if "@h" in line)
        print(f"{count:>13} | {statistics.median(passes) * 1000:8.1f} ms | {cpu:11.1%} core | "
              f"{list_sdk:.3f} s / {list_cli:.2f} s | {status_sdk:.3f} s / {status_cli:.2f} s | "
              f"{listed}/6", flush=True)  # fmt: skip
    _stop_fleet(procs)


def _fill(client, stored: int, target: int) -> int:
    """Finished job records as the store keeps them (record, index entries), `target` in all."""
    now = time.time()
    for start in range(stored, target, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(target, start + 1000)):
            job_id = f"20260101-{i:06d}-{i % 4096:06x}"
            spec = JobSpec(dataset_path=f"/data/d{i}", name=f"d{i}", profile="Scale")
            record = {"id": job_id, "spec": spec, "state": "succeeded", "attempt": 1,
                      "created_at": now - 86400, "finished_at": now - 80000, "owner": "",
                      "host": "h0", "gpu": "0", "step": 16, "total": 16, "loss": 0.1,
                      "result": {"weights": f"/ws/output/d{i}/model/d{i}.safetensors"}}  # fmt: skip
            pipe.hset(keys.job(job_id), mapping=encode_fields(record))
            pipe.zadd(keys.JOBS, {job_id: now - 86400 + i * 1e-3})
        pipe.execute()
    return max(stored, target)


def _status_sdk(store: JobStore) -> None:
    from autotrain.fleet.registry import live_workers
    from autotrain.jobs.queue import queue_depths

    live_workers(store.redis)
    queue_depths(store)
    store.redis.info("memory")


def _timed_cli(env: dict[str, str], *command: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "autotrain.cli", *command], env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    return time.perf_counter() - t0, out.stdout


def _fleet_cpu(procs: list[subprocess.Popen], seconds: float) -> float:
    """CPU seconds per second used by every process of the fleet over `seconds`."""

    def total() -> float:
        used = 0.0
        for proc in procs:
            for pid in _tree(proc.pid):
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                    used += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
                except (OSError, IndexError):
                    pass
        return used

    before = total()
    time.sleep(seconds)
    return (total() - before) / seconds


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


if __name__ == "__main__":
    main()
