"""Images and captions as the tiny Flux transformer sees them.

Flux trains on VAE latents; Tiny has no VAE, so the "latent" of an image is the image itself,
pixel-unshuffled p x p (`tiny_patch_size`: RGB at R x R becomes 3 p^2 channels at R/p x R/p) and
packed into a token sequence with 2-D positions, exactly the shapes a Flux latent has. Captions go through a fixed
hashing "text encoder": each word picks a row of a random table seeded by the model seed, so the
same caption always gives the same embedding and different captions give different conditioning.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from autotrain.errors import ValidationError

__all__ = [
    "Example",
    "TrainSet",
    "CaptionEncoder",
    "load_train_set",
    "image_to_tokens",
    "tokens_to_image",
    "image_ids",
    "IMAGE_SUFFIXES",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
_REPEAT_DIR = re.compile(r"^(\d+)_(.+)$")
_WORD = re.compile(r"\w+")
_VOCAB = 4096


@dataclass(frozen=True)
class Example:
    path: Path
    caption: str
    repeats: int


@dataclass
class TrainSet:
    """Every image once, as packed tokens, plus the index list that applies the repeats."""

    examples: list[Example]
    tokens: torch.Tensor  # [images, (R/2)^2, 12]
    captions: torch.Tensor  # [images, caption_tokens, joint_dim]
    pooled: torch.Tensor  # [images, joint_dim]
    order: list[int]  # image index per dataset item, repeats included

    def __len__(self) -> int:
        return len(self.order)


class CaptionEncoder:
    """Deterministic stand-in for Flux's T5 + CLIP: words hashed into a seeded embedding table."""

    def __init__(self, dim: int, length: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed + 1)
        self.table = torch.randn(_VOCAB, dim, generator=generator)
        self.table[0] = 0.0  # padding
        self.length = length

    def token_ids(self, caption: str) -> list[int]:
        words = _WORD.findall(caption.lower())[: self.length]
        return [zlib.crc32(word.encode()) % (_VOCAB - 1) + 1 for word in words]

    def encode(self, caption: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(sequence [length, dim], pooled [dim]); an empty caption is all padding."""
        ids = self.token_ids(caption)
        sequence = torch.zeros(self.length, self.table.shape[1])
        if ids:
            sequence[: len(ids)] = self.table[ids]
            return sequence, self.table[ids].mean(dim=0)
        return sequence, torch.zeros(self.table.shape[1])


def load_train_set(
    root: Path,
    resolution: int,
    encoder: CaptionEncoder,
    caption_extension: str = ".txt",
    num_repeats: int = 1,
    patch: int = 2,
) -> TrainSet:
    """Load every image under `root`; a folder `N_name/` repeats its images N times (kohya)."""
    if not root.is_dir():
        raise ValidationError(f"train_data_dir {root} is not a directory")
    examples = [
        Example(path, _caption(path, caption_extension), _repeats(path, root, num_repeats))
        for path in sorted(root.rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    if not examples:
        raise ValidationError(
            f"No images in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    tokens = torch.stack(
        [image_to_tokens(_load_image(e.path, resolution), patch) for e in examples]
    )
    encoded = [encoder.encode(e.caption) for e in examples]
    order = [i for i, e in enumerate(examples) for _ in range(e.repeats)]
    return TrainSet(
        examples=examples,
        tokens=tokens,
        captions=torch.stack([sequence for sequence, _ in encoded]),
        pooled=torch.stack([pooled for _, pooled in encoded]),
        order=order,
    )


def image_to_tokens(image: torch.Tensor, patch: int) -> torch.Tensor:
    """[3, R, R] in [-1, 1] -> [(R/p)^2, 3 p^2] packed tokens, row-major like Flux's latents."""
    packed = F.pixel_unshuffle(image.unsqueeze(0), patch)[0]  # [3 p^2, R/p, R/p]
    return packed.flatten(1).transpose(0, 1).contiguous()


def tokens_to_image(tokens: torch.Tensor, height: int, width: int, patch: int) -> Image.Image:
    """Inverse of image_to_tokens, to an RGB picture (values clamped to [-1, 1])."""
    packed = tokens.transpose(0, 1).reshape(3 * patch * patch, height // patch, width // patch)
    pixels = F.pixel_shuffle(packed.unsqueeze(0), patch)[0].clamp(-1, 1)
    array = ((pixels + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    return Image.fromarray(array.numpy())


def image_ids(height: int, width: int, patch: int) -> torch.Tensor:
    """Flux's img_ids: (0, row, column) for every packed token."""
    ids = torch.zeros(height // patch, width // patch, 3)
    ids[..., 1] = torch.arange(height // patch).unsqueeze(1)
    ids[..., 2] = torch.arange(width // patch).unsqueeze(0)
    return ids.reshape(-1, 3)


def _load_image(path: Path, resolution: int) -> torch.Tensor:
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, ValueError) as exc:
        raise ValidationError(f"Cannot read image {path}: {exc}") from None
    image = ImageOps.fit(image, (resolution, resolution), Image.Resampling.BICUBIC)
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(resolution, resolution, 3).permute(2, 0, 1).float() / 127.5 - 1.0


def _caption(image: Path, extension: str) -> str:
    """The caption file's text; without one, the class name of a kohya `N_name/` folder."""
    caption_file = image.with_suffix(extension)
    if caption_file.is_file():
        return caption_file.read_text(encoding="utf-8", errors="replace").strip()
    match = _REPEAT_DIR.match(image.parent.name)
    return match[2].replace("_", " ") if match else ""


def _repeats(image: Path, root: Path, default: int) -> int:
    for folder in image.relative_to(root).parents:
        match = _REPEAT_DIR.match(folder.name)
        if match:
            return max(int(match[1]), 1)
    return default
