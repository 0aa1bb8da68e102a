"""The training loop: rectified-flow matching of a LoRA on the tiny Flux transformer.

x_t = (1 - t) x_0 + t noise with t = sigmoid(normal), shifted towards noise by
`discrete_flow_shift` (kohya's `--timestep_sampling shift`), as in kohya's Flux trainers. The model
predicts the clean image x_0 under an MSE loss: the same flow (its velocity is (x_t - x_0) / t),
parametrised so that a model narrower than its tokens need not reproduce the noise, which it could
not, and its samples come out clean. Output follows kohya's shape line for line so that one parser
serves both.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections import deque
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from autotrain.errors import ConfigError
from autotrain.tiny_trainer.config import TinyConfig
from autotrain.tiny_trainer.data import CaptionEncoder, TrainSet, image_ids, load_train_set
from autotrain.tiny_trainer.model import (
    build_model,
    lora_parameters,
    metadata_for,
    predict,
    sample_image,
    save_lora,
)
from autotrain.tiny_trainer.state import (
    load_state,
    prune_states,
    remove_partial,
    save_state,
    state_dir_name,
    step_weights_name,
)

__all__ = ["train", "STEP_DELAY_ENV"]

# Seconds to pause after every step, so a demo (or a test of cancel, resume and live monitoring)
# can watch a run that would otherwise finish in seconds.
STEP_DELAY_ENV = "AUTOTRAIN_TINY_STEP_DELAY"


def train(config: TinyConfig, resume: Path | None = None) -> int:
    """Train all steps (from a saved state when `resume` is given); returns the exit status."""
    stop = _stop_on_signal()
    delay = _step_delay()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.tiny_num_threads:
        torch.set_num_threads(config.tiny_num_threads)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    if config.logging_dir is not None:
        config.logging_dir.mkdir(parents=True, exist_ok=True)
    remove_partial(config.output_dir)

    encoder = CaptionEncoder(
        config.tiny_joint_attention_dim, config.tiny_caption_tokens, config.tiny_model_seed
    )
    data = load_train_set(
        config.train_data_dir,
        config.resolution,
        encoder,
        config.caption_extension,
        config.num_repeats,
        config.tiny_patch_size,
    )
    model = build_model(config, device)
    optimizer = torch.optim.AdamW(lora_parameters(model), lr=config.learning_rate)
    scaler = torch.amp.GradScaler(
        "cuda", enabled=device.type == "cuda" and config.mixed_precision == "fp16"
    )
    start = 0
    if resume is not None:
        _say(f"resume training from local state: {resume}")
        start = load_state(resume, config, model, optimizer)
        _say(f"resuming at step {start}")

    per_epoch = math.ceil(len(data) / config.train_batch_size)
    total = config.total_steps(len(data))
    epochs = math.ceil(total / per_epoch)
    _announce(config, device, len(data), per_epoch, epochs, total)
    if start >= total:
        _say(f"the state is at step {start} of {total}: nothing left to train")

    prompts = _sample_prompts(config, data) if config.sample_every_n_steps else []
    ids = image_ids(config.resolution, config.resolution, config.tiny_patch_size).to(device)
    losses: deque[float] = deque(maxlen=max(per_epoch, 10))
    bar = tqdm(
        total=total,
        initial=start,
        desc="steps",
        smoothing=0,
        disable=False,
        dynamic_ncols=False,
    )
    model.train()
    for step in range(start, total):
        if stop:
            bar.close()
            name = signal.Signals(stop[0]).name
            _say(f"received {name}: stopped at step {step} (resume from the newest state)")
            return 128 + stop[0]
        if step % per_epoch == 0 or step == start:
            _say(f"\nepoch {step // per_epoch + 1}/{epochs}")
        loss = _train_step(config, model, optimizer, scaler, data, ids, step, per_epoch)
        losses.append(loss)
        bar.set_postfix(avr_loss=sum(losses) / len(losses), refresh=False)
        bar.update(1)
        _pause(delay, stop)
        done = step + 1
        if prompts and done % config.sample_every_n_steps == 0:  # type: ignore[operator]
            _samples(config, model, encoder, prompts, done, device)
        if config.save_every_n_steps and done % config.save_every_n_steps == 0:
            _checkpoint(config, model, optimizer, done)
    bar.close()

    final = config.output_dir / f"{config.output_name}.safetensors"
    _say(f"\nsaving checkpoint: {final}")
    save_lora(model, final, metadata_for(config, total))
    _say("model saved.")
    return 0


def _announce(
    config: TinyConfig, device: torch.device, items: int, per_epoch: int, epochs: int, total: int
) -> None:
    """kohya's run summary; the `total optimization steps` line is what the parser reads."""
    _say(f"device: {device}, torch threads: {torch.get_num_threads()}")
    _say("running training")
    _say(f"  num train images * repeats: {items}")
    _say(f"  num batches per epoch: {per_epoch}")
    _say(f"  num epochs: {epochs}")
    _say(f"  batch size per device: {config.train_batch_size}")
    _say(f"  total optimization steps: {total}")


def _train_step(
    config: TinyConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    data: TrainSet,
    ids: torch.Tensor,
    step: int,
    per_epoch: int,
) -> float:
    """One optimisation step; all its randomness is a function of (seed, step)."""
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(len(data), generator=_generator(config.seed, epoch, 0))
    items = order[position * config.train_batch_size : (position + 1) * config.train_batch_size]
    index = torch.tensor([data.order[i] for i in items.tolist()])
    generator = _generator(config.seed, step, 1)
    device = ids.device
    x0 = data.tokens[index]
    noise = torch.randn(x0.shape, generator=generator)
    t = _shifted(torch.sigmoid(torch.randn(len(index), generator=generator)), config)
    noisy = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
    target = x0.to(device)
    with _autocast(config, device):
        predicted = predict(
            model,
            noisy.to(device),
            data.captions[index].to(device),
            data.pooled[index].to(device),
            t.to(device),
            ids,
        )
    loss = F.mse_loss(predicted.float(), target)
    scaler.scale(loss).backward()
    if config.max_grad_norm > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(lora_parameters(model), config.max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def _shifted(t: torch.Tensor, config: TinyConfig) -> torch.Tensor:
    """kohya's `discrete_flow_shift`: more of the steps at high noise, where layout is decided."""
    shift = config.discrete_flow_shift
    return t * shift / (1 + (shift - 1) * t)


def _checkpoint(
    config: TinyConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int
) -> None:
    weights = config.output_dir / step_weights_name(config.output_name, step)
    _say(f"\nsaving checkpoint: {weights}")
    save_lora(model, weights, metadata_for(config, step))
    if not config.save_state:
        return
    state = config.output_dir / state_dir_name(config.output_name, step)
    _say(f"saving state at step {step}: {state}")
    save_state(state, config, model, optimizer, step)
    for old in prune_states(
        config.output_dir, config.output_name, step, config.save_last_n_steps_state
    ):
        _say(f"removing old state: {old}")


def _samples(
    config: TinyConfig,
    model: torch.nn.Module,
    encoder: CaptionEncoder,
    prompts: list[dict[str, Any]],
    step: int,
    device: torch.device,
) -> None:
    _say(f"\ngenerating sample images at step {step}")
    folder = config.output_dir / "sample"
    folder.mkdir(exist_ok=True)
    model.eval()
    for index, spec in enumerate(prompts):
        _say(f"prompt: {spec['prompt']}")
        image = sample_image(
            model,
            encoder,
            spec["prompt"],
            width=spec.get("w", config.resolution),
            height=spec.get("h", config.resolution),
            steps=spec.get("s", 8),
            seed=spec.get("d", config.seed + index),
            patch=config.tiny_patch_size,
            device=device,
        )
        path = folder / f"{config.output_name}_{step:06d}_{index:02d}.png"
        partial = path.with_name(f".{path.name}.partial")
        image.save(partial, format="PNG")
        partial.replace(path)
        _say(f"saving sample image: {path}")
    model.train()


def _sample_prompts(config: TinyConfig, data: TrainSet) -> list[dict[str, Any]]:
    """The first `sample_captions` distinct training captions, then the prompt file's prompts.

    The captions take the options (size, steps, seed) of the file's first line, so a sample of a
    caption can be set beside the image it describes.
    """
    listed = _read_prompts(config.sample_prompts)
    options = {key: value for key, value in listed[0].items() if key != "prompt"} if listed else {}
    captions = list(dict.fromkeys(e.caption for e in data.examples if e.caption))
    return [{"prompt": c, **options} for c in captions[: config.sample_captions]] + listed


def _read_prompts(path: Path | None) -> list[dict[str, Any]]:
    """kohya's prompt file: one prompt a line, options `--w --h --s --d` (others ignored)."""
    if path is None or not path.is_file():
        if path is not None:
            _say(f"sample prompts file not found, no samples: {path}")
        return []
    prompts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        prompt, *options = line.split(" --")
        spec: dict[str, Any] = {"prompt": prompt.strip()}
        for option in options:
            key, _, value = option.strip().partition(" ")
            if key in ("w", "h", "s", "d") and value.strip().lstrip("-").isdigit():
                spec[key] = int(value)
        prompts.append(spec)
    return prompts


def _generator(seed: int, index: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + index * 2 + stream) % (2**63))


def _autocast(config: TinyConfig, device: torch.device) -> Any:
    if device.type != "cuda" or config.mixed_precision == "no":
        return nullcontext()
    dtype = torch.bfloat16 if config.mixed_precision == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _step_delay() -> float:
    value = os.environ.get(STEP_DELAY_ENV, "").strip()
    try:
        delay = float(value) if value else 0.0
    except ValueError:
        delay = -1.0
    if not 0 <= delay <= 3600:
        raise ConfigError(f"{STEP_DELAY_ENV}={value!r}: give seconds between 0 and 3600")
    return delay


def _pause(seconds: float, stop: list[int]) -> None:
    """Sleep, but wake within 50 ms of a stop signal."""
    deadline = time.monotonic() + seconds
    while not stop and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))


def _stop_on_signal() -> list[int]:
    """SIGTERM (cancel, worker shutdown) or Ctrl-C ends the run at the next step boundary."""
    received: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _frame: received.append(number))
    return received


def _say(text: str) -> None:
    print(text, flush=True)
