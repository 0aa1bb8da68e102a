"""The kohya-ss sd-scripts backend: `accelerate launch <script> --config_file <job toml>`.

GPU selection: `gpu_ids` are physical GPU indices (PCI bus order) of the job: the worker's own
GPU, or the GPUs the job is pinned to. accelerate's launcher copies `--gpu_ids` into the child's
CUDA_VISIBLE_DEVICES (accelerate utils/launch.py, prepare_simple_launcher_cmd_env and
prepare_multi_gpu_env), so they must be physical ids, never indices local to a restricted view;
the worker sets the same CUDA_VISIBLE_DEVICES, so both agree.

The launch is autotrain's own: every job gets an accelerate config file of its own
(`output/<name>/log/accelerate.json`, passed as accelerate's `--config_file`, which replaces the
user's `default_config.yaml` entirely: accelerate commands/launch.py `_validate_launch_command`).
Without it, a `default_config.yaml` that says `distributed_type: MULTI_GPU` (what `accelerate
config default` writes on a host with two GPUs) turns multi-GPU on whatever `--num_processes`
says, and a single-GPU launch fails with "Less than two GPU ids were configured".
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from autotrain.errors import ConfigError
from autotrain.profile import Profile
from autotrain.settings import CONFIG_FILE_NAME, ENV_PREFIX, Settings
from autotrain.trainers.plan import TrainPlan
from autotrain.trainers.resume import ResumeLaunch, ResumeRecord, plan_resume

__all__ = ["KohyaBackend", "setting_hint", "git_commit"]


class KohyaBackend:
    """Builds sd-scripts command lines and checks that a host can run a kohya profile."""

    name = "kohya"

    def command(
        self,
        plan: TrainPlan,
        profile: Profile,
        settings: Settings,
        gpu_ids: list[int],
        resume: ResumeLaunch | None = None,
    ) -> list[str]:
        """`python -m accelerate.commands.launch ... <script> --config_file <toml> [resume args]`.

        `gpu_ids` are physical ids; several run data-parallel. See the module doc.
        """
        script = self._script_path(profile, settings)
        processes = max(1, len(gpu_ids))
        command = [
            settings.python_for_sd_scripts,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(accelerate_config_path(plan)),
            "--num_processes",
            str(processes),
        ]
        if processes > 1:
            # a port of its own, so two multi-GPU jobs on one host never meet on 29500
            command += ["--multi_gpu", "--main_process_port", str(_free_port())]
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
        if resume is not None:
            command += resume.extra_args
        return command

    def plan_resume(
        self, profile: Profile, plan: TrainPlan, state: Path, record: ResumeRecord, attempt: int
    ) -> ResumeLaunch:
        """How this profile's script continues from `state` (see autotrain.trainers.resume)."""
        return plan_resume(profile.script or "", state, plan.config, record, attempt)

    def versions(self, profile: Profile, settings: Settings) -> dict[str, str | None]:
        """What would run: the sd-scripts commit and the trainer Python's accelerate and torch."""
        found: dict[str, str | None] = {
            "sd_scripts_commit": None,
            "accelerate": None,
            "torch": None,
        }
        if settings.sd_scripts_dir is not None:
            found["sd_scripts_commit"] = git_commit(Path(settings.sd_scripts_dir))
        found.update(_library_versions(settings.python_for_sd_scripts))
        return found

    def launch_files(
        self, plan: TrainPlan, profile: Profile, gpu_ids: list[int]
    ) -> dict[Path, str]:
        """The accelerate config of this launch; phase 4 writes it just before starting."""
        processes = max(1, len(gpu_ids))
        config = {
            "compute_environment": "LOCAL_MACHINE",
            "distributed_type": "MULTI_GPU" if processes > 1 else "NO",
            "num_processes": processes,
            "num_machines": 1,
            "machine_rank": 0,
            "gpu_ids": ",".join(str(g) for g in gpu_ids) if gpu_ids else "all",
            "mixed_precision": profile.mixed_precision,
            "use_cpu": False,  # a CPU worker hides every GPU instead
            "debug": False,
        }
        return {accelerate_config_path(plan): json.dumps(config, indent=2) + "\n"}

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


_PROBE = (
    "import importlib.metadata as m, json\n"
    "def v(n):\n"
    "    try: return m.version(n)\n"
    "    except m.PackageNotFoundError: return None\n"
    "print(json.dumps({n: v(n) for n in ('accelerate', 'torch')}))"
)
_probed: dict[str, tuple[float, dict[str, str | None]]] = {}


def _library_versions(python: str, max_age: float = 300.0) -> dict[str, str | None]:
    """accelerate and torch of the trainer's Python (without importing them), cached a while:
    one Python start per job is measurable on a busy host, a venv rarely changes."""
    cached = _probed.get(python)
    if cached and time.monotonic() - cached[0] < max_age:
        return cached[1]
    try:
        out = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)  # fmt: skip
        found = json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        found = {}
    _probed[python] = (time.monotonic(), found)
    return found


def git_commit(checkout: Path) -> str | None:
    """The commit a git checkout is at, read from `.git` (no git binary needed); None if unknown."""
    git = checkout / ".git"
    try:
        head = (git / "HEAD").read_text(encoding="utf-8").strip()
        if not head.startswith("ref: "):
            return head or None
        ref = head[5:]
        if (git / ref).is_file():
            return (git / ref).read_text(encoding="utf-8").strip()
        for line in (git / "packed-refs").read_text(encoding="utf-8").splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        return None
    return None


def accelerate_config_path(plan: TrainPlan) -> Path:
    return plan.log_dir / "accelerate.json"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def setting_hint(field: str) -> str:
    """How to set one setting, naming the env var and the config file key."""
    description = Settings.model_fields[field].description or field
    return (
        f'set {ENV_PREFIX}{field.upper()} or `{field} = "/path"` in the workspace '
        f"{CONFIG_FILE_NAME} ({description})"
    )
