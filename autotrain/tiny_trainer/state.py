"""Resumable training state, laid out like kohya's: `<name>-step00000050-state/` next to the weights.

A state directory is written under a temporary name and renamed into place, so a trainer killed
mid-save never leaves a state that looks complete; `newest_state_dir` (autotrain.trainers) only
ever sees finished ones. Data order, noise and timesteps are functions of (seed, step), so the
step number, LoRA weights and optimizer moments are all a resumed run needs to continue exactly
where the saved run was; RNG states are kept too for anything drawn outside that scheme.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from autotrain.errors import ConfigError
from autotrain.tiny_trainer.config import TinyConfig
from autotrain.tiny_trainer.model import base_model_config, load_lora, metadata_for, save_lora

__all__ = [
    "STATE_FORMAT",
    "step_weights_name",
    "state_dir_name",
    "save_state",
    "load_state",
    "prune_states",
    "remove_partial",
]

STATE_FORMAT = "autotrain-tiny-state"
_LORA, _OPTIMIZER, _RNG, _INFO = "lora.safetensors", "optimizer.pt", "rng.pt", "train_state.json"


def step_weights_name(output_name: str, step: int) -> str:
    return f"{output_name}-step{step:08d}.safetensors"


def state_dir_name(output_name: str, step: int) -> str:
    return f"{output_name}-step{step:08d}-state"


def save_state(
    directory: Path,
    config: TinyConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
) -> None:
    """Write the state for `step` to `directory`, atomically."""
    partial = directory.with_name(f".{directory.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    save_lora(model, partial / _LORA, metadata_for(config, step))
    torch.save(optimizer.state_dict(), partial / _OPTIMIZER)
    torch.save(_rng_states(), partial / _RNG)
    info = {
        "format": STATE_FORMAT,
        "step": step,
        "max_train_steps": config.max_train_steps,
        "seed": config.seed,
        "network_dim": config.network_dim,
        "network_alpha": config.network_alpha,
        "base_model_config": base_model_config(config),
        "tiny_model_seed": config.tiny_model_seed,
        "tiny_base": config.tiny_base,
    }
    (partial / _INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    if directory.exists():
        shutil.rmtree(directory)
    partial.rename(directory)


def load_state(
    directory: Path,
    config: TinyConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
) -> int:
    """Restore a saved state into `model` and `optimizer`; returns the step it was saved at."""
    info_file = directory / _INFO
    if not info_file.is_file():
        raise ConfigError(
            f"--resume {directory}: not a Tiny trainer state directory (no {_INFO}); pass a "
            f"`*-stepNNNNNNNN-state` directory written by this trainer"
        )
    info = json.loads(info_file.read_text(encoding="utf-8"))
    if info.get("format") != STATE_FORMAT:
        raise ConfigError(f"--resume {directory}: {_INFO} is not a Tiny trainer state")
    _check_compatible(directory, info, config)
    try:
        load_lora(model, directory / _LORA)
    except ValueError as exc:
        raise ConfigError(f"--resume {directory}: {exc}") from None
    optimizer.load_state_dict(torch.load(directory / _OPTIMIZER, weights_only=True))
    rng_file = directory / _RNG
    if rng_file.is_file():
        _restore_rng(torch.load(rng_file, weights_only=True))
    return int(info["step"])


def prune_states(
    output_dir: Path, output_name: str, step: int, keep_steps: int | None
) -> list[Path]:
    """kohya's `save_last_n_steps_state`: drop states older than the last `keep_steps` steps."""
    if keep_steps is None:
        return []
    pattern = re.compile(rf"^{re.escape(output_name)}-step(\d{{8}})-state$")
    removed = []
    for candidate in sorted(output_dir.iterdir()):
        match = pattern.match(candidate.name)
        if match and candidate.is_dir() and int(match[1]) < step - keep_steps:
            shutil.rmtree(candidate)
            removed.append(candidate)
    return removed


def remove_partial(output_dir: Path) -> None:
    """Leftovers of a run killed while saving (never valid states or weights)."""
    if not output_dir.is_dir():
        return
    for leftover in output_dir.glob(".*.partial"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _check_compatible(directory: Path, info: dict[str, Any], config: TinyConfig) -> None:
    expected = {
        "network_dim": config.network_dim,
        "base_model_config": base_model_config(config),
        "tiny_model_seed": config.tiny_model_seed,
        "tiny_base": config.tiny_base,
    }
    saved_model = info.get("base_model_config", {})
    if isinstance(saved_model, dict) and "axes_dims_rope" in saved_model:
        saved_model["axes_dims_rope"] = tuple(saved_model["axes_dims_rope"])
    for key, value in expected.items():
        if info.get(key) != value:
            raise ConfigError(
                f"--resume {directory}: saved with {key}={info.get(key)!r} but the config says "
                f"{value!r}; resume with the settings it was trained with, or start afresh"
            )


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
