"""The kohya backend: command lines, host checks, and a run of the sd-scripts stand-in through the
real `python -m accelerate.commands.launch` command (tests/standins/sd_scripts/ says what it is).
"""

from __future__ import annotations

import json
import sys
import tomllib

import pytest
import tomli_w

from autotrain.errors import ConfigError
from autotrain.profile import load_profile
from autotrain.settings import load_settings
from autotrain.trainers import get_backend
from autotrain.trainers.kohya import KohyaBackend
from autotrain.trainers.progress import parse_text
from autotrain.trainers.resume import ResumeLaunch
from tests.helpers_kohya import (
    STANDIN,
    launch_files,
    output_of,
    quick_profile,
    run,
    staged_plan,
)

# --- command lines ---------------------------------------------------------------------------


def test_command_one_gpu(kohya_settings):
    profile = load_profile("FluxLORA")
    plan = staged_plan(kohya_settings, profile)
    command = KohyaBackend().command(plan, profile, kohya_settings, [1])
    assert command == [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(plan.log_dir / "accelerate.json"),
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


def test_command_two_gpus_and_resume(kohya_settings, tmp_path):
    profile = load_profile("SDXL")
    plan = staged_plan(kohya_settings, profile)
    state = tmp_path / "cat-step00000010-state"
    resume = ResumeLaunch(state=state, saved_step=10, extra_args=["--resume", str(state)])
    command = KohyaBackend().command(plan, profile, kohya_settings, [2, 3], resume)
    joined = " ".join(command)
    assert "--num_processes 2 --multi_gpu --main_process_port " in joined
    assert "--gpu_ids 2,3" in joined
    assert command[-4:] == ["--config_file", str(plan.config_path), "--resume", str(state)]
    assert str(STANDIN / "sdxl_train.py") in command
    # two multi-GPU jobs on one host never share accelerate's default port 29500
    port = command[command.index("--main_process_port") + 1]
    other = KohyaBackend().command(plan, profile, kohya_settings, [0, 1])
    assert port != "29500" and other[other.index("--main_process_port") + 1] != port
    config = json.loads(
        KohyaBackend().launch_files(plan, profile, [2, 3])[plan.log_dir / "accelerate.json"]
    )
    assert (config["distributed_type"], config["num_processes"], config["gpu_ids"]) == (
        "MULTI_GPU",
        2,
        "2,3",
    )


def test_backend_for_kohya_profiles():
    assert isinstance(get_backend(load_profile("Flux")), KohyaBackend)


def test_command_without_sd_scripts_dir_names_the_setting(tmp_path):
    settings = load_settings(tmp_path / "ws")
    profile = load_profile("Flux")
    plan = staged_plan(settings, profile)
    with pytest.raises(ConfigError, match="sd_scripts_dir is not set.*AUTOTRAIN_SD_SCRIPTS_DIR"):
        KohyaBackend().command(plan, profile, settings, [0])


# --- host checks -------------------------------------------------------------------------------


def test_check_passes_when_everything_is_there(kohya_settings):
    for name in ("Flux", "FluxLORA", "SDXL"):
        assert KohyaBackend().check(load_profile(name), kohya_settings) == []


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


def test_check_sd_scripts_dir_without_the_script(kohya_settings, tmp_path):
    empty = tmp_path / "sd-scripts"
    empty.mkdir()
    kohya_settings = kohya_settings.model_copy(update={"sd_scripts_dir": empty})
    problems = KohyaBackend().check(load_profile("SDXL"), kohya_settings)
    assert problems == [
        f"sdxl_train.py not found in sd_scripts_dir {empty}: profile SDXL needs it; update the "
        "checkout (git pull) to a version that has it."
    ]
    kohya_settings = kohya_settings.model_copy(update={"sd_scripts_dir": tmp_path / "nowhere"})
    assert "is not a directory" in KohyaBackend().check(load_profile("SDXL"), kohya_settings)[0]


def test_check_sd_scripts_python(kohya_settings, tmp_path):
    missing = kohya_settings.model_copy(
        update={"sd_scripts_python": str(tmp_path / "venv/bin/python")}
    )
    (problem,) = KohyaBackend().check(load_profile("SDXL"), missing)
    assert "sd_scripts_python" in problem and "AUTOTRAIN_SD_SCRIPTS_PYTHON" in problem
    not_on_path = kohya_settings.model_copy(update={"sd_scripts_python": "no-such-python-3"})
    assert "not on PATH" in KohyaBackend().check(load_profile("SDXL"), not_on_path)[0]


# --- the stand-in, through the real accelerate launcher ----------------------------------------


@pytest.mark.slow
def test_standin_trains_and_prints_parseable_progress(kohya_settings):
    profile = quick_profile(kohya_settings)
    plan = staged_plan(kohya_settings, profile)
    assert plan.total_steps == 30
    command = launch_files(KohyaBackend(), plan, profile, kohya_settings, [3])
    env_file = kohya_settings.workspace.parent / "env.json"
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


@pytest.mark.slow
def test_standin_out_of_memory(kohya_settings):
    profile = quick_profile(kohya_settings, base="Flux")
    plan = staged_plan(kohya_settings, profile)
    result = run(
        launch_files(KohyaBackend(), plan, profile, kohya_settings, [0]), STANDIN_OOM_AT_STEP="5"
    )
    assert result.returncode != 0
    assert "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate" in output_of(result)
    errors = [e for e in parse_text(output_of(result)) if e.kind == "error"]
    assert errors and "out of memory" in errors[0].message.lower()


@pytest.mark.slow
def test_standin_needs_the_sample_prompts_before_training_as_the_real_flux_script(kohya_settings):
    """flux_train_network.py opens the prompt file while caching text encoder outputs, before
    the first step (the real trainer failed so when a run's files were moved aside)."""
    profile = quick_profile(kohya_settings)  # FluxLORA: flux_train_network.py
    plan = staged_plan(kohya_settings, profile)
    plan.sample_prompts_path.unlink()
    result = run(launch_files(KohyaBackend(), plan, profile, kohya_settings, [0]))
    assert result.returncode != 0
    assert "FileNotFoundError" in output_of(result) and "sample_prompts.txt" in output_of(result)
    assert not [e for e in parse_text(output_of(result)) if e.kind == "step"]


@pytest.mark.slow
def test_standin_refuses_keys_the_real_script_lacks(kohya_settings):
    profile = quick_profile(kohya_settings, base="SDXL")
    plan = staged_plan(kohya_settings, profile)
    config = tomllib.loads(plan.config_path.read_text(encoding="utf-8"))
    config["network_dim"] = 8  # a LoRA option: sdxl_train.py has no such argument
    plan.config_path.write_text(tomli_w.dumps(config), encoding="utf-8")
    result = run(launch_files(KohyaBackend(), plan, profile, kohya_settings, [0]))
    assert result.returncode != 0
    assert "sdxl_train.py: error: unrecognized arguments" in output_of(result)
    assert "--network_dim" in output_of(result)


@pytest.mark.slow
def test_standin_data_parallel_on_two_processes(kohya_settings):
    profile = quick_profile(kohya_settings, max_train_steps=4, save_every_n_steps=2)
    plan = staged_plan(kohya_settings, profile)
    command = launch_files(KohyaBackend(), plan, profile, kohya_settings, [2, 3])
    env_file = kohya_settings.workspace.parent / "env.json"
    result = run(command, STANDIN_ENV_FILE=str(env_file), CUDA_VISIBLE_DEVICES="2,3")
    assert result.returncode == 0, output_of(result)
    seen = json.loads(env_file.read_text(encoding="utf-8"))
    assert seen["CUDA_VISIBLE_DEVICES"] == "2,3" and seen["WORLD_SIZE"] == 2
    assert (plan.model_dir / "cat.safetensors").is_file()
