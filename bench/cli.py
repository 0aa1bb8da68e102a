"""How fast the command starts: `autotrain --help`, `train list` and `status` against
`celery --help`, in one run, on one machine.

    python bench/cli.py [--runs 15] [--jobs 200]

A temporary workspace gets the embedded Redis (no workers) and `--jobs` job records, so that
`train list` shows a full page and `status` has something to count. Each command runs `--runs`
times, interleaved with the others so that a busy machine slows them alike; the median wall
time of each is reported with its ratio to `celery --help` (Celery's own start, the floor of
every worker). Target: `autotrain --help` <= 0.5x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autotrain.fleet import cluster  # noqa: E402
from autotrain.jobs.connection import job_store  # noqa: E402
from autotrain.settings import load_settings  # noqa: E402
from autotrain.spec import JobSpec  # noqa: E402

BIN = Path(sys.executable).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp) / "ws"
        settings = load_settings(workspace)
        cluster.up(settings, workers=False)
        try:
            store = job_store(settings)
            for index in range(args.jobs):
                spec = JobSpec(dataset_path=f"/data/set{index}", name=f"set{index}", profile="Tiny")
                store.create(spec)
            env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOTRAIN_")}
            env["AUTOTRAIN_WORKSPACE"] = str(workspace)
            commands = {
                "celery --help": [str(BIN / "celery"), "--help"],
                "autotrain --help": [str(BIN / "autotrain"), "--help"],
                "autotrain train list": [str(BIN / "autotrain"), "train", "list"],
                "autotrain status": [str(BIN / "autotrain"), "status"],
            }
            times = {name: [] for name in commands}
            for _ in range(args.runs):
                for name, argv in commands.items():
                    started = time.perf_counter()
                    subprocess.run(argv, env=env, cwd=workspace, check=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
                    times[name].append(time.perf_counter() - started)
        finally:
            cluster.down(settings)
    base = statistics.median(times["celery --help"])
    print(f"{'command':24} {'median':>8} {'min':>8}  vs celery --help")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"{name:24} {median * 1000:6.0f}ms {min(runs) * 1000:6.0f}ms  {median / base:.2f}x")
    ratio = statistics.median(times["autotrain --help"]) / base
    print(f"target autotrain --help <= 0.5x: {'met' if ratio <= 0.5 else 'NOT met'} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
