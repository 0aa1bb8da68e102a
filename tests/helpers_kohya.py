"""Helpers for tests of the kohya backend: a workspace wired to the sd-scripts stand-in
(tests/standins/sd_scripts/, a test double: the real scripts need a GPU and model weights)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import tomli_w

from autotrain.profile import builtin_templates_dir, load_profile
from autotrain.settings import load_settings
from autotrain.spec import JobSpec
from autotrain.trainers.configure import configure_job
from autotrain.workspace import Workspace

STANDIN = Path(__file__).parent / "standins" / "sd_scripts"
MODEL_FIELDS = ("flux_model", "clip_l", "t5xxl", "ae", "sdxl_model")


class Subset:
    def __init__(self, relpath: str, repeats: int | None, image_count: int) -> None:
        self.relpath, self.repeats, self.image_count = relpath, repeats, image_count
        self.class_tokens = None


class Report:
    def __init__(self, name: str, *subsets: Subset) -> None:
        self.name, self.subsets = name, list(subsets)
        self.images = [None] * sum(s.image_count for s in subsets)


def write_placeholder_weights(path: Path) -> None:
    """A valid, empty safetensors file: the stand-in reads checkpoint headers as sd-scripts does."""
    path.write_bytes(len(b"{}  ").to_bytes(8, "little") + b"{}  ")


def standin_settings(tmp_path):
    """Settings of a workspace in `tmp_path` with the stand-in and placeholder model files."""
    models = tmp_path / "models"
    models.mkdir()
    paths = {name: models / f"{name}.safetensors" for name in MODEL_FIELDS}
    for path in paths.values():
        write_placeholder_weights(path)
    return load_settings(
        tmp_path / "ws", sd_scripts_dir=STANDIN, sd_scripts_python=sys.executable, **paths
    )


def quick_profile(settings, name: str = "Quick", base: str = "FluxLORA", **changes):
    """A workspace copy of a built-in kohya profile that trains 30 steps and saves every 10."""
    ws = Workspace(settings.workspace)
    target = ws.templates_dir / name
    shutil.copytree(builtin_templates_dir() / base, target)
    template = tomllib.loads((target / "base.toml").read_text(encoding="utf-8"))
    template.pop("max_train_epochs", None)
    template.update(
        {
            "max_train_steps": 30,
            "save_every_n_steps": 10,
            "save_last_n_steps_state": 10,
            "sample_every_n_steps": 10,
            **changes,
        }
    )
    (target / "base.toml").write_text(tomli_w.dumps(template), encoding="utf-8")
    return load_profile(name, ws.templates_dir)


def staged_plan(settings, profile, name: str = "cat", images: int = 2):
    """Stage a tiny dataset by hand (phase 2's job) and run phase 3 on it."""
    ws = Workspace(settings.workspace)
    folder = ws.input_dir(name)
    folder.mkdir(parents=True)
    for index in range(images):
        (folder / f"{index}.png").write_bytes(b"png")
        (folder / f"{index}.txt").write_text(f"caption {index}", encoding="utf-8")
    spec = JobSpec(dataset_path=Path("/data") / name, name=name, profile=profile.name)
    return configure_job(spec, profile, settings, Report(name, Subset(".", None, images)))


def run(command: list[str], **env: str) -> subprocess.CompletedProcess[bytes]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STANDIN_")}
    full_env.update(env)
    return subprocess.run(command, capture_output=True, env=full_env, timeout=120)


def launch_files(backend, plan, profile, settings, gpus: list[int], resume=None) -> list[str]:
    """The command, with the accelerate config it reads written (as phase 4 does)."""
    for path, text in backend.launch_files(plan, profile, gpus).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return backend.command(plan, profile, settings, gpus, resume)


def output_of(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode() + result.stderr.decode()
