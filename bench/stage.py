"""Benchmark phases 1+2 (validate + stage) against a plain `cp -r` of the same dataset.

What it measures: a generated dataset of N images (default 2,000; 256x256, half JPEG, half PNG,
photo-like gradients with noise and shapes, each with a .txt caption) is
  (a) copied with `cp -r` (the floor: the bytes must be copied anyway), and
  (b) run through `validate_dataset` (every image read once, hashed and fully decoded, in worker
      processes) and `stage_dataset` (atomic copy into a fresh workspace's input/<name>/, each file
      re-hashed against validation, manifest written), with the built-in Tiny profile.
Wall and CPU time (this process plus its children) are both shown: on a shared machine the
wall times of file writes swing widely, the CPU time much less. Both read the same files from the page cache (the set is generated just before) and write into
fresh folders on the same filesystem. Each round runs both, alternating which goes first, with a
`sync`, a short pause and a read of the whole dataset before each timing, so earlier writes being
flushed do not land on the other and both start from a warm page cache. Reported: each round's
times and the ratio (b)/(a); the median is the figure. The target is a ratio of at most 1.5.
Imports and dataset generation are not timed. `--dir /dev/shm` takes the disk out of the picture
(a steadier figure of the CPU work) where the disk's write times swing.

Run from the repository root: `.venv/bin/python bench/stage.py [--images 2000] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autotrain.datasets.stage import stage_dataset  # noqa: E402
from autotrain.datasets.validate import validate_dataset  # noqa: E402
from autotrain.profile import load_profile  # noqa: E402
from autotrain.settings import Settings  # noqa: E402
from autotrain.spec import JobSpec  # noqa: E402
from autotrain.workspace import Workspace  # noqa: E402

SIZE = 256


def make_images(root: Path, start: int, stop: int) -> None:
    """Images start..stop-1: a rotated gradient, noise, and a coloured shape (no two alike)."""
    rng = random.Random(start)
    base = Image.linear_gradient("L").resize((SIZE, SIZE)).convert("RGB")
    for i in range(start, stop):
        noise = Image.effect_noise((SIZE, SIZE), 30 + i % 20).convert("RGB")
        image = Image.blend(base.rotate(rng.randint(0, 359)), noise, 0.3)
        colour = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
        box = sorted(rng.sample(range(SIZE), 2)), sorted(rng.sample(range(SIZE), 2))
        ImageDraw.Draw(image).ellipse([box[0][0], box[1][0], box[0][1], box[1][1]], fill=colour)
        stem = root / f"img_{i:05d}"
        if i % 2:
            image.save(stem.with_suffix(".jpg"), quality=90)
        else:
            image.save(stem.with_suffix(".png"))
        stem.with_suffix(".txt").write_text(
            f"a photo with a shape of colour {colour}, number {i}\n"
        )


def make_dataset(root: Path, count: int) -> None:
    root.mkdir(parents=True)
    step = 100
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        jobs = [
            pool.submit(make_images, root, i, min(i + step, count)) for i in range(0, count, step)
        ]
        for job in jobs:
            job.result()


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (cp, decoding workers)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def time_cp(source: Path, dest: Path) -> tuple[float, float]:
    """(wall, cpu) seconds of `cp -r`."""
    cpu, start = cpu_seconds(), time.perf_counter()
    subprocess.run(["cp", "-r", str(source), str(dest)], check=True)
    return time.perf_counter() - start, cpu_seconds() - cpu


def time_autotrain(source: Path, workspace: Path) -> tuple[float, float, float]:
    """(validate wall, stage wall, total cpu) seconds."""
    profile = load_profile("Tiny")
    settings = Settings(workspace=workspace, min_free_disk_gb=0.0)
    spec = JobSpec.for_dataset(source, "Tiny", name="bench")
    cpu, start = cpu_seconds(), time.perf_counter()
    report = validate_dataset(spec, settings, profile)
    report.raise_for_errors()
    middle = time.perf_counter()
    result = stage_dataset(report, Workspace(workspace))
    end = time.perf_counter()
    assert result.files_copied == 2 * len(report.images), result
    return middle - start, end - middle, cpu_seconds() - cpu


def settle(source: Path) -> None:
    """Flush earlier writes, then read the dataset so both contenders start from a warm cache."""
    subprocess.run(["sync"], check=True)
    time.sleep(0.5)
    for path in source.iterdir():
        path.read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to put the files (default: the temp dir)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="autotrain-bench-", dir=args.dir) as tmp:
        base = Path(tmp)
        source = base / "dataset"
        start = time.perf_counter()
        make_dataset(source, args.images)
        size = sum(p.stat().st_size for p in source.iterdir())
        print(
            f"dataset: {args.images} images + captions, {size / 1e6:.1f} MB, "
            f"generated in {time.perf_counter() - start:.1f}s; cores: {len(os.sched_getaffinity(0))}"
        )
        time_cp(source, base / "warmup")  # bring every file into the page cache
        ratios = []
        for round_ in range(args.rounds):
            results: dict[str, tuple[float, ...]] = {}
            order = ["cp", "autotrain"] if round_ % 2 == 0 else ["autotrain", "cp"]
            for which in order:
                settle(source)
                if which == "cp":
                    results["cp"] = time_cp(source, base / f"cp-{round_}")
                else:
                    results["autotrain"] = time_autotrain(source, base / f"ws-{round_}")
            validate, stage, cpu = results["autotrain"]
            cp_wall, cp_cpu = results["cp"]
            ratio = (validate + stage) / cp_wall
            ratios.append(ratio)
            print(
                f"round {round_ + 1}: cp -r {cp_wall:.3f}s (cpu {cp_cpu:.2f}s) | validate "
                f"{validate:.3f}s + stage {stage:.3f}s = {validate + stage:.3f}s (cpu {cpu:.2f}s)"
                f" | ratio {ratio:.2f}"
            )
            shutil.rmtree(base / f"cp-{round_}")
            shutil.rmtree(base / f"ws-{round_}")
        median = statistics.median(ratios)
        verdict = "meets" if median <= 1.5 else "misses"
        print(f"median ratio {median:.2f}, best {min(ratios):.2f} ({verdict} the 1.5x target)")


if __name__ == "__main__":
    main()
