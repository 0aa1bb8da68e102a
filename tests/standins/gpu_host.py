"""Stand-in for a GPU host, used only by tests: this machine has no NVIDIA GPU, so NVML discovery
is replaced by N made-up GPUs. Everything else is the real `autotrain worker` runtime: one real
Celery worker per "GPU" with CUDA_VISIBLE_DEVICES pinned, its own gpu.<host>.<i> queue, and the
prep worker. (The Tiny trainer then runs on the CPU, as torch sees no CUDA device.)

Usage: python tests/standins/gpu_host.py HOST N_GPUS
"""

from __future__ import annotations

import sys

from autotrain.settings import load_settings
from autotrain.worker import Gpu, plan_workers, run_workers

host, count = sys.argv[1], int(sys.argv[2])
gpus = [Gpu(i, f"GPU-standin-{i}", "stand-in GPU", 24 << 30, 24 << 30) for i in range(count)]
sys.exit(run_workers(plan_workers(load_settings(), host, gpus)))
