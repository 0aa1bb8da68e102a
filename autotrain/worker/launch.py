"""Host-side workers: one Celery worker process per GPU, pinned with CUDA_VISIBLE_DEVICES.

`run_workers` discovers the GPUs (nvidia-ml-py, PCI bus order), starts a concurrency-1 worker
`gpu<i>@<host>` per GPU (or `cpu@<host>` without a driver) plus `prep@<host>` for phases 1-3 and 5,
and supervises them: a worker that dies is restarted; SIGTERM/SIGINT stops them all.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from autotrain.jobs.celery_app import GPU_QUEUE, PREP_ONGOING_QUEUE, PREP_QUEUE, gpu_queue_name
from autotrain.settings import Settings

__all__ = [
    "Gpu",
    "WorkerProcess",
    "discover_gpus",
    "compute_processes",
    "gpu_memory",
    "driver_version",
    "plan_workers",
    "run_workers",
]

log = logging.getLogger(__name__)


@dataclass
class Gpu:
    index: int
    uuid: str
    name: str
    memory_total: int
    memory_free: int


@dataclass
class WorkerProcess:
    """One Celery worker to start: its node name, queues and environment."""

    name: str
    queues: list[str]
    concurrency: int = 1
    env: dict[str, str] = field(default_factory=dict)
    # Prep tasks run in threads so that validation may start its own decoding processes
    # (a prefork pool child is daemonic and may not have children).
    pool: str = "prefork"

    def kill_leftover_trainers(self) -> list[str]:
        """After this worker died: kill what is left of the trainer it ran (see autotrain.trainers.guard)."""
        from autotrain.trainers.guard import device_records, kill_recorded_trainers
        from autotrain.workspace import Workspace

        workspace, host = self.env.get("AUTOTRAIN_WORKSPACE"), self.env.get("AUTOTRAIN_HOST")
        if not workspace or not host or "AUTOTRAIN_GPU_INDEX" not in self.env:
            return []  # the prep worker runs no trainer
        gpu = self.env["AUTOTRAIN_GPU_INDEX"]
        records = device_records(Workspace(workspace).state_dir, host, [int(gpu)] if gpu else [])
        return kill_recorded_trainers(records)

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "autotrain.jobs.celery_app", "worker",
            "--hostname", self.name,
            "--queues", ",".join(self.queues),
            "--concurrency", str(self.concurrency),
            "--pool", self.pool,
            "--optimization", "fair",
            "--without-gossip", "--without-mingle",
            "--task-events",
            "--loglevel", "INFO",
        ]  # fmt: skip


def discover_gpus() -> tuple[list[Gpu], str | None]:
    """The NVIDIA GPUs of this host in PCI bus order, or ([], why not)."""
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py is not installed"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [], f"no NVIDIA driver ({exc})"
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                Gpu(index, _text(pynvml.nvmlDeviceGetUUID(handle)), _text(pynvml.nvmlDeviceGetName(handle)),
                    memory.total, memory.free)
            )  # fmt: skip
        return gpus, None if gpus else "the NVIDIA driver reports no GPU"
    finally:
        pynvml.nvmlShutdown()


def gpu_memory(index: int | None = None) -> tuple[int, int | None] | None:
    """(total, free) bytes of this worker's GPU (or GPU `index`), measured through NVML.

    Where NVML cannot read it (a stand-in GPU in tests), the total its supervisor discovered
    (AUTOTRAIN_GPU_MEMORY_TOTAL) with free unknown; None for a CPU worker.
    """
    if index is None:
        raw = os.environ.get("AUTOTRAIN_GPU_INDEX", "")
        if not raw:
            return None
        index = int(raw)
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
            return int(info.total), int(info.free)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no package, no driver, no such GPU
        total = os.environ.get("AUTOTRAIN_GPU_MEMORY_TOTAL")
        return (int(total), None) if total else None


def gpu_health(index: int) -> dict[str, float]:
    """Utilisation (%) and temperature (°C) of GPU `index` as NVML reports them; {} without."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            return {
                "utilization": float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                "temperature": float(
                    pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
                ),
            }
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no package, no driver, not supported by this GPU
        return {}


def compute_processes(indices: list[int]) -> list[tuple[int, int, int]]:
    """(gpu, pid, MiB used) of every compute process NVML sees on these GPUs; [] without a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no package, no driver: nothing to check
        return []
    found = []
    try:
        for index in indices:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                found.append((index, proc.pid, (proc.usedGpuMemory or 0) >> 20))
    except pynvml.NVMLError as exc:
        log.warning("NVML could not list the processes of GPUs %s: %s", indices, exc)
    finally:
        pynvml.nvmlShutdown()
    return found


def driver_version() -> str | None:
    """The NVIDIA driver version, None without a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no package, no driver
        return None
    try:
        return _text(pynvml.nvmlSystemGetDriverVersion())
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()


def plan_workers(
    settings: Settings,
    host: str,
    gpus: list[Gpu],
    *,
    use_cpu: bool = False,
    consume_prep: bool = True,
) -> list[WorkerProcess]:
    """The worker processes this host should run."""
    base_env = {"AUTOTRAIN_WORKSPACE": str(settings.workspace), "AUTOTRAIN_HOST": host}
    workers: list[WorkerProcess] = []
    if use_cpu or not gpus:
        workers.append(
            WorkerProcess(
                f"cpu@{host}",
                [gpu_queue_name(host, "cpu"), GPU_QUEUE],  # its own queue first
                env={**base_env, "CUDA_VISIBLE_DEVICES": "", "AUTOTRAIN_GPU_INDEX": ""},
            )
        )
    else:
        for gpu in gpus:
            env = {
                **base_env,
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                "CUDA_VISIBLE_DEVICES": str(gpu.index),
                "AUTOTRAIN_GPU_INDEX": str(gpu.index),
                "AUTOTRAIN_GPU_UUID": gpu.uuid,
                "AUTOTRAIN_GPU_NAME": gpu.name,
                "AUTOTRAIN_GPU_MEMORY_TOTAL": str(gpu.memory_total),
            }
            workers.append(
                WorkerProcess(
                    f"gpu{gpu.index}@{host}", [gpu_queue_name(host, gpu.index), GPU_QUEUE],
                    concurrency=settings.max_jobs_per_gpu, env=env,
                )
            )  # fmt: skip
    if consume_prep:
        workers.append(
            WorkerProcess(
                f"prep@{host}",
                [PREP_ONGOING_QUEUE, PREP_QUEUE],  # jobs under way before new validations
                concurrency=2,
                pool="threads",
                env={**base_env, "CUDA_VISIBLE_DEVICES": ""},
            )
        )
    return workers


def run_workers(workers: list[WorkerProcess], say=print, stop_timeout: float = 10.0,
                going_away: Callable[[], bool] | None = None,
                on_stop: Callable[[], None] | None = None) -> int:  # fmt: skip
    """Start the workers and keep them running until SIGTERM/SIGINT, or until `going_away()`
    (a drain asked from anywhere); returns an exit code.

    Stopping, `on_stop()` first tells the running jobs to give themselves back (the host's drain
    flag), then each worker stops taking jobs and gets `stop_timeout` seconds to hand back.
    """
    stopping = threading.Event()
    procs: dict[str, subprocess.Popen] = {}
    restarts: dict[str, list[float]] = {w.name: [] for w in workers}

    def start(worker: WorkerProcess) -> None:
        env = {**os.environ, **worker.env}
        procs[worker.name] = subprocess.Popen(worker.argv(), env=env, stdin=subprocess.DEVNULL)
        say(
            f"started {worker.name} (pid {procs[worker.name].pid}) on queues {', '.join(worker.queues)}"
        )

    def request_stop(signum, _frame) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    for worker in workers:
        start(worker)
    ticks = 0
    while not stopping.wait(0.5):
        ticks += 1
        if going_away is not None and ticks % 4 == 0 and going_away():
            say("asked to drain: giving the running jobs back and stopping")
            break
        for worker in workers:
            code = procs[worker.name].poll()
            if code is None or stopping.is_set():
                continue
            for line in worker.kill_leftover_trainers():
                say(f"{worker.name}: {line}")
            recent = [t for t in restarts[worker.name] if time.time() - t < 60]
            restarts[worker.name] = recent + [time.time()]
            if len(recent) >= 5:
                say(
                    f"{worker.name} exited with {code} five times in a minute; stopping all workers"
                )
                stopping.set()
                break
            say(f"{worker.name} exited with {code}; restarting it")
            start(worker)
    if on_stop is not None:
        on_stop()
    _stop_all(procs, say, stop_timeout)
    for worker in workers:
        for line in worker.kill_leftover_trainers():
            say(f"{worker.name}: {line}")
    return 0


def _stop_all(procs: dict[str, subprocess.Popen], say, timeout: float) -> None:
    """Warm shutdown first; a worker still busy after `timeout` gets a cold one.

    A training job gives itself back first (the drain flag); one cut short by the cold
    shutdown keeps its checkpoints, and the reaper re-queues it once its lease expires.
    """
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for name, proc in procs.items():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"{name} still busy after {timeout:.0f}s; stopping it now")
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
