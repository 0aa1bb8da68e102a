"""STAND-IN for nvidia-ml-py's `pynvml`, used only by tests: this machine has no NVIDIA driver.

Put this folder first on PYTHONPATH and `import pynvml` finds it instead of the real package;
autotrain's own NVML code then runs unchanged. The GPUs are described by the JSON file named in
STANDIN_NVML_FILE, read at every call so that a test can change a GPU's memory while workers
run: {"driver": "570.86.15", "gpus": [{"name": ..., "uuid": ..., "total_gib": 24,
"used_gib": 20, "processes": [{"pid": 4242, "used_gib": 20}]}]}.

Only the calls autotrain makes exist, each shaped as in nvidia-ml-py 13.615 (pynvml.py):
`NVMLError(value)` with `.value` (:1037), `nvmlDeviceGetMemoryInfo` returning a structure with
`total`, `free` and `used` in bytes (c_nvmlMemory_t, :1386, :3993), names and UUIDs as `str`
(the `convertStrBytes` wrapper, :3431, :3588), running processes as objects with `pid` and
`usedGpuMemory` in bytes (:4228), utilisation as a structure with `gpu` and `memory` percent
(c_nvmlUtilization_t, :1500, :4079), and the temperature of sensor NVML_TEMPERATURE_GPU (0, :82)
in °C (:3876).
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

NVML_TEMPERATURE_GPU = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_DRIVER_NOT_LOADED = 9

_GIB = 1 << 30
_initialized = 0


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {1: "Uninitialized", 2: "Invalid Argument", 9: "Driver Not Loaded"}.get(
            self.value, "Unknown Error"
        )


def _gpus() -> list[dict]:
    path = os.environ.get("STANDIN_NVML_FILE")
    if not path or not os.path.exists(path):
        raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)["gpus"]


def _device(handle: int) -> dict:
    if not _initialized:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    gpus = _gpus()
    if not 0 <= handle < len(gpus):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return gpus[handle]


def nvmlInit() -> None:
    global _initialized
    _gpus()  # no file: no driver, as nvmlInit fails on a machine without one
    _initialized += 1


def nvmlShutdown() -> None:
    global _initialized
    _initialized = max(0, _initialized - 1)


def nvmlSystemGetDriverVersion() -> str:
    path = os.environ["STANDIN_NVML_FILE"]
    with open(path, encoding="utf-8") as handle:
        return json.load(handle).get("driver", "570.86.15")


def nvmlDeviceGetCount() -> int:
    return len(_gpus())


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    _device(index)
    return index


def nvmlDeviceGetName(handle: int) -> str:
    return _device(handle).get("name", "NVIDIA GeForce RTX 4090")


def nvmlDeviceGetUUID(handle: int) -> str:
    return _device(handle).get("uuid", f"GPU-standin-{handle}")


def nvmlDeviceGetMemoryInfo(handle: int, version: int | None = None) -> SimpleNamespace:
    gpu = _device(handle)
    total, used = int(gpu["total_gib"] * _GIB), int(gpu.get("used_gib", 0) * _GIB)
    return SimpleNamespace(total=total, free=total - used, used=used)


def nvmlDeviceGetComputeRunningProcesses(handle: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(pid=p["pid"], usedGpuMemory=int(p["used_gib"] * _GIB))
            for p in _device(handle).get("processes", [])]  # fmt: skip


def nvmlDeviceGetUtilizationRates(handle: int) -> SimpleNamespace:
    gpu = _device(handle)
    return SimpleNamespace(gpu=gpu.get("utilization", 0), memory=gpu.get("memory_utilization", 0))


def nvmlDeviceGetTemperature(handle: int, sensor: int) -> int:
    if sensor != NVML_TEMPERATURE_GPU:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return _device(handle).get("temperature", 40)
