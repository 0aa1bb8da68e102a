"""The built-in Tiny trainer backend: `python -u -m autotrain.tiny_trainer --config_file <toml>`.

It runs in autotrain's own Python on the CPU, or on the one GPU the worker made visible. The
orchestrator never imports torch: `check` only asks whether the packages are installed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from autotrain.plan import TrainPlan
from autotrain.profile import Profile
from autotrain.settings import Settings

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
        resume_from: Path | None = None,
    ) -> list[str]:
        """Unbuffered (`-u`) so every progress line reaches the worker the moment it is written.

        Tiny trains on one device: with several `gpu_ids` it uses the first visible GPU.
        """
        command = [sys.executable, "-u", "-m", TINY_MODULE, "--config_file", str(plan.config_path)]
        if resume_from is not None:
            command += ["--resume", str(resume_from)]
        return command

    def check(self, profile: Profile, settings: Settings) -> list[str]:
        missing = [name for name in TINY_REQUIREMENTS if importlib.util.find_spec(name) is None]
        if missing:
            return [f"{MISSING_EXTRA_MESSAGE}; missing here: {', '.join(missing)}."]
        return []
