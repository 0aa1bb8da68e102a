"""The kohya-ss sd-scripts backend: `accelerate launch <script> --config_file <job toml>`.

GPU selection: `gpu_ids` are physical GPU indices (PCI bus order) of the job: the worker's own
GPU, or the GPUs the job is pinned to. accelerate's launcher copies `--gpu_ids` into the child's
CUDA_VISIBLE_DEVICES, so they must be physical ids, never indices local to a restricted view;
the worker sets the same CUDA_VISIBLE_DEVICES, so both agree.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from autotrain.errors import ConfigError
from autotrain.plan import TrainPlan
from autotrain.profile import Profile
from autotrain.settings import CONFIG_FILE_NAME, ENV_PREFIX, Settings

__all__ = ["KohyaBackend", "setting_hint"]


class KohyaBackend:
    """Builds sd-scripts command lines and checks that a host can run a kohya profile."""

    name = "kohya"

    def command(
        self,
        plan: TrainPlan,
        profile: Profile,
        settings: Settings,
        gpu_ids: list[int],
        resume_from: Path | None = None,
    ) -> list[str]:
        """`python -m accelerate.commands.launch ... <script> --config_file <toml> [--resume DIR]`.

        `gpu_ids` are physical ids; several run data-parallel. See the module doc.
        """
        script = self._script_path(profile, settings)
        processes = max(1, len(gpu_ids))
        command = [
            settings.python_for_sd_scripts,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            str(processes),
        ]
        if processes > 1:
            command.append("--multi_gpu")
        if gpu_ids:
            command += ["--gpu_ids", ",".join(str(g) for g in gpu_ids)]
        command += [
            # explicit values keep accelerate from warning that it guessed them
            "--num_machines",
            "1",
            "--dynamo_backend",
            "no",
            "--num_cpu_threads_per_process",
            "2",
            "--mixed_precision",
            profile.mixed_precision,
            str(script),
            "--config_file",
            str(plan.config_path),
        ]
        if resume_from is not None:
            command += ["--resume", str(resume_from)]
        return command

    def check(self, profile: Profile, settings: Settings) -> list[str]:
        """Problems that stop `profile` from training here; each names the setting and the fix."""
        problems = self.check_sd_scripts(profile, settings)
        problems += self.check_python(settings)
        problems += self.check_models(profile, settings)
        return problems

    def check_sd_scripts(self, profile: Profile, settings: Settings) -> list[str]:
        directory = settings.sd_scripts_dir
        if directory is None:
            return [
                f"sd_scripts_dir is not set: profile {profile.name} runs kohya-ss sd-scripts. "
                "Clone https://github.com/kohya-ss/sd-scripts and "
                f"{setting_hint('sd_scripts_dir')}."
            ]
        if not Path(directory).is_dir():
            return [
                f"sd_scripts_dir {directory} is not a directory: point "
                f"{ENV_PREFIX}SD_SCRIPTS_DIR (or sd_scripts_dir in {CONFIG_FILE_NAME}) at a "
                "kohya-ss sd-scripts checkout."
            ]
        if not profile.script:
            return [
                f'Profile {profile.name} names no sd-scripts script: add script = "..." to '
                f"{profile.directory / 'profile.toml'}."
            ]
        if not (Path(directory) / profile.script).is_file():
            return [
                f"{profile.script} not found in sd_scripts_dir {directory}: profile {profile.name} "
                "needs it; update the checkout (git pull) to a version that has it."
            ]
        return []

    def check_python(self, settings: Settings) -> list[str]:
        python = settings.python_for_sd_scripts
        if os.sep in python or (os.altsep and os.altsep in python):
            if not Path(python).is_file():
                return [
                    f"sd_scripts_python {python} not found: point {ENV_PREFIX}SD_SCRIPTS_PYTHON "
                    "at the python of the sd-scripts virtual environment (e.g. "
                    "sd-scripts/venv/bin/python)."
                ]
            if not os.access(python, os.X_OK):
                return [
                    f"sd_scripts_python {python} is not executable: chmod +x it or fix the path."
                ]
        elif shutil.which(python) is None:
            return [
                f"sd_scripts_python {python!r} is not on PATH: set {ENV_PREFIX}SD_SCRIPTS_PYTHON "
                "to the full path of the sd-scripts virtual environment's python."
            ]
        return []

    def check_models(self, profile: Profile, settings: Settings) -> list[str]:
        problems = []
        for key, field in profile.models.items():
            value = getattr(settings, field, None)
            if value is None:
                problems.append(
                    f"{field} ({ENV_PREFIX}{field.upper()}) is not set: profile {profile.name} "
                    f"needs it for {key}; {setting_hint(field)}."
                )
            elif not Path(value).is_file():
                problems.append(
                    f"{field} ({ENV_PREFIX}{field.upper()}) file not found: {value}; profile "
                    f"{profile.name} needs it for {key}. Download it or fix the path."
                )
        return problems

    def _script_path(self, profile: Profile, settings: Settings) -> Path:
        if settings.sd_scripts_dir is None or not profile.script:
            problems = self.check_sd_scripts(profile, settings)
            raise ConfigError(problems[0] if problems else "sd-scripts is not configured.")
        return Path(settings.sd_scripts_dir) / profile.script


def setting_hint(field: str) -> str:
    """How to set one setting, naming the env var and the config file key."""
    description = Settings.model_fields[field].description or field
    return (
        f'set {ENV_PREFIX}{field.upper()} or `{field} = "/path"` in the workspace '
        f"{CONFIG_FILE_NAME} ({description})"
    )
