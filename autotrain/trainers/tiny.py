"""The built-in Tiny trainer backend: `python -u -m autotrain.tiny_trainer --config_file <toml>`.

It runs in autotrain's own Python on the CPU, or on the one GPU the worker made visible. The
orchestrator never imports torch: `check` only asks whether the packages are installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path

from autotrain.profile import Profile
from autotrain.settings import Settings
from autotrain.trainers.plan import TrainPlan
from autotrain.trainers.resume import ResumeLaunch, ResumeRecord, state_step

__all__ = ["TinyBackend", "TINY_MODULE", "TINY_REQUIREMENTS", "MISSING_EXTRA_MESSAGE"]

TINY_MODULE = "autotrain.tiny_trainer"
TINY_REQUIREMENTS = ("torch", "diffusers", "peft", "safetensors", "numpy", "tqdm")
MISSING_EXTRA_MESSAGE = (
    "The Tiny trainer needs the 'tiny' extra: pip install 'autotrain[tiny]' "
    "(torch, diffusers, peft, safetensors)"
)


class TinyBackend:
    """Command lines and host checks for profiles with `backend = "tiny"`."""

    name = "tiny"

    def command(
        self,
        plan: TrainPlan,
        profile: Profile,
        settings: Settings,
        gpu_ids: list[int],
        resume: ResumeLaunch | None = None,
    ) -> list[str]:
        """Unbuffered (`-u`) so every progress line reaches the worker the moment it is written.

        Tiny trains on one device: with several `gpu_ids` it uses the first visible GPU.
        """
        command = [sys.executable, "-u", "-m", TINY_MODULE, "--config_file", str(plan.config_path)]
        if resume is not None:
            command += resume.extra_args
        return command

    def plan_resume(
        self, profile: Profile, plan: TrainPlan, state: Path, record: ResumeRecord, attempt: int
    ) -> ResumeLaunch:
        """Tiny restores the step itself and continues exactly (tiny_trainer/state.py)."""
        step = state_step(state) or 0
        return ResumeLaunch(state=state, saved_step=step, extra_args=["--resume", str(state)],
                            note=f"continues at step {step}")  # fmt: skip

    def versions(self, profile: Profile, settings: Settings) -> dict[str, str | None]:
        from autotrain import __version__

        found: dict[str, str | None] = {"autotrain": __version__}
        for name in ("torch", "diffusers", "peft"):
            try:
                found[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                found[name] = None
        return found

    def launch_files(
        self, plan: TrainPlan, profile: Profile, gpu_ids: list[int]
    ) -> dict[Path, str]:
        return {}

    def check(self, profile: Profile, settings: Settings) -> list[str]:
        missing = [name for name in TINY_REQUIREMENTS if importlib.util.find_spec(name) is None]
        if missing:
            return [f"{MISSING_EXTRA_MESSAGE}; missing here: {', '.join(missing)}."]
        return []
