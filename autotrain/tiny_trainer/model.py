"""The tiny base model, its LoRA, and sampling.

The base model is a genuine diffusers `FluxTransformer2DModel` (double- and single-stream blocks,
RoPE over image positions, timestep and pooled-text modulation) shrunk to a few hundred kB. Its
weights ship with the package (`base/shapes.safetensors`, pretrained on drawn shapes by
examples/make_tiny_base.py), or with `tiny_base = "random"` are initialised from
`tiny_model_seed`; either way nothing is downloaded and every host has the identical base.

The LoRA covers every linear layer. kohya's Flux LoRA adapts only attention and MLPs, which is
enough on top of a trained Flux; a base this small needs its embedders and output projection
adapted too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel
from peft import (
    LoraConfig,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from autotrain.errors import ConfigError
from autotrain.tiny_trainer.config import TinyConfig
from autotrain.tiny_trainer.data import CaptionEncoder, image_ids, tokens_to_image

__all__ = [
    "lora_targets",
    "base_model_config",
    "build_model",
    "new_base_model",
    "save_base",
    "load_base",
    "BUILTIN_BASE",
    "lora_parameters",
    "lora_state_dict",
    "load_lora",
    "save_lora",
    "predict",
    "sample_image",
]

# The pretrained base (examples/make_tiny_base.py writes it) and the settings it fixes.
BUILTIN_BASE = Path(__file__).resolve().parent / "base" / "shapes.safetensors"
BASE_SETTINGS = (
    "tiny_num_layers",
    "tiny_num_single_layers",
    "tiny_num_attention_heads",
    "tiny_attention_head_dim",
    "tiny_joint_attention_dim",
    "tiny_caption_tokens",
    "tiny_patch_size",
    "tiny_model_seed",
)
_UMASK = os.umask(0)
os.umask(_UMASK)


def base_model_config(config: TinyConfig) -> dict[str, Any]:
    """The FluxTransformer2DModel arguments; recorded in every weights file's metadata."""
    return {
        "patch_size": 1,
        "in_channels": 3 * config.tiny_patch_size**2,  # RGB, pixel-unshuffled
        "num_layers": config.tiny_num_layers,
        "num_single_layers": config.tiny_num_single_layers,
        "attention_head_dim": config.tiny_attention_head_dim,
        "num_attention_heads": config.tiny_num_attention_heads,
        "joint_attention_dim": config.tiny_joint_attention_dim,
        "pooled_projection_dim": config.tiny_joint_attention_dim,
        "guidance_embeds": False,
        "axes_dims_rope": _rope_axes(config.tiny_attention_head_dim),
    }


def build_model(config: TinyConfig, device: torch.device) -> FluxTransformer2DModel:
    """The base model, frozen, with a fresh (zero-effect) LoRA whose weights train.

    The base is the pretrained one shipped with the package (`tiny_base = "shapes"`) or, with
    `tiny_base = "random"`, initialised from `tiny_model_seed`.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.tiny_model_seed)
        model = new_base_model(config)
        if config.tiny_base == "shapes":
            load_base(model, config, BUILTIN_BASE)
        model.requires_grad_(False)
        lora = LoraConfig(
            r=config.network_dim,
            lora_alpha=config.network_alpha,
            target_modules=lora_targets(model),
            init_lora_weights=True,
        )
        torch.manual_seed(config.seed)  # LoRA A matrices: a function of the training seed
        model = inject_adapter_in_model(lora, model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return model.to(device)


def new_base_model(config: TinyConfig) -> FluxTransformer2DModel:
    """A base model with the config's shape, initialised from torch's current random state."""
    return FluxTransformer2DModel(**base_model_config(config))


def save_base(
    model: FluxTransformer2DModel, config: TinyConfig, path: Path, extra: dict[str, str]
) -> None:
    """Base weights (float16) with the settings they belong to, for `load_base`."""
    state = {
        k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()
    }
    metadata = {
        "format": "autotrain-tiny-base",
        "base_model_config": json.dumps(base_model_config(config), sort_keys=True),
        **{key: str(getattr(config, key)) for key in BASE_SETTINGS},
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=metadata)


def load_base(model: FluxTransformer2DModel, config: TinyConfig, path: Path) -> None:
    """Pretrained weights into `model`; settings other than those it was trained with are an error."""
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
    for key in BASE_SETTINGS:
        if metadata.get(key) != str(getattr(config, key)):
            raise ConfigError(
                f"{key} = {getattr(config, key)!r}, but the built-in base model was pretrained with "
                f"{key} = {metadata.get(key)}: keep the Tiny template's value, or set "
                f'tiny_base = "random" to train on a randomly initialised base'
            )
    state = load_file(str(path))
    model.load_state_dict({k: v.float() for k, v in state.items()})


def lora_targets(model: torch.nn.Module) -> list[str]:
    """Full names of the layers the LoRA adapts: every nn.Linear of the base model."""
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def lora_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for name, p in model.named_parameters() if "lora_" in name]


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = get_peft_model_state_dict(model)
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}


def save_lora(model: torch.nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """LoRA weights to `path` atomically (a reader never sees half a file)."""
    temporary = path.with_name(f".{path.name}.partial")
    save_file(lora_state_dict(model), str(temporary), metadata=metadata)
    os.chmod(temporary, 0o666 & ~_UMASK)  # safetensors creates 0600; others read the weights
    temporary.replace(path)


def load_lora(model: torch.nn.Module, path: Path) -> None:
    """Put saved LoRA weights back; a file from a different model or rank is an error."""
    state = load_file(str(path))
    expected = set(get_peft_model_state_dict(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(
            f"{path} does not fit this model (missing {missing[:3]}, unexpected {extra[:3]}): "
            "was it saved with other tiny_* or network_dim settings?"
        )
    for key, value in state.items():
        if value.shape != get_peft_model_state_dict(model)[key].shape:
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, other settings?")
    set_peft_model_state_dict(model, state)


def predict(
    model: FluxTransformer2DModel,
    tokens: torch.Tensor,
    captions: torch.Tensor,
    pooled: torch.Tensor,
    timesteps: torch.Tensor,
    img_ids: torch.Tensor,
) -> torch.Tensor:
    """The model's estimate of the clean tokens x_0, from noisy ones at times `timesteps` in [0, 1]."""
    txt_ids = torch.zeros(captions.shape[1], 3, device=tokens.device)
    return model(
        hidden_states=tokens,
        encoder_hidden_states=captions,
        pooled_projections=pooled,
        timestep=timesteps,
        img_ids=img_ids,
        txt_ids=txt_ids,
        return_dict=False,
    )[0]


@torch.no_grad()
def sample_image(
    model: FluxTransformer2DModel,
    encoder: CaptionEncoder,
    prompt: str,
    *,
    width: int,
    height: int,
    steps: int,
    seed: int,
    patch: int,
    device: torch.device,
) -> Image.Image:
    """Integrate the learned flow from noise (t=1) to an image (t=0) with `steps` Euler steps.

    The velocity at x_t is (x_t - x_0) / t for the predicted x_0, so a step to time t' keeps the
    predicted image and t' / t of the remaining noise; the last step lands on the prediction.
    """
    width, height = max(patch, width - width % patch), max(patch, height - height % patch)
    generator = torch.Generator().manual_seed(seed)
    count = (width // patch) * (height // patch)
    x = torch.randn(1, count, 3 * patch * patch, generator=generator).to(device)
    sequence, pooled = encoder.encode(prompt)
    sequence, pooled = sequence.unsqueeze(0).to(device), pooled.unsqueeze(0).to(device)
    ids = image_ids(height, width, patch).to(device)
    times = torch.linspace(1.0, 0.0, max(steps, 1) + 1)
    for now, after in zip(times[:-1], times[1:], strict=True):
        clean = predict(model, x, sequence, pooled, now.expand(1).to(device), ids).float()
        x = clean + (after / now).item() * (x - clean)
    return tokens_to_image(x[0].cpu(), height, width, patch)


def metadata_for(config: TinyConfig, steps: int) -> dict[str, str]:
    """safetensors metadata (str -> str) describing what the LoRA belongs to."""
    return {
        "format": "autotrain-tiny-lora",
        "base_model": "tiny-flux",
        "base_weights": config.tiny_base,
        "base_model_config": json.dumps(base_model_config(config), sort_keys=True),
        "base_model_seed": str(config.tiny_model_seed),
        "caption_tokens": str(config.tiny_caption_tokens),
        "network_dim": str(config.network_dim),
        "network_alpha": str(config.network_alpha),
        "resolution": str(config.resolution),
        "steps": str(steps),
    }


def _rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Split the head dim over (text index, row, column) in even parts, like Flux's (16, 56, 56)."""
    first = head_dim // 4 - (head_dim // 4) % 2
    half = (head_dim - first) // 2
    if half % 2:
        half -= 1
        first += 2
    return (first, half, half)
