"""STAND-IN for kohya-ss sd-scripts, used only by autotrain's tests. It trains nothing.

The real sd-scripts cannot run in the test environment (no GPU, no multi-GB model weights), so
`flux_train.py`, `flux_train_network.py` and `sdxl_train.py` in this folder imitate what autotrain
relies on, launched through the same `python -m accelerate.commands.launch ...` command:

* `--config_file` TOML read the way sd-scripts reads it (one level of tables merged), but stricter:
  a key that the real script's parser does not define, a value of the wrong type or outside the
  argument's choices is refused with an argparse-style error and exit status 2 (the real script
  silently accepts unknown keys). Argument lists: tests/data/sd_scripts_args/<script>.txt.
* `--dataset_config` TOML checked against the dataset-config schema keys; images are counted per
  subset (non-recursive, kohya's extensions) and multiplied by `num_repeats`.
* Output in sd-scripts' format: the "running training / 学習開始" block, the `steps` tqdm bar on
  stderr redrawn with `\\r` and an `avr_loss` postfix, `epoch N/M` lines, sample generation with
  its own bar, "saving checkpoint: <path>", "saving state at step N", "model saved.".
* Files: `<output_name>-stepNNNNNNNN.safetensors` and `<output_name>-stepNNNNNNNN-state/` every
  `save_every_n_steps` (old ones removed per `save_last_n_steps[_state]`),
  `<output_name>.safetensors` and `<output_name>-state/` at the end, sample PNGs in
  `<output_dir>/sample/`. Each state holds `train_state.json` with the step, as sd-scripts'
  network trainer writes it.
* `--resume <state dir>` continues after the step recorded there, so saved steps are not repeated.
  (Of the real scripts only flux_train_network.py restores the step; the full fine-tune scripts
  restore weights and optimizer but count steps from 0 again.)

Cues (environment variables): STANDIN_SLEEP_PER_STEP=<seconds>; STANDIN_OOM_AT_STEP=<n> prints a
CUDA out-of-memory traceback and exits 1; STANDIN_CRASH_AT_STEP=<n> kills itself with SIGKILL;
STANDIN_ENV_FILE=<path> records the launch environment (CUDA_VISIBLE_DEVICES, world size) as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import struct
import sys
import time
import tomllib
import zlib
from pathlib import Path
from typing import Any

ARGS_DIR = Path(__file__).resolve().parents[2] / "data" / "sd_scripts_args"
IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
    ".bmp",
    ".PNG",
    ".JPG",
    ".JPEG",
    ".WEBP",
    ".BMP",
)
NETWORK_SCRIPTS = {"flux_train_network"}
RANK = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
WORLD_SIZE = int(os.environ.get("WORLD_SIZE", "1") or 1)


def main(script: str) -> int:
    parser = argparse.ArgumentParser(prog=f"{script}.py")
    parser.add_argument("--config_file", required=True)
    parser.add_argument("--resume", default=None)
    args = parser.parse_args()
    _record_environment()

    config_path = (
        args.config_file if args.config_file.endswith(".toml") else args.config_file + ".toml"
    )
    if not os.path.exists(config_path):
        say(f"{config_path} not found.")
        return 1
    say(f"Loading settings from {config_path}...")
    config = _flatten(tomllib.loads(Path(config_path).read_text(encoding="utf-8")))
    _check_arguments(parser, config, load_argument_list(script), config_path)

    subsets = _read_dataset(parser, config, script)
    images = sum(count * repeats for _dir, count, repeats in subsets)
    if images == 0:
        say(
            "No data found. Please verify arguments (train_data_dir must be the parent of folders "
            "with images) / 画像がありません。引数指定を確認してください（train_data_dirには画像が"
            "あるフォルダではなく、画像があるフォルダの親フォルダを指定する必要があります）"
        )
        return 0

    plan = _schedule(config, images)
    start_step = _resume_step(args.resume, script)
    if start_step is None:
        return 1
    if start_step >= plan["max_train_steps"] and args.resume:
        say(
            "AssertionError: max_train_steps should be greater than initial step / "
            "max_train_stepsは初期ステップより大きい必要があります: "
            f"{plan['max_train_steps']} vs {start_step}",
            err=True,
        )
        return 1
    return _train(config, script, plan, start_step)


# --- argument checking --------------------------------------------------------------------------


def load_argument_list(script: str) -> dict[str, tuple[str, list[str]]]:
    """`name -> (type, choices)` from the committed list extracted from sd-scripts' parser."""
    found: dict[str, tuple[str, list[str]]] = {}
    for line in (ARGS_DIR / f"{script}.txt").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        found[parts[0]] = (parts[1], parts[2].split("|") if len(parts) > 2 else [])
    return found


def load_dataset_keys() -> dict[str, set[str]]:
    """Allowed keys per table of a dataset config: general, datasets, datasets.subsets."""
    tables: dict[str, set[str]] = {}
    current = None
    for line in (ARGS_DIR / "dataset_config.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            tables[current] = set()
        elif current is not None:
            tables[current].add(line)
    return tables


def value_fits(kind: str, choices: list[str], value: Any) -> bool:
    """Whether a TOML value is what the argument would hold after argparse (no conversion)."""
    if isinstance(value, list) or kind.startswith("list["):
        inner = kind[5:-1] if kind.startswith("list[") else ""
        return isinstance(value, list) and all(value_fits(inner, [], item) for item in value)
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "int":
        ok = isinstance(value, int)
    elif kind in ("float", "int_or_float"):
        ok = isinstance(value, int | float)
    else:  # str, path and custom converters read strings
        ok = isinstance(value, str)
    return ok and (not choices or str(value) in choices)


def _check_arguments(
    parser: argparse.ArgumentParser,
    config: dict[str, Any],
    known: dict[str, tuple[str, list[str]]],
    source: str,
) -> None:
    unknown = [key for key in config if key not in known]
    if unknown:
        parser.error(
            "unrecognized arguments in " + source + ": " + " ".join(f"--{key}" for key in unknown)
        )
    for key, value in config.items():
        kind, choices = known[key]
        if not value_fits(kind, choices, value):
            allowed = f" (choose from {', '.join(choices)})" if choices else ""
            parser.error(f"argument --{key}: invalid {kind} value: {value!r}{allowed}")


def _flatten(data: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def _read_dataset(
    parser: argparse.ArgumentParser, config: dict[str, Any], script: str
) -> list[tuple[str, int, int]]:
    """(image_dir, images, repeats) per subset of the dataset config."""
    if not config.get("dataset_config"):
        parser.error("this stand-in needs --dataset_config (autotrain's kohya profiles use one)")
    path = config["dataset_config"]
    say(
        (
            "Loading dataset config from "
            if script in NETWORK_SCRIPTS
            else "Load dataset config from "
        )
        + str(path)
    )
    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    allowed = load_dataset_keys()
    general = data.get("general", {})
    _check_table(parser, general, allowed["general"], f"{path} [general]")
    extra = set(data) - {"general", "datasets"}
    if extra:
        parser.error(f"invalid dataset config {path}: unknown tables {sorted(extra)}")
    subsets = []
    for dataset in data.get("datasets", []):
        _check_table(
            parser,
            {k: v for k, v in dataset.items() if k != "subsets"},
            allowed["datasets"],
            f"{path} [[datasets]]",
        )
        for subset in dataset.get("subsets", []):
            _check_table(
                parser, subset, allowed["datasets.subsets"], f"{path} [[datasets.subsets]]"
            )
            if "image_dir" not in subset:
                parser.error(f"invalid dataset config {path}: a subset needs image_dir")
            repeats = subset.get(
                "num_repeats", dataset.get("num_repeats", general.get("num_repeats", 1))
            )
            folder = Path(subset["image_dir"])
            count = (
                len([p for p in folder.iterdir() if p.suffix in IMAGE_EXTENSIONS])
                if folder.is_dir()
                else 0
            )
            if not folder.is_dir():
                say(f"not directory: {folder}")
            subsets.append((str(folder), count, int(repeats)))
    return subsets


def _check_table(
    parser: argparse.ArgumentParser, table: dict[str, Any], allowed: set[str], where: str
) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        parser.error(f"invalid dataset config {where}: extra keys not allowed {unknown}")


# --- training imitation -------------------------------------------------------------------------


def _schedule(config: dict[str, Any], images: int) -> dict[str, int]:
    batch = int(config.get("train_batch_size") or 1)
    accumulation = int(config.get("gradient_accumulation_steps") or 1)
    batches = math.ceil(images / batch)
    if config.get("max_train_epochs"):
        max_steps = int(config["max_train_epochs"]) * math.ceil(batches / WORLD_SIZE / accumulation)
        say(
            f"override steps. steps for {config['max_train_epochs']} epochs is / "
            f"指定エポックまでのステップ数: {max_steps}"
        )
    else:
        max_steps = int(config.get("max_train_steps") or 1600)
    per_epoch = math.ceil(math.ceil(batches / WORLD_SIZE) / accumulation)
    return {
        "images": images,
        "batches": batches,
        "batch": batch,
        "accumulation": accumulation,
        "max_train_steps": max_steps,
        "per_epoch": per_epoch,
        "epochs": math.ceil(max_steps / per_epoch),
    }


def _resume_step(resume: str | None, script: str) -> int | None:
    if not resume:
        return 0
    say(f"resume training from local state: {resume}")
    state = Path(resume)
    if not state.is_dir():
        say(f"FileNotFoundError: [Errno 2] No such file or directory: '{resume}'", err=True)
        return None
    state_file = state / "train_state.json"
    if not state_file.is_file():
        return 0
    data = json.loads(state_file.read_text(encoding="utf-8"))
    say(f"load train state from {state_file}: {data}")
    return int(data["current_step"])


def _train(config: dict[str, Any], script: str, plan: dict[str, int], start: int) -> int:
    output_dir = Path(config["output_dir"])
    name = config.get("output_name") or "last"
    network = script in NETWORK_SCRIPTS
    _running_training_block(plan, network)

    from tqdm import tqdm  # real tqdm, so the bar has sd-scripts' exact format

    sleep = float(os.environ.get("STANDIN_SLEEP_PER_STEP", "0") or 0)
    oom_at = int(os.environ.get("STANDIN_OOM_AT_STEP", "0") or 0)
    crash_at = int(os.environ.get("STANDIN_CRASH_AT_STEP", "0") or 0)
    bar = tqdm(
        total=plan["max_train_steps"], initial=start, smoothing=0, desc="steps", disable=RANK != 0
    )
    step, losses = start, []
    first_epoch = start // plan["per_epoch"]
    for epoch in range(first_epoch, plan["epochs"]):
        say(f"\nepoch {epoch + 1}/{plan['epochs']}" + ("\n" if network else ""))
        while step < min(plan["max_train_steps"], (epoch + 1) * plan["per_epoch"]):
            if sleep:
                time.sleep(sleep)
            if RANK == 0 and oom_at and step + 1 == oom_at:
                bar.close()
                _out_of_memory(script)
            if RANK == 0 and crash_at and step + 1 == crash_at:
                sys.stdout.flush()
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            bar.update(1)
            step += 1
            losses.append(0.08 + 0.3 * math.exp(-step / 40) + 0.01 * math.sin(step))
            _maybe_sample(config, output_dir, name, step)
            every = config.get("save_every_n_steps")
            if RANK == 0 and every and step % int(every) == 0:
                _save_step(config, output_dir, name, step, epoch, network)
            window = losses[-plan["per_epoch"] :]
            bar.set_postfix(avr_loss=sum(window) / len(window))
        if step >= plan["max_train_steps"]:
            break
    bar.close()
    if RANK == 0:
        _save_end(config, output_dir, name, step, plan["epochs"], network)
    return 0


def _running_training_block(plan: dict[str, int], network: bool) -> None:
    say("running training / 学習開始")
    if network:
        say(f"  num train images * repeats / 学習画像の数×繰り返し回数: {plan['images']}")
        say("  num validation images * repeats / 学習画像の数×繰り返し回数: 0")
        say("  num reg images / 正則化画像の数: 0")
    else:
        say(f"  num examples / サンプル数: {plan['images']}")
    say(f"  num batches per epoch / 1epochのバッチ数: {plan['per_epoch'] * plan['accumulation']}")
    say(f"  num epochs / epoch数: {plan['epochs']}")
    say(f"  batch size per device / バッチサイズ: {plan['batch']}")
    say(f"  gradient accumulation steps / 勾配を合計するステップ数 = {plan['accumulation']}")
    say(f"  total optimization steps / 学習ステップ数: {plan['max_train_steps']}")


def _maybe_sample(config: dict[str, Any], output_dir: Path, name: str, step: int) -> None:
    every = config.get("sample_every_n_steps")
    if RANK != 0 or not every or step % int(every) != 0 or config.get("sample_every_n_epochs"):
        return
    say("")
    say(f"generating sample images at step / サンプル画像生成 ステップ: {step}")
    prompts_file = config.get("sample_prompts")
    if not prompts_file or not os.path.exists(prompts_file):
        say(f"No prompt file / プロンプトファイルがありません: {prompts_file}")
        return
    from tqdm import tqdm

    lines = Path(prompts_file).read_text(encoding="utf-8").splitlines()
    prompts = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    (output_dir / "sample").mkdir(parents=True, exist_ok=True)
    for index, line in enumerate(prompts):
        prompt = parse_prompt_line(line)
        say(f"prompt: {prompt['prompt']}")
        say(f"height: {prompt.get('height', 512)}")
        say(f"width: {prompt.get('width', 512)}")
        say(f"sample_steps: {prompt.get('sample_steps', 20)}")
        for _ in tqdm(range(prompt.get("sample_steps", 20))):
            pass
        seed = prompt.get("seed")
        stamp = time.strftime("%Y%m%d%H%M%S", time.localtime())
        image = f"{name}_{step:06d}_{index:02d}_{stamp}{'' if seed is None else f'_{seed}'}.png"
        (output_dir / "sample" / image).write_bytes(_tiny_png())


def parse_prompt_line(line: str) -> dict[str, Any]:
    """The meaning kohya gives a prompt line: text before the first ` --`, then options."""
    parts = line.split(" --")
    found: dict[str, Any] = {"prompt": parts[0]}
    patterns = [
        ("width", r"w (\d+)", int),
        ("height", r"h (\d+)", int),
        ("seed", r"d (\d+)", int),
        ("sample_steps", r"s (\d+)", int),
        ("scale", r"l ([\d\.]+)", float),
        ("guidance_scale", r"g ([\d\.]+)", float),
        ("negative_prompt", r"n (.+)", str),
        ("sample_sampler", r"ss (.+)", str),
        ("controlnet_image", r"cn (.+)", str),
    ]
    for part in parts:  # kohya also applies the patterns to the prompt text itself
        for key, pattern, convert in patterns:
            match = re.match(pattern, part, re.IGNORECASE)
            if match:
                found[key] = convert(match.group(1))
                break
    return found


def _save_step(
    config: dict[str, Any], output_dir: Path, name: str, step: int, epoch: int, network: bool
) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    every = int(config["save_every_n_steps"])
    checkpoint = output_dir / f"{name}-step{step:08d}.safetensors"
    _say_saving(checkpoint, network)
    _write_safetensors(checkpoint, step)
    keep = config.get("save_last_n_steps")
    old = _old_step(step, keep, every)
    if old is not None and old > 0:
        stale = output_dir / f"{name}-step{old:08d}.safetensors"
        if stale.exists():
            say(f"removing old checkpoint: {stale}")
            stale.unlink()
    if config.get("save_state"):
        say("")
        say(f"saving state at step {step}")
        _write_state(output_dir / f"{name}-step{step:08d}-state", epoch + 1, step)
        old = _old_step(step, config.get("save_last_n_steps_state") or keep, every)
        stale = output_dir / f"{name}-step{old:08d}-state" if old else None
        if stale is not None and old > 0 and stale.exists():
            say(f"removing old state: {stale}")
            shutil.rmtree(stale)


def _old_step(step: int, keep: Any, every: int) -> int | None:
    """sd-scripts keeps saves younger than `keep` steps; this is the one that just aged out."""
    if not keep:
        return None
    old = step - int(keep) - 1
    return old - (old % every) if old >= 0 else None


def _save_end(
    config: dict[str, Any], output_dir: Path, name: str, step: int, epochs: int, network: bool
) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    if config.get("save_state") or config.get("save_state_on_train_end"):
        say("")
        say("saving last state.")
        _write_state(output_dir / f"{name}-state", epochs, step)
    final = output_dir / f"{name}.safetensors"
    if network:
        say(f"\nsaving checkpoint: {final}")
    else:
        say(f"save trained model as StableDiffusion checkpoint to {final}")
    _write_safetensors(final, step)
    say("model saved.")


def _say_saving(checkpoint: Path, network: bool) -> None:
    if network:
        say(f"\nsaving checkpoint: {checkpoint}")
    else:
        say("")
        say(f"saving checkpoint: {checkpoint}")


def _write_state(state_dir: Path, epoch: int, step: int) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "model.safetensors").write_bytes(_safetensors_bytes(step))
    state_file = state_dir / "train_state.json"
    say(f"save train state to {state_file} at epoch {epoch} step {step}")
    state_file.write_text(
        json.dumps({"current_epoch": epoch, "current_step": step}), encoding="utf-8"
    )


def _write_safetensors(path: Path, step: int) -> None:
    path.write_bytes(_safetensors_bytes(step))


def _safetensors_bytes(step: int) -> bytes:
    """A valid safetensors file holding one float32 tensor; metadata records the step."""
    header = json.dumps(
        {
            "__metadata__": {"ss_steps": str(step), "standin": "true"},
            "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        }
    ).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + struct.pack("<f", float(step))


def _tiny_png() -> bytes:
    """A valid 1x1 grey PNG, written without image libraries."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = zlib.compress(b"\x00\x80")
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", raw)
        + chunk(b"IEND", b"")
    )


def _out_of_memory(script: str) -> None:
    """What a CUDA OOM in the training step looks like on stderr; exit status 1."""
    sys.stdout.flush()
    sys.stderr.write(
        "Traceback (most recent call last):\n"
        f'  File "{script}.py", line 1003, in <module>\n'
        "    train(args)\n"
        f'  File "{script}.py", line 648, in train\n'
        "    accelerator.backward(loss)\n"
        '  File "torch/autograd/graph.py", line 825, in _engine_run_backward\n'
        "    return Variable._execution_engine.run_backward(  # Calls into the C++ engine\n"
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 216.00 MiB. GPU 0 has a "
        "total capacity of 23.55 GiB of which 180.62 MiB is free. Including non-PyTorch memory, "
        "this process has 23.36 GiB memory in use. Of the allocated memory 22.71 GiB is allocated "
        "by PyTorch, and 198.40 MiB is reserved by PyTorch but unallocated. If reserved but "
        "unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "
        "to avoid fragmentation.  See documentation for Memory Management  "
        "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)\n"
    )
    sys.stderr.flush()
    os._exit(1)


def _record_environment() -> None:
    target = os.environ.get("STANDIN_ENV_FILE")
    if target and RANK == 0:
        Path(target).write_text(
            json.dumps(
                {
                    "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                    "WORLD_SIZE": WORLD_SIZE,
                    "ACCELERATE_MIXED_PRECISION": os.environ.get("ACCELERATE_MIXED_PRECISION"),
                    "argv": sys.argv,
                }
            ),
            encoding="utf-8",
        )


def say(message: str, err: bool = False) -> None:
    """accelerator.print / plain logging: main process only, flushed at once."""
    if RANK != 0:
        return
    stream = sys.stderr if err else sys.stdout
    stream.write(message + "\n")
    stream.flush()
