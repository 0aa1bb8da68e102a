"""Stand-in for a GPU host, used only by tests: this machine has no NVIDIA GPU, so NVML discovery
is replaced by N made-up GPUs. Everything else is the real `autotrain worker` runtime: one real
Celery worker per "GPU" with CUDA_VISIBLE_DEVICES pinned, its own gpu.<host>.<i> queue, and the
prep worker. (The Tiny trainer then runs on the CPU, as torch sees no CUDA device.)

Usage: python tests/standins/gpu_host.py HOST N_GPUS [GIB,GIB,...]

The optional list gives each stand-in GPU's memory in GiB (default 24): what NVML's total would
say; free memory is then unknown to the worker, as where NVML cannot read it.
"""

from __future__ import annotations

import sys

from autotrain.settings import load_settings
from autotrain.worker.launch import Gpu, plan_workers, run_workers

host, count = sys.argv[1], int(sys.argv[2])
sizes = [float(g) for g in sys.argv[3].split(",")] if len(sys.argv) > 3 else [24.0] * count
gpus = [Gpu(i, f"GPU-standin-{i}", "stand-in GPU", int(sizes[i] * (1 << 30)), int(sizes[i] * (1 << 30)))
        for i in range(count)]  # fmt: skip
sys.exit(run_workers(plan_workers(load_settings(), host, gpus)))
