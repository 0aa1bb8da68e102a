"""The Tiny trainer's config file: kohya's key names where kohya has one, `tiny_*` for the model.

Every key is checked: an unknown key or a bad value stops the trainer with exit status 2 and a
message naming the key, the way a typo in a kohya config should (kohya itself ignores it silently).
Relative paths are taken relative to the current directory, as kohya does.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from autotrain.errors import ConfigError

__all__ = ["TinyConfig", "load_config", "CONFIG_KEYS"]


class TinyConfig(BaseModel):
    """Everything the Tiny trainer reads. Descriptions double as the reference documentation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Per-dataset keys (autotrain fills these in).
    train_data_dir: Path = Field(
        description="staged images with <stem>.txt captions, read recursively; a kohya "
        "`N_name/` folder repeats its images N times"
    )
    output_dir: Path = Field(description="weights, step checkpoints and state directories")
    output_name: str = Field("last", min_length=1, description="file name stem of the weights")
    logging_dir: Path | None = Field(None, description="created if given; nothing else is written")
    sample_prompts: Path | None = Field(
        None, description="kohya-style prompt file (`prompt --w 32 --h 32 --s 8 --d 42`)"
    )

    # Training.
    caption_extension: str = Field(".txt", description="caption file suffix")
    num_repeats: int = Field(1, ge=1, description="repeats for images not in an `N_name/` folder")
    resolution: int = Field(32, ge=8, le=512, description="square training size, a multiple of 2")
    train_batch_size: int = Field(4, ge=1, le=1024)
    max_train_steps: int = Field(200, ge=1)
    max_train_epochs: int | None = Field(
        None, ge=1, description="as in kohya: when set, overrides max_train_steps"
    )
    learning_rate: float = Field(1e-2, gt=0, description="AdamW learning rate of the LoRA")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping; 0 turns it off")
    discrete_flow_shift: float = Field(
        1.0, gt=0, le=100, description="as in kohya: shifts the training timesteps towards noise"
    )
    seed: int = Field(42, ge=0, description="data order, noise and timesteps")
    network_dim: int = Field(8, ge=1, le=256, description="LoRA rank")
    network_alpha: float = Field(8.0, gt=0, description="LoRA alpha (scale = alpha / rank)")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="autocast dtype on CUDA; ignored on CPU"
    )
    save_model_as: Literal["safetensors"] = "safetensors"

    # Checkpoints and samples.
    save_every_n_steps: int | None = Field(
        50, ge=1, description="LoRA weights (and state) every N steps"
    )
    save_state: bool = Field(True, description="write a resumable state dir with each checkpoint")
    save_last_n_steps_state: int | None = Field(
        None,
        ge=1,
        description="as in kohya: keep only the states of the last N steps (None: keep all)",
    )
    sample_every_n_steps: int | None = Field(None, ge=1, description="sample images every N steps")
    sample_captions: int = Field(
        0, ge=0, le=64, description="also sample the first N distinct captions of the dataset"
    )

    # The tiny model (a diffusers FluxTransformer2DModel built from tiny_model_seed).
    tiny_num_layers: int = Field(1, ge=0, le=8, description="double-stream (MMDiT) blocks")
    tiny_num_single_layers: int = Field(2, ge=0, le=16, description="single-stream blocks")
    tiny_num_attention_heads: int = Field(2, ge=1, le=16)
    tiny_attention_head_dim: int = Field(16, ge=8, le=128, description="multiple of 8 (RoPE)")
    tiny_joint_attention_dim: int = Field(32, ge=4, le=1024, description="caption embedding width")
    tiny_caption_tokens: int = Field(16, ge=1, le=256, description="caption length in tokens")
    tiny_patch_size: int = Field(
        4, ge=1, le=16, description="pixels per token side: an image token packs p x p RGB pixels"
    )
    tiny_base: Literal["shapes", "random"] = Field(
        "shapes",
        description="shapes: the pretrained base shipped with the package; random: initialised "
        "from tiny_model_seed",
    )
    tiny_model_seed: int = Field(
        0, ge=0, description="the caption table, and the base model's weights when random"
    )
    tiny_num_threads: int = Field(
        1, ge=0, le=256, description="torch CPU threads; 0 = torch's default (all cores)"
    )

    @field_validator("resolution", mode="before")
    @classmethod
    def _kohya_resolution(cls, value: Any) -> Any:
        """kohya writes `resolution = "512,512"`; Tiny trains square images only."""
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",")]
            if len(parts) == 2 and parts[0] != parts[1]:
                raise ValueError(f"Tiny trains square images only, got {value!r}")
            return parts[0]
        return value

    @field_validator("resolution", "tiny_attention_head_dim")
    @classmethod
    def _even(cls, value: int, info: Any) -> int:
        step = 2 if info.field_name == "resolution" else 8
        if value % step:
            raise ValueError(f"must be a multiple of {step}, got {value}")
        return value

    @model_validator(mode="after")
    def _layers(self) -> TinyConfig:
        if self.tiny_num_layers + self.tiny_num_single_layers == 0:
            raise ValueError("tiny_num_layers and tiny_num_single_layers cannot both be 0")
        if self.resolution % self.tiny_patch_size:
            raise ValueError(
                f"resolution {self.resolution} is not a multiple of "
                f"tiny_patch_size {self.tiny_patch_size}"
            )
        return self

    def total_steps(self, items: int) -> int:
        """Optimisation steps for `items` (images x repeats) samples, kohya's arithmetic."""
        if self.max_train_epochs is None:
            return self.max_train_steps
        return self.max_train_epochs * -(-items // self.train_batch_size)


CONFIG_KEYS: tuple[str, ...] = tuple(TinyConfig.model_fields)


def load_config(path: Path) -> TinyConfig:
    """Read and check the TOML at `path`; every problem names the key and the file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Config file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc}") from None
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(
            f"Unknown key(s) in {path}: {', '.join(unknown)}. The Tiny trainer reads only: "
            f"{', '.join(CONFIG_KEYS)}."
        )
    # TOML has no null: an empty string means "not set" for optional paths and numbers.
    cleaned = {k: (None if v == "" else v) for k, v in data.items()}
    try:
        return TinyConfig(**cleaned)
    except PydanticValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"Invalid value in {path}: {problems}") from None
