"""The built-in Tiny trainer as autotrain runs it: a child process started from TinyBackend's command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import tomli_w
from PIL import Image, ImageDraw

from autotrain.profile import load_profile
from autotrain.settings import Settings
from autotrain.trainers import get_backend
from autotrain.trainers import tiny as tiny_backend
from autotrain.trainers.plan import TrainPlan
from autotrain.trainers.progress import ProgressEvent, TrainerOutputParser, parse_text
from autotrain.trainers.resume import ResumeLaunch, choose_state
from autotrain.trainers.tiny import TinyBackend

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220)}


def make_dataset(root: Path) -> Path:
    """Six captioned shapes; three sit in a kohya `2_shapes/` folder (repeated twice)."""
    root.mkdir(parents=True)
    (root / "2_shapes").mkdir()
    for index, (colour, rgb) in enumerate(COLOURS.items()):
        for shape in ("circle", "square"):
            folder = root / "2_shapes" if shape == "square" else root
            size = 48 + 16 * index
            image = Image.new("RGB", (size, size), (245, 245, 240))
            box = [size // 5, size // 5, size - size // 5, size - size // 5]
            draw = ImageDraw.Draw(image)
            (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=rgb)
            image.save(folder / f"{colour}_{shape}.png")
            (folder / f"{colour}_{shape}.txt").write_text(f"a {colour} {shape}")
    return root


def write_job(tmp_path: Path, name: str, dataset: Path, **overrides: object) -> TrainPlan:
    """What phase 3 writes for the Tiny profile: its template plus the per-dataset keys."""
    profile = load_profile("Tiny")
    out = tmp_path / "output" / name
    config = profile.load_template() | {
        "train_data_dir": str(dataset),
        "num_repeats": 1,
        "output_dir": str(out / "model"),
        "output_name": name,
        "logging_dir": str(out / "log"),
        "sample_prompts": str(out / "sample_prompts.txt"),
    }
    config.update(overrides)
    config_path = tmp_path / "BatchConfig" / "Tiny" / f"{name}.toml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(tomli_w.dumps(config), encoding="utf-8")
    out.mkdir(parents=True, exist_ok=True)
    (out / "sample_prompts.txt").write_text("a red circle --w 32 --h 32 --s 4 --d 1 --l 1\n")
    return TrainPlan(
        name=name,
        profile="Tiny",
        backend="tiny",
        config_path=config_path,
        sample_prompts_path=out / "sample_prompts.txt",
        model_dir=out / "model",
        log_dir=out / "log",
        total_steps=int(config["max_train_steps"]),
        save_every_n_steps=config.get("save_every_n_steps"),
        config=config,
    )


def command_for(plan: TrainPlan, tmp_path: Path, resume: Path | None = None) -> list[str]:
    profile = load_profile("Tiny")
    backend = get_backend(profile)
    assert isinstance(backend, TinyBackend)
    launch = None if resume is None else ResumeLaunch(resume, 0, ["--resume", str(resume)])
    return backend.command(plan, profile, Settings(workspace=tmp_path), [], launch)


def run(command: list[str], cwd: Path, timeout: float = 120) -> tuple[int, str]:
    env = os.environ | {"TQDM_MININTERVAL": "0"}  # a bar line for every step
    done = subprocess.run(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        timeout=timeout,
    )  # fmt: skip
    return done.returncode, done.stdout.decode("utf-8", "replace")  # bytes: keep tqdm's \r


def steps(events: list[ProgressEvent]) -> list[ProgressEvent]:
    return [e for e in events if e.kind == "step" and e.loss is not None]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One 30-step run saving every 10 steps, shared by the tests that inspect it."""
    tmp_path = tmp_path_factory.mktemp("tiny")
    dataset = make_dataset(tmp_path / "dataset")
    plan = write_job(
        tmp_path, "shapes", dataset, max_train_steps=30, save_every_n_steps=10,
        sample_every_n_steps=30, save_last_n_steps_state=15,
    )  # fmt: skip
    started = time.monotonic()
    returncode, output = run(command_for(plan, tmp_path), tmp_path)
    return {
        "tmp_path": tmp_path,
        "dataset": dataset,
        "plan": plan,
        "returncode": returncode,
        "output": output,
        "events": parse_text(output),
        "seconds": time.monotonic() - started,
    }


@pytest.mark.slow
def test_trains_and_writes_kohya_layout(trained: dict) -> None:
    assert trained["returncode"] == 0, trained["output"][-2000:]
    model_dir: Path = trained["plan"].model_dir
    names = sorted(p.name for p in model_dir.iterdir())
    assert names == [
        "sample",
        "shapes-step00000010.safetensors",
        "shapes-step00000020-state",  # states older than the last 15 steps were removed
        "shapes-step00000020.safetensors",
        "shapes-step00000030-state",
        "shapes-step00000030.safetensors",
        "shapes.safetensors",
    ]
    assert choose_state(model_dir, "shapes") == model_dir / "shapes-step00000030-state"
    assert (model_dir / "sample" / "shapes_000030_00.png").is_file()
    assert trained["plan"].log_dir.is_dir()


@pytest.mark.slow
def test_final_weights_are_a_lora_with_metadata(trained: dict) -> None:
    from safetensors import safe_open

    with safe_open(str(trained["plan"].model_dir / "shapes.safetensors"), "pt") as weights:
        keys = list(weights.keys())
        metadata = weights.metadata()
        down = weights.get_tensor("transformer_blocks.0.attn.to_q.lora_A.weight")
        up = weights.get_tensor("transformer_blocks.0.attn.to_q.lora_B.weight")
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys)
    assert down.shape[0] == 8 and up.shape[1] == 8  # network_dim from the template
    assert float(up.abs().sum()) > 0  # B starts at zero: it trained
    assert metadata["network_dim"] == "8" and metadata["steps"] == "30"
    assert json.loads(metadata["base_model_config"])["num_single_layers"] == 2


@pytest.mark.slow
def test_progress_is_kohya_shaped_and_loss_goes_down(trained: dict) -> None:
    events: list[ProgressEvent] = trained["events"]
    losses = [e.loss for e in steps(events)]
    assert len(losses) >= 20
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.75 * first, f"loss did not go down: {first:.3f} -> {last:.3f}"
    assert [e.total for e in events if e.kind == "total"] == [30]
    # 3 circles + 3 squares x 2 repeats = 9 items, batch 4: 3 batches per epoch
    assert [e.epoch for e in events if e.kind == "epoch"][:2] == [1, 2]
    assert [e.step for e in events if e.kind == "state"] == [10, 20, 30]
    checkpoints = [Path(e.path).name for e in events if e.kind == "checkpoint"]
    assert checkpoints[-1] == "shapes.safetensors"
    assert any(e.kind == "sample" and e.path for e in events)
    assert not any(e.kind == "error" for e in events)


@pytest.mark.slow
def test_resume_continues_from_the_saved_step(trained: dict) -> None:
    tmp_path: Path = trained["tmp_path"]
    state = trained["plan"].model_dir / "shapes-step00000020-state"
    plan = write_job(
        tmp_path, "resumed", trained["dataset"], max_train_steps=30, save_every_n_steps=10,
        sample_every_n_steps=30, save_last_n_steps_state=15,
    )  # fmt: skip
    returncode, output = run(command_for(plan, tmp_path, resume=state), tmp_path)
    assert returncode == 0, output[-2000:]
    assert f"resume training from local state: {state}" in output
    done = steps(parse_text(output))
    assert done[0].step == 21 and done[-1].step == 30
    assert not (plan.model_dir / "resumed-step00000010.safetensors").exists()

    # Data order and noise are functions of (seed, step): the resumed run ends where the
    # uninterrupted one did.
    from safetensors.torch import load_file

    resumed = load_file(str(plan.model_dir / "resumed.safetensors"))
    straight = load_file(str(trained["plan"].model_dir / "shapes.safetensors"))
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert (resumed[key] - straight[key]).abs().max() < 1e-4, key


@pytest.mark.slow
def test_resume_with_other_settings_is_refused(trained: dict) -> None:
    tmp_path: Path = trained["tmp_path"]
    state = trained["plan"].model_dir / "shapes-step00000030-state"
    plan = write_job(tmp_path, "other", trained["dataset"], network_dim=4)
    returncode, output = run(command_for(plan, tmp_path, resume=state), tmp_path)
    assert returncode == 2
    assert "network_dim" in output and str(state) in output
    assert "Traceback" not in output


def test_unknown_config_key_is_named(tmp_path: Path) -> None:
    plan = write_job(tmp_path, "typo", tmp_path / "nowhere", learning_rat=0.1)
    returncode, output = run(command_for(plan, tmp_path), tmp_path, timeout=30)
    assert returncode == 2
    assert "learning_rat" in output and str(plan.config_path) in output
    assert "Traceback" not in output


def test_bad_value_is_named(tmp_path: Path) -> None:
    plan = write_job(tmp_path, "odd", tmp_path / "nowhere", resolution=33)
    returncode, output = run(command_for(plan, tmp_path), tmp_path, timeout=30)
    assert returncode == 2 and "resolution" in output and "multiple of 2" in output


def test_missing_state_dir_is_named(tmp_path: Path) -> None:
    plan = write_job(tmp_path, "lost", make_dataset(tmp_path / "d"))
    state = tmp_path / "output" / "lost" / "model" / "lost-step00000010-state"
    returncode, output = run(command_for(plan, tmp_path, resume=state), tmp_path, timeout=30)
    assert returncode == 2 and str(state) in output


@pytest.mark.slow
def test_sigterm_stops_promptly(tmp_path: Path) -> None:
    plan = write_job(
        tmp_path, "long", make_dataset(tmp_path / "d"), max_train_steps=100_000,
        save_every_n_steps=5,
    )  # fmt: skip
    env = os.environ | {"TQDM_MININTERVAL": "0"}
    proc = subprocess.Popen(
        command_for(plan, tmp_path),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    parser, seen = TrainerOutputParser(), []
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    while not any(e.kind == "state" for e in seen) and time.monotonic() < deadline:
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        seen += parser.feed(chunk.decode("utf-8", "replace"))
    assert any(e.kind == "state" for e in seen), "trainer never saved a state"
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert time.monotonic() - sent < 5
    assert "received SIGTERM" in rest.decode()
    model_dir = plan.model_dir
    assert not (model_dir / "long.safetensors").exists()
    assert not list(model_dir.glob(".*.partial")), "half-written files left behind"
    assert choose_state(model_dir, "long") is not None


def test_backend_command_and_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = write_job(tmp_path, "cmd", tmp_path / "d")
    state = tmp_path / "x-step00000010-state"
    command = command_for(plan, tmp_path, resume=state)
    assert command[1:] == [
        "-u",
        "-m",
        "autotrain.tiny_trainer",
        "--config_file",
        str(plan.config_path),
        "--resume",
        str(state),
    ]
    profile = load_profile("Tiny")
    settings = Settings(workspace=tmp_path)
    assert TinyBackend().check(profile, settings) == []
    monkeypatch.setattr(tiny_backend, "TINY_REQUIREMENTS", ("torch", "no_such_module_for_tiny"))
    (problem,) = TinyBackend().check(profile, settings)
    assert "pip install 'autotrain[tiny]'" in problem and "no_such_module_for_tiny" in problem


def test_the_built_in_base_fixes_the_model_settings(tmp_path: Path) -> None:
    plan = write_job(tmp_path, "wide", make_dataset(tmp_path / "d"), tiny_num_attention_heads=4)
    returncode, output = run(command_for(plan, tmp_path), tmp_path, timeout=60)
    assert returncode == 2, output[-2000:]
    assert "tiny_num_attention_heads" in output and 'tiny_base = "random"' in output
    assert "Traceback" not in output


@pytest.mark.slow
def test_a_random_base_takes_any_model_settings(tmp_path: Path) -> None:
    plan = write_job(
        tmp_path, "random", make_dataset(tmp_path / "d"), tiny_base="random",
        tiny_num_attention_heads=4, tiny_patch_size=2, max_train_steps=4, save_every_n_steps=2,
    )  # fmt: skip
    returncode, output = run(command_for(plan, tmp_path), tmp_path, timeout=60)
    assert returncode == 0, output[-2000:]
    from safetensors import safe_open

    with safe_open(str(plan.model_dir / "random.safetensors"), "pt") as weights:
        metadata = weights.metadata()
    assert metadata["base_weights"] == "random"
    assert json.loads(metadata["base_model_config"])["in_channels"] == 12  # 3 x 2 x 2
