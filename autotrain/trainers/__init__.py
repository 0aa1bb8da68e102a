"""Trainer backends: how a profile's trainer is started, resumed and checked.

A backend never runs anything itself; phase 4 runs the argument list it returns as a child process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from autotrain.profile import Profile
from autotrain.settings import Settings
from autotrain.trainers.plan import TrainPlan
from autotrain.trainers.resume import ResumeLaunch, ResumeRecord

__all__ = ["TrainerBackend", "get_backend"]


class TrainerBackend(Protocol):
    name: str

    def command(
        self,
        plan: TrainPlan,
        profile: Profile,
        settings: Settings,
        gpu_ids: list[int],
        resume: ResumeLaunch | None = None,
    ) -> list[str]:
        """The trainer's argument list (never a shell string)."""

    def plan_resume(
        self, profile: Profile, plan: TrainPlan, state: Path, record: ResumeRecord, attempt: int
    ) -> ResumeLaunch:
        """How the trainer continues from a saved state (autotrain.trainers.resume)."""

    def versions(self, profile: Profile, settings: Settings) -> dict[str, str | None]:
        """What would run (trainer commit, library versions), for run.json and resume checks."""

    def launch_files(
        self, plan: TrainPlan, profile: Profile, gpu_ids: list[int]
    ) -> dict[Path, str]:
        """Files the launch reads (path -> text), written by phase 4 right before it starts."""

    def check(self, profile: Profile, settings: Settings) -> list[str]:
        """Problems that stop this profile from training on this host, each naming its fix."""


def get_backend(profile: Profile) -> TrainerBackend:
    if profile.backend == "tiny":
        from autotrain.trainers.tiny import TinyBackend

        return TinyBackend()
    from autotrain.trainers.kohya import KohyaBackend

    return KohyaBackend()
