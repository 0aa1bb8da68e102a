"""The kohya backend: command lines, host checks, and a run of the sd-scripts stand-in through the
real `python -m accelerate.commands.launch` command (tests/standins/sd_scripts/ says what it is).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w

from autotrain.configure import configure_job
from autotrain.errors import ConfigError
from autotrain.profile import builtin_templates_dir, load_profile
from autotrain.progress import parse_text
from autotrain.settings import load_settings
from autotrain.spec import JobSpec
from autotrain.trainers import get_backend, newest_state_dir
from autotrain.trainers.kohya import KohyaBackend
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


@pytest.fixture
def settings(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    paths = {name: models / f"{name}.safetensors" for name in MODEL_FIELDS}
    for path in paths.values():
        path.write_bytes(b"weights")
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


def output_of(result: subprocess.CompletedProcess[bytes]) -> str:
    return result.stdout.decode() + result.stderr.decode()


# --- command lines ---------------------------------------------------------------------------


def test_command_one_gpu(settings):
    profile = load_profile("FluxLORA")
    plan = staged_plan(settings, profile)
    command = KohyaBackend().command(plan, profile, settings, [1])
    assert command == [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--gpu_ids",
        "1",
        "--num_machines",
        "1",
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        "2",
        "--mixed_precision",
        "bf16",
        str(STANDIN / "flux_train_network.py"),
        "--config_file",
        str(plan.config_path),
    ]


def test_command_two_gpus_and_resume(settings, tmp_path):
    profile = load_profile("SDXL")
    plan = staged_plan(settings, profile)
    state = tmp_path / "cat-step00000010-state"
    command = KohyaBackend().command(plan, profile, settings, [2, 3], resume_from=state)
    joined = " ".join(command)
    assert "--num_processes 2 --multi_gpu --gpu_ids 2,3" in joined
    assert command[-4:] == ["--config_file", str(plan.config_path), "--resume", str(state)]
    assert str(STANDIN / "sdxl_train.py") in command


def test_backend_for_kohya_profiles():
    assert isinstance(get_backend(load_profile("Flux")), KohyaBackend)


def test_command_without_sd_scripts_dir_names_the_setting(tmp_path):
    settings = load_settings(tmp_path / "ws")
    profile = load_profile("Flux")
    plan = staged_plan(settings, profile)
    with pytest.raises(ConfigError, match="sd_scripts_dir is not set.*AUTOTRAIN_SD_SCRIPTS_DIR"):
        KohyaBackend().command(plan, profile, settings, [0])


# --- host checks -------------------------------------------------------------------------------


def test_check_passes_when_everything_is_there(settings):
    for name in ("Flux", "FluxLORA", "SDXL"):
        assert KohyaBackend().check(load_profile(name), settings) == []


def test_check_names_unset_and_missing_settings(tmp_path):
    flux = tmp_path / "flux.safetensors"
    flux.write_bytes(b"x")
    settings = load_settings(
        tmp_path / "ws", flux_model=flux, clip_l=tmp_path / "gone" / "clip_l.safetensors"
    )
    problems = KohyaBackend().check(load_profile("Flux"), settings)
    text = "\n".join(problems)
    assert "sd_scripts_dir is not set" in text and "AUTOTRAIN_SD_SCRIPTS_DIR" in text
    assert (
        f"clip_l (AUTOTRAIN_CLIP_L) file not found: {tmp_path / 'gone' / 'clip_l.safetensors'}"
        in text
    )
    assert "t5xxl (AUTOTRAIN_T5XXL) is not set" in text
    assert "ae (AUTOTRAIN_AE) is not set" in text
    assert "autotrain.toml" in text
    assert "flux_model" not in text  # that one is fine


def test_check_sd_scripts_dir_without_the_script(settings, tmp_path):
    empty = tmp_path / "sd-scripts"
    empty.mkdir()
    settings = settings.model_copy(update={"sd_scripts_dir": empty})
    problems = KohyaBackend().check(load_profile("SDXL"), settings)
    assert problems == [
        f"sdxl_train.py not found in sd_scripts_dir {empty}: profile SDXL needs it; update the "
        "checkout (git pull) to a version that has it."
    ]
    settings = settings.model_copy(update={"sd_scripts_dir": tmp_path / "nowhere"})
    assert "is not a directory" in KohyaBackend().check(load_profile("SDXL"), settings)[0]


def test_check_sd_scripts_python(settings, tmp_path):
    missing = settings.model_copy(update={"sd_scripts_python": str(tmp_path / "venv/bin/python")})
    (problem,) = KohyaBackend().check(load_profile("SDXL"), missing)
    assert "sd_scripts_python" in problem and "AUTOTRAIN_SD_SCRIPTS_PYTHON" in problem
    not_on_path = settings.model_copy(update={"sd_scripts_python": "no-such-python-3"})
    assert "not on PATH" in KohyaBackend().check(load_profile("SDXL"), not_on_path)[0]


# --- the stand-in, through the real accelerate launcher ----------------------------------------


def test_standin_trains_and_prints_parseable_progress(settings):
    profile = quick_profile(settings)
    plan = staged_plan(settings, profile)
    assert plan.total_steps == 30
    command = KohyaBackend().command(plan, profile, settings, [3])
    env_file = settings.workspace.parent / "env.json"
    result = run(command, STANDIN_ENV_FILE=str(env_file), CUDA_VISIBLE_DEVICES="3")
    assert result.returncode == 0, output_of(result)

    events = parse_text(output_of(result))
    steps = [e.step for e in events if e.kind == "step"]
    assert steps[-1] == 30 and steps == sorted(steps)
    assert [e.total for e in events if e.kind == "total"] == [30]
    losses = [e.loss for e in events if e.kind == "step" and e.loss is not None]
    assert losses and all(0 < loss < 1 for loss in losses)
    checkpoints = [e.path for e in events if e.kind == "checkpoint"]
    assert str(plan.model_dir / "cat-step00000010.safetensors") in checkpoints
    assert str(plan.model_dir / "cat.safetensors") in checkpoints

    model = plan.model_dir
    assert (model / "cat.safetensors").is_file()
    states = sorted(p.name for p in model.glob("*-state"))
    assert states == ["cat-state", "cat-step00000020-state", "cat-step00000030-state"]
    assert len(list((model / "sample").glob("cat_000010_00_*_42.png"))) == 1
    # the worker's physical GPU reaches the trainer (accelerate sets it from --gpu_ids)
    seen = json.loads(env_file.read_text(encoding="utf-8"))
    assert seen["CUDA_VISIBLE_DEVICES"] == "3"
    assert seen["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_standin_resumes_after_the_last_saved_step(settings):
    profile = quick_profile(settings)
    plan = staged_plan(settings, profile)
    backend = KohyaBackend()
    crashed = run(backend.command(plan, profile, settings, [0]), STANDIN_CRASH_AT_STEP="25")
    assert crashed.returncode != 0
    assert not (plan.model_dir / "cat.safetensors").exists()

    state = newest_state_dir(plan.model_dir)
    assert state == plan.model_dir / "cat-step00000020-state"
    resumed = run(backend.command(plan, profile, settings, [0], resume_from=state))
    assert resumed.returncode == 0, output_of(resumed)
    steps = [e.step for e in parse_text(output_of(resumed)) if e.kind == "step"]
    assert min(steps) >= 20 and steps[-1] == 30  # steps 1-20 were not trained again
    assert (plan.model_dir / "cat.safetensors").is_file()
    final_state = json.loads((plan.model_dir / "cat-state" / "train_state.json").read_text())
    assert final_state["current_step"] == 30


def test_standin_out_of_memory(settings):
    profile = quick_profile(settings, base="Flux")
    plan = staged_plan(settings, profile)
    result = run(KohyaBackend().command(plan, profile, settings, [0]), STANDIN_OOM_AT_STEP="5")
    assert result.returncode != 0
    assert "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate" in output_of(result)
    errors = [e for e in parse_text(output_of(result)) if e.kind == "error"]
    assert errors and "out of memory" in errors[0].message.lower()


def test_standin_refuses_keys_the_real_script_lacks(settings):
    profile = quick_profile(settings, base="SDXL")
    plan = staged_plan(settings, profile)
    config = tomllib.loads(plan.config_path.read_text(encoding="utf-8"))
    config["network_dim"] = 8  # a LoRA option: sdxl_train.py has no such argument
    plan.config_path.write_text(tomli_w.dumps(config), encoding="utf-8")
    result = run(KohyaBackend().command(plan, profile, settings, [0]))
    assert result.returncode != 0
    assert "sdxl_train.py: error: unrecognized arguments" in output_of(result)
    assert "--network_dim" in output_of(result)


def test_standin_data_parallel_on_two_processes(settings):
    profile = quick_profile(settings, max_train_steps=4, save_every_n_steps=2)
    plan = staged_plan(settings, profile)
    command = KohyaBackend().command(plan, profile, settings, [2, 3])
    env_file = settings.workspace.parent / "env.json"
    result = run(command, STANDIN_ENV_FILE=str(env_file), CUDA_VISIBLE_DEVICES="2,3")
    assert result.returncode == 0, output_of(result)
    seen = json.loads(env_file.read_text(encoding="utf-8"))
    assert seen["CUDA_VISIBLE_DEVICES"] == "2,3" and seen["WORLD_SIZE"] == 2
    assert (plan.model_dir / "cat.safetensors").is_file()
