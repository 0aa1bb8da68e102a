"""Trainer backends: how a profile's trainer is started, resumed and checked.

A backend never runs anything itself; phase 4 runs the argument list it returns as a child process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from autotrain.plan import TrainPlan
from autotrain.profile import Profile
from autotrain.settings import Settings

__all__ = ["TrainerBackend", "get_backend", "newest_state_dir"]


class TrainerBackend(Protocol):
    name: str

    def command(
        self,
        plan: TrainPlan,
        profile: Profile,
        settings: Settings,
        gpu_ids: list[int],
        resume_from: Path | None = None,
    ) -> list[str]:
        """The trainer's argument list (never a shell string)."""

    def check(self, profile: Profile, settings: Settings) -> list[str]:
        """Problems that stop this profile from training on this host, each naming its fix."""


def get_backend(profile: Profile) -> TrainerBackend:
    if profile.backend == "tiny":
        from autotrain.trainers.tiny import TinyBackend

        return TinyBackend()
    from autotrain.trainers.kohya import KohyaBackend

    return KohyaBackend()


def newest_state_dir(model_dir: Path, since: float | None = None) -> Path | None:
    """The newest `*-state` directory (kohya's save_state layout, which Tiny follows too).

    `since` (a timestamp) ignores states older than the job: a new job for a dataset name
    trained before must start afresh, not resume the earlier job's run.
    """
    if not model_dir.is_dir():
        return None
    states = [
        p
        for p in model_dir.iterdir()
        if p.is_dir()
        and p.name.endswith("-state")
        and (since is None or p.stat().st_mtime >= since)
    ]
    return max(states, key=lambda p: p.stat().st_mtime_ns, default=None)
