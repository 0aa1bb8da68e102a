"""autotrain: folders of captioned images in, trained diffusion models out, on every GPU you have.

Everything the `autotrain` command does is a plain function here, each needing nothing called
before it (settings default to the AUTOTRAIN_* environment and the workspace):

    from autotrain import run_pipeline, list_jobs, hold_job, release_job, cancel_job, retry_job
    job = run_pipeline("examples/datasets/tiny_shapes", "Tiny")
    print([j.state for j in list_jobs(state="queued")])

The names load on first use, so `import autotrain` (and `autotrain --help`) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# The public names, by the module that defines them (loaded on first use).
_MODULES: dict[str, tuple[str, ...]] = {
    "pipeline": ("prepare_pipeline", "prepare_batch", "run_pipeline", "run_batch_pipeline"),
    "control": (
        "cancel_job", "cancel_batch", "retry_job", "resume_job", "retry_batch", "hold_job",
        "release_job", "move_job", "prune_jobs", "list_jobs", "get_job", "show_job",
        "job_logs", "job_forecasts",
    ),
    "status": ("fleet_status", "fleet_workers"),
    "monitor": ("watch_job", "watch_batch"),
    "errors": (
        "AutotrainError", "NoSuchJob", "AmbiguousJobId", "NameInUse", "JobNotFinal",
        "RedisUnavailable",
    ),
}  # fmt: skip
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'autotrain' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"autotrain.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
