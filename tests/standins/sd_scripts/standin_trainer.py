"""STAND-IN for kohya-ss sd-scripts, used only by autotrain's tests. It trains nothing.

The real sd-scripts cannot run here (no GPU, no multi-GB weights), so `flux_train.py`,
`flux_train_network.py` and `sdxl_train.py` in this folder imitate the real scripts at commit
48d368fa, awkward parts included, launched through the real `python -m accelerate.commands.launch`
(so accelerate's own reading of `default_config.yaml` / `--config_file` is the real one). Each
behaviour cites the sd-scripts file and line it copies ("acc:" = accelerate 1.6.0, which
sd-scripts' requirements.txt:1 pins):

* Arguments: `--config_file` TOML merged one level deep, then the command line on top
  (library/train_util.py:4745-4761: the config becomes the namespace `parse_args` fills). The
  stand-in is stricter than the real script about the TOML (an unknown key, a wrong type or
  choice is an argparse error, exit 2; lists in tests/data/sd_scripts_args/). On the command line
  both refuse unknown options: `--skip_until_initial_step`, `--initial_step` and `--initial_epoch`
  exist only in train_network.py:1853-1871.
* Logging: a rich handler on stderr (library/utils.py:62-68) until the arguments are read, then
  plain lines on stdout with `console_log_simple` (:74-76); `accelerator.print` on stdout; the
  tqdm bars on stderr. Model loading and latent caching are silent for STANDIN_LOAD_SECONDS.
* Schedule: `max_train_epochs` overrides `max_train_steps` (train_network.py:799-805,
  flux_train.py:405-411, sdxl_train.py:438-444); epochs = ceil(steps / steps per epoch)
  (train_network.py:978-979). The bar is `tqdm(range(max_train_steps - initial_step))`, never
  `initial=` (train_network.py:1357-1359, flux_train.py:552, sdxl_train.py:595).
* Resume: `--resume` loads an accelerate state (library/train_util.py:4776-4779), failing like
  `load_state` when model, optimizer or scheduler files are missing (acc: checkpointing.py
  load_accelerator_state). The network script reads `current_step` from train_state.json
  (train_network.py:964-969) and continues with sd-scripts' exact arithmetic
  (train_network.py:1231-1275, 1340-1344, 1401-1419): without `--skip_until_initial_step` it
  restarts at the epoch holding the step with global_step 0; with it, global_step is the step
  within that epoch. The full fine-tune scripts keep no train state and run the whole schedule
  again (flux_train.py:552-553, sdxl_train.py:595-596).
* Saving: checkpoints and states named after global_step (library/train_util.py:90-100,
  5776-5778); network: checkpoint, state, then old-checkpoint removal (train_network.py:1497-1509);
  full: checkpoint, removal, state (library/train_util.py:5851-5935). A state is
  train_state.json first (network only, the save hook runs before the weights: acc:
  accelerator.py:3291-3294; train_network.py:944-948, with current_step + 1), then
  model.safetensors, optimizer.bin, scheduler.bin, random_states_0.pkl. At the end: the final
  state before the final model (train_network.py:1719-1729, flux_train.py:772-782).

Cues (environment variables): STANDIN_SLEEP_PER_STEP=<seconds>; STANDIN_LOAD_SECONDS=<seconds> of
silence before training; STANDIN_OOM_AT_STEP=<n> prints a CUDA out-of-memory traceback, exit 1;
STANDIN_CRASH_AT_STEP=<n> SIGKILLs itself before global step n (not on a resumed run);
STANDIN_CRASH_IN_SAVE_AT_STEP=<n> SIGKILLs itself halfway through saving the state of step n;
STANDIN_GPU_MEMORY_GB=<n> is the GPU's memory: a run that needs more (sd-scripts' VRAM table,
standin_support.vram_need_gb) runs out of memory at its first step, as the real one does in its
first backward pass;
STANDIN_NCCL_ERROR_ON_GPU=<i> fails its first step with an NCCL error when it runs on GPU i
(CUDA_VISIBLE_DEVICES), as a rank on a broken GPU does; STANDIN_ECC_ERROR_ON_GPU=<i> fails it
with torch's CUDA error for an uncorrectable ECC error there instead;
STANDIN_HANG_AT_STEP=<n> stops before global step n and never prints or exits again (not on a
resumed run): what a deadlocked collective (an NCCL hang) or a dead filesystem looks like from
outside, a process that lives on silently;
STANDIN_ENV_FILE=<path> records the launch environment (CUDA_VISIBLE_DEVICES, world size) as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from standin_support import (
    NETWORK_SCRIPTS,
    RANK,
    WORLD_SIZE,
    check_arguments,
    check_checkpoint_header,
    ecc_failure,
    flatten,
    load_argument_list,
    log,
    nccl_failure,
    out_of_memory,
    parse_prompt_line,
    read_dataset,
    record_environment,
    say,
    setup_logging,
    tiny_png,
    vram_need_gb,
    write_safetensors,
)

_COMMAND_LINE = ("output_name", "max_train_steps", "max_train_epochs", "resume")


def main(script: str) -> int:
    setup_logging()
    network = script in NETWORK_SCRIPTS
    parser = _parser(script, network)
    cli = parser.parse_args()  # unknown options: "error: unrecognized arguments", exit 2
    record_environment()
    config_path = (
        cli.config_file if cli.config_file.endswith(".toml") else cli.config_file + ".toml"
    )
    if not os.path.exists(config_path):
        log(f"{config_path} not found.")  # library/train_util.py:4740-4742
        return 1
    log(f"Loading settings from {config_path}...")
    config = flatten(tomllib.loads(Path(config_path).read_text(encoding="utf-8")))
    check_arguments(parser, config, load_argument_list(script), config_path)
    for key, value in vars(cli).items():  # the command line wins over the file
        if key != "config_file" and value is not None:
            config[key] = value

    setup_logging(simple=bool(config.get("console_log_simple")))
    subsets = read_dataset(parser, config, script)
    images = sum(count * repeats for _dir, count, repeats in subsets)
    if images == 0:
        say(
            "No data found. Please verify arguments (train_data_dir must be the parent of folders "
            "with images) / 画像がありません。引数指定を確認してください（train_data_dirには画像が"
            "あるフォルダではなく、画像があるフォルダの親フォルダを指定する必要があります）"
        )
        return 0
    check_checkpoint_header(script, config["pretrained_model_name_or_path"])
    _load_models_silently()
    _cache_sample_prompts(config, script)
    plan = _schedule(config, images)
    steps_from_state = _load_state(config.get("resume"), network)
    return _train(config, script, plan, steps_from_state)


def _parser(script: str, network: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{script}.py")
    parser.add_argument("--config_file", required=True)
    for name in _COMMAND_LINE:
        kind = int if name.startswith("max_") else str
        parser.add_argument(f"--{name}", type=kind, default=None)
    if network:  # train_network.py:1853-1871
        parser.add_argument("--skip_until_initial_step", action="store_true", default=None)
        parser.add_argument("--initial_epoch", type=int, default=None)
        parser.add_argument("--initial_step", type=int, default=None)
    return parser


def _cache_sample_prompts(config: dict[str, Any], script: str) -> None:
    """flux_train_network.py caches the sample prompts' text encoder outputs before training
    when it caches the dataset's (cache_text_encoder_outputs_if_needed, flux_train_network.py:
    254-261): it opens the prompt file then (library/train_util.py:6332, load_prompts), and a
    missing one ends the run with FileNotFoundError, long before the first sample."""
    prompts = config.get("sample_prompts")
    if script == "flux_train_network" and config.get("cache_text_encoder_outputs") and prompts:
        log(f"cache Text Encoder outputs for sample prompt: {prompts}")
        with open(prompts, encoding="utf-8") as handle:
            handle.read()


def _load_models_silently() -> None:
    """Loading Flux and caching latents print nothing for minutes; so does this, on cue."""
    seconds = float(os.environ.get("STANDIN_LOAD_SECONDS", "0") or 0)
    if seconds:
        time.sleep(seconds)


def _schedule(config: dict[str, Any], images: int) -> dict[str, int]:
    batch = int(config.get("train_batch_size") or 1)
    accumulation = int(config.get("gradient_accumulation_steps") or 1)
    batches = math.ceil(math.ceil(images / batch) / WORLD_SIZE)  # len(train_dataloader)
    if config.get("max_train_epochs"):  # train_network.py:799-805
        max_steps = int(config["max_train_epochs"]) * math.ceil(batches / accumulation)
        say(
            f"override steps. steps for {config['max_train_epochs']} epochs is / "
            f"指定エポックまでのステップ数: {max_steps}"
        )
    else:
        max_steps = int(config.get("max_train_steps") or 1600)  # train_util.py:3952 default
    per_epoch = math.ceil(batches / accumulation)  # train_network.py:978
    return {
        "images": images,
        "batches": batches,
        "batch": batch,
        "accumulation": accumulation,
        "max_train_steps": max_steps,
        "per_epoch": per_epoch,
        "epochs": math.ceil(max_steps / per_epoch),  # train_network.py:979
    }


def _load_state(resume: str | None, network: bool) -> int | None:
    """`accelerator.load_state(resume)`; the network script's load hook reads the step."""
    if not resume:
        return None
    log(f"resume training from local state: {resume}")  # train_util.py:4777
    state = Path(resume)
    if not state.is_dir():  # acc: accelerator.py:3376-3377
        raise ValueError(f"Tried to find {resume} but folder does not exist")
    steps = None
    state_file = state / "train_state.json"
    if network and state_file.is_file():  # train_network.py:964-969, a pre-hook of load_state
        data = json.loads(state_file.read_text(encoding="utf-8"))
        steps = data["current_step"]
        log(f"load train state from {state_file}: {data}")
    log(f"Loading states from {resume}")  # acc: accelerator.py:3390
    for names in (
        ("model.safetensors", "pytorch_model.bin"),
        ("optimizer.bin",),
        ("scheduler.bin",),
    ):
        if not any((state / name).is_file() for name in names):  # acc: checkpointing.py:222-247
            raise FileNotFoundError(f"[Errno 2] No such file or directory: '{state / names[0]}'")
    log("All model weights loaded successfully")
    return steps


def _initial_step(config: dict[str, Any], plan: dict[str, int], steps_from_state: int | None):
    """train_network.py:1231-1275 and 1340-1344: (initial_step, epoch_to_start, global_step)."""
    initial_step = 0
    if config.get("initial_epoch") is not None or config.get("initial_step") is not None:
        if steps_from_state is not None:
            log("steps from the state is ignored because initial_step is specified")
        if config.get("initial_step") is not None:
            initial_step = int(config["initial_step"])
        else:
            initial_step = (int(config["initial_epoch"]) - 1) * math.ceil(
                plan["batches"] / plan["accumulation"]
            )
    elif steps_from_state is not None:
        initial_step = steps_from_state
    if initial_step > 0 and not plan["max_train_steps"] > initial_step:
        raise AssertionError(
            "max_train_steps should be greater than initial step / max_train_stepsは初期ステップ"
            f"より大きい必要があります: {plan['max_train_steps']} vs {initial_step}"
        )
    epoch_to_start = 0
    if initial_step > 0:
        if config.get("skip_until_initial_step"):
            log(f"skipping {initial_step} steps / {initial_step}ステップをスキップします")
            initial_step *= plan["accumulation"]  # now in batches (:1266)
            epoch_to_start = initial_step // plan["per_epoch"]
        else:
            epoch_to_start = initial_step // plan["per_epoch"]
            initial_step = 0  # do not skip
    global_step = 0
    if initial_step > 0:  # only with --skip_until_initial_step (:1340-1344)
        for skip_epoch in range(epoch_to_start):
            log(
                f"skipping epoch {skip_epoch + 1} because initial_step (multiplied) is {initial_step}"
            )
            initial_step -= plan["batches"]
        global_step = initial_step
    return initial_step, epoch_to_start, global_step


def _train(config: dict[str, Any], script: str, plan: dict[str, int], steps_from_state) -> int:
    output_dir = Path(config["output_dir"])
    name = config.get("output_name") or "last"
    network = script in NETWORK_SCRIPTS
    _running_training_block(plan, network)
    if network:
        initial_step, epoch_to_start, global_step = _initial_step(config, plan, steps_from_state)
    else:  # flux_train.py:552-553, sdxl_train.py:595-596: no initial step at all
        initial_step, epoch_to_start, global_step = 0, 0, 0

    from tqdm import tqdm  # real tqdm, on stderr, with sd-scripts' arguments

    sleep = float(os.environ.get("STANDIN_SLEEP_PER_STEP", "0") or 0)
    oom_at = int(os.environ.get("STANDIN_OOM_AT_STEP", "0") or 0)
    crash_at = 0 if config.get("resume") else int(os.environ.get("STANDIN_CRASH_AT_STEP", "0") or 0)
    memory_gb = float(os.environ.get("STANDIN_GPU_MEMORY_GB", "0") or 0)
    broken_gpu = os.environ.get("STANDIN_NCCL_ERROR_ON_GPU", "")
    faulty_gpu = os.environ.get("STANDIN_ECC_ERROR_ON_GPU", "")
    visible_gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    hang_at = 0 if config.get("resume") else int(os.environ.get("STANDIN_HANG_AT_STEP", "0") or 0)
    bar = tqdm(
        range(plan["max_train_steps"] - initial_step), smoothing=0, disable=RANK != 0, desc="steps"
    )
    losses: list[float] = []
    current_step = global_step
    for epoch in range(epoch_to_start, plan["epochs"]):
        say(f"\nepoch {epoch + 1}/{plan['epochs']}" + ("\n" if network else ""))
        skip = 0
        if initial_step > 0:  # skip_first_batches(initial_step - 1), then one more (:1410-1419)
            skip, initial_step = initial_step, 0
        for batch in range(plan["batches"]):
            current_step = global_step  # current_step.value, before the step (:1416)
            if batch < skip:
                continue
            if (batch + 1) % plan["accumulation"] and batch + 1 != plan["batches"]:
                continue  # gradients accumulate: no sync_gradients, no step (:1486)
            if sleep:
                time.sleep(sleep)
            if broken_gpu and broken_gpu in visible_gpus:
                bar.close()
                nccl_failure(script)
            if faulty_gpu and faulty_gpu in visible_gpus:
                bar.close()
                ecc_failure(script)
            if RANK == 0 and memory_gb and vram_need_gb(script, config) > memory_gb:
                bar.close()
                out_of_memory(script)
            if RANK == 0 and oom_at and global_step + 1 == oom_at:
                bar.close()
                out_of_memory(script)
            if RANK == 0 and crash_at and global_step + 1 == crash_at:
                _die()
            if hang_at and global_step + 1 == hang_at:
                while True:  # every rank: a stuck collective holds them all
                    time.sleep(3600)
            bar.update(1)  # progress_bar.update(1); global_step += 1 (:1486-1488)
            global_step += 1
            losses.append(0.08 + 0.3 * math.exp(-global_step / 40) + 0.01 * math.sin(global_step))
            _maybe_sample(config, output_dir, name, global_step)
            every = config.get("save_every_n_steps")
            if RANK == 0 and every and global_step % int(every) == 0:
                _save_step(config, output_dir, name, global_step, epoch, network, current_step)
            window = losses[-plan["per_epoch"] :]
            # the moving average of the loss as the postfix (train_network.py:1514-1516)
            bar.set_postfix(avr_loss=sum(window) / len(window))
            if global_step >= plan["max_train_steps"]:  # leaves the batch loop only (:1605-1606)
                break
    bar.close()
    # the network trainer saves the last state on the main process only (:1722); the full
    # fine-tunes on every process (flux_train.py:772-776, sdxl_train.py:864-867)
    if (RANK == 0 or not network) and (
        config.get("save_state") or config.get("save_state_on_train_end")
    ):
        _save_state_on_train_end(output_dir, name, plan["epochs"], global_step - 1, network)
    if RANK == 0:
        _save_final_model(output_dir, name, global_step, network)
    return 0


def _running_training_block(plan: dict[str, int], network: bool) -> None:
    """train_network.py:987-1000; flux_train.py:539-550 (sdxl_train.py:582-593 alike)."""
    say("running training / 学習開始")
    if network:
        say(f"  num train images * repeats / 学習画像の数×繰り返し回数: {plan['images']}")
        say("  num validation images * repeats / 学習画像の数×繰り返し回数: 0")
        say("  num reg images / 正則化画像の数: 0")
    else:
        say(f"  num examples / サンプル数: {plan['images']}")
    say(f"  num batches per epoch / 1epochのバッチ数: {plan['batches']}")
    say(f"  num epochs / epoch数: {plan['epochs']}")
    say(f"  batch size per device / バッチサイズ: {plan['batch']}")
    say(f"  gradient accumulation steps / 勾配を合計するステップ数 = {plan['accumulation']}")
    say(f"  total optimization steps / 学習ステップ数: {plan['max_train_steps']}")


def _maybe_sample(config: dict[str, Any], output_dir: Path, name: str, step: int) -> None:
    """library/train_util.py:6394 (the message) and :6572-6576 (the file name)."""
    every = config.get("sample_every_n_steps")
    if RANK != 0 or not every or step % int(every) != 0 or config.get("sample_every_n_epochs"):
        return
    say("")
    log(f"generating sample images at step / サンプル画像生成 ステップ: {step}")
    prompts_file = config.get("sample_prompts")
    if not prompts_file or not os.path.exists(prompts_file):
        log(f"No prompt file / プロンプトファイルがありません: {prompts_file}")
        return
    from tqdm import tqdm

    lines = Path(prompts_file).read_text(encoding="utf-8").splitlines()
    prompts = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    (output_dir / "sample").mkdir(parents=True, exist_ok=True)
    for index, line in enumerate(prompts):
        prompt = parse_prompt_line(line)
        log(f"prompt: {prompt['prompt']}")
        log(f"height: {prompt.get('height', 512)}")
        log(f"width: {prompt.get('width', 512)}")
        log(f"sample_steps: {prompt.get('sample_steps', 20)}")
        for _ in tqdm(range(prompt.get("sample_steps", 20))):
            pass
        seed = prompt.get("seed")
        stamp = time.strftime("%Y%m%d%H%M%S", time.localtime())
        image = f"{name}_{step:06d}_{index:02d}_{stamp}{'' if seed is None else f'_{seed}'}.png"
        (output_dir / "sample" / image).write_bytes(tiny_png())


def _save_step(config: dict[str, Any], output_dir: Path, name: str, step: int, epoch: int,
               network: bool, current_step: int) -> None:  # fmt: skip
    output_dir.mkdir(parents=True, exist_ok=True)
    every = int(config["save_every_n_steps"])
    checkpoint = output_dir / f"{name}-step{step:08d}.safetensors"
    if network:
        say(f"\nsaving checkpoint: {checkpoint}")  # train_network.py:1300
    else:
        log("")
        log(f"saving checkpoint: {checkpoint}")  # library/train_util.py:5888-5889
    write_safetensors(checkpoint, step)
    keep = config.get("save_last_n_steps")
    if network and config.get("save_state"):
        _save_state_stepwise(config, output_dir, name, step, epoch, network, current_step)
    old = _remove_step_no(step, keep, every)  # library/train_util.py:5796-5806
    if old is not None:
        stale = output_dir / f"{name}-step{old:08d}.safetensors"
        if stale.exists():
            (say if network else log)(f"removing old checkpoint: {stale}")
            stale.unlink()
    if not network and config.get("save_state"):
        _save_state_stepwise(config, output_dir, name, step, epoch, network, current_step)


def _save_state_stepwise(config, output_dir: Path, name: str, step: int, epoch: int,
                         network: bool, current_step: int) -> None:  # fmt: skip
    """library/train_util.py:5960-5983."""
    log("")
    log(f"saving state at step {step}")
    _save_state(output_dir / f"{name}-step{step:08d}-state", epoch + 1, current_step, network, step)
    keep = config.get("save_last_n_steps_state") or config.get("save_last_n_steps")
    old = _remove_step_no(step, keep, int(config["save_every_n_steps"]))
    if old is not None and old > 0:
        stale = output_dir / f"{name}-step{old:08d}-state"
        if stale.exists():
            log(f"removing old state: {stale}")
            shutil.rmtree(stale)


def _remove_step_no(step: int, keep: Any, every: int) -> int | None:
    if not keep:
        return None
    old = step - int(keep) - 1
    old -= old % every
    return old if old >= 0 else None


def _save_state(state_dir: Path, epoch: int, current_step: int, network: bool, step: int) -> None:
    """`accelerator.save_state`: the network's hook writes train_state.json before the weights."""
    log(f"Saving current state to {state_dir}")  # acc: accelerator.py:3241
    state_dir.mkdir(parents=True, exist_ok=True)
    if network:  # train_network.py:944-948
        state_file = state_dir / "train_state.json"
        log(f"save train state to {state_file} at epoch {epoch} step {current_step + 1}")
        state_file.write_text(
            json.dumps({"current_epoch": epoch, "current_step": current_step + 1}), encoding="utf-8"
        )
    if int(os.environ.get("STANDIN_CRASH_IN_SAVE_AT_STEP", "0") or 0) == step:
        _die()
    write_safetensors(state_dir / "model.safetensors", step)
    for file in ("optimizer.bin", "scheduler.bin", f"random_states_{RANK}.pkl"):
        (state_dir / file).write_bytes(b"stand-in state")


def _save_state_on_train_end(output_dir: Path, name: str, epochs: int, current_step: int,
                             network: bool) -> None:  # fmt: skip
    """library/train_util.py:5986-5998, before the final model."""
    output_dir.mkdir(parents=True, exist_ok=True)
    log("")
    log("saving last state.")
    _save_state(output_dir / f"{name}-state", epochs, current_step, network, -1)


def _save_final_model(output_dir: Path, name: str, step: int, network: bool) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"{name}.safetensors"
    if network:
        say(f"\nsaving checkpoint: {final}")  # train_network.py:1725-1729
    else:
        log(f"save trained model as StableDiffusion checkpoint to {final}")  # train_util.py:6046
    write_safetensors(final, step)
    log("model saved.")


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
