"""Stand-in trainer for bench/scale.py (not sd-scripts; it trains nothing).

Run as `<script> --config_file <toml>` (the kohya backend's command, without accelerate: see
scale.py). It prints sd-scripts' start block and a `steps` tqdm-format bar over
SCALE_TRAINER_SECONDS, writes `<output_dir>/<output_name>.safetensors`, and appends one line per
invocation (start and end) to SCALE_INVOCATIONS, which the bench counts.

With SCALE_SECONDS_PER_STEP (bench/eta.py) it trains at a pace instead: its steps are kohya's
count for batch size 1 (epochs x images x repeats of its dataset config), each taking that many
seconds give or take SCALE_JITTER (a fraction), after SCALE_STARTUP_SECONDS of silent loading
and before SCALE_SAVE_SECONDS of saving.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import time
import tomllib
from pathlib import Path


def main() -> int:
    config_file = sys.argv[sys.argv.index("--config_file") + 1]
    config: dict = {}
    for key, value in tomllib.loads(Path(config_file).read_text(encoding="utf-8")).items():
        config.update(value if isinstance(value, dict) else {key: value})
    name, output = config.get("output_name", "last"), Path(config["output_dir"])
    per_step = float(os.environ.get("SCALE_SECONDS_PER_STEP", "0"))
    _log("start", name)
    if per_step:
        steps = _kohya_steps(config)
        time.sleep(float(os.environ.get("SCALE_STARTUP_SECONDS", "0")))
        jitter, rng = float(os.environ.get("SCALE_JITTER", "0")), random.Random(name)
        times = [per_step * rng.uniform(1 - jitter, 1 + jitter) for _ in range(steps)]
    else:
        steps = int(config.get("max_train_steps") or 16)
        times = [float(os.environ.get("SCALE_TRAINER_SECONDS", "16")) / steps] * steps
    print("running training / 学習開始", flush=True)
    print(f"  total optimization steps / 学習ステップ数: {steps}", flush=True)
    started = time.monotonic()
    for step in range(1, steps + 1):
        time.sleep(max(0.0, started + sum(times[:step]) - time.monotonic()))
        elapsed = time.monotonic() - started
        sys.stderr.write(
            f"\rsteps: {100 * step // steps:3d}%|          | {step}/{steps} "
            f"[00:{int(elapsed):02d}<00:00, {step / max(elapsed, 1e-3):.2f}it/s, avr_loss=0.1]"
        )
        sys.stderr.flush()
    time.sleep(float(os.environ.get("SCALE_SAVE_SECONDS", "0")) if per_step else 0)
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{name}.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    print("\nmodel saved.", flush=True)
    _log("end", name)
    return 0


def _kohya_steps(config: dict) -> int:
    """epochs x images x repeats over the dataset config's subsets (batch size 1)."""
    if config.get("max_train_steps") and not config.get("max_train_epochs"):
        return int(config["max_train_steps"])
    dataset = tomllib.loads(Path(config["dataset_config"]).read_text(encoding="utf-8"))
    images = sum(
        len([p for p in Path(s["image_dir"]).iterdir() if p.suffix in (".png", ".jpg")])
        * int(s.get("num_repeats", 1))
        for d in dataset["datasets"] for s in d["subsets"]
    )  # fmt: skip
    return int(config["max_train_epochs"]) * images


def _log(event: str, name: str) -> None:
    line = json.dumps({"event": event, "job": name, "t": time.time(), "pid": os.getpid(),
                       "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "host": socket.gethostname(),
                       "worker_host": os.environ.get("AUTOTRAIN_HOST")})  # fmt: skip
    fd = os.open(os.environ["SCALE_INVOCATIONS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
