"""Pretrain the Tiny profile's base model: `autotrain/tiny_trainer/base/shapes.safetensors`.

The Tiny trainer trains a LoRA on a small Flux-architecture transformer. On a randomly initialised
base, a few hundred LoRA steps learn nothing a sample image shows; on this base, pretrained on
procedurally drawn coloured shapes with their captions (the drawer of `make_example_dataset.py`),
the LoRA only has to adapt it: to the positions, sizes and shapes of a dataset's own images. The
base is pretrained on circles, squares and triangles only, so diamonds, rings and stars are
something a LoRA visibly teaches it.

The result depends only on `--seed` and `--steps` (one CPU thread, a fixed data order): re-running
it reproduces the committed weights exactly with the same torch version (safetensors may write the
metadata keys in another order). About five minutes on one CPU core.

    .venv/bin/python examples/make_tiny_base.py              # rewrite the committed base
    .venv/bin/python examples/make_tiny_base.py --steps 500 --out /tmp/base.safetensors
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from make_example_dataset import draw_example
from PIL import Image, ImageOps

from autotrain.tiny_trainer.config import TinyConfig
from autotrain.tiny_trainer.data import CaptionEncoder, image_ids, image_to_tokens
from autotrain.tiny_trainer.model import BUILTIN_BASE, new_base_model, predict, save_base

PRETRAIN_SHAPES = ("circle", "square", "triangle")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BUILTIN_BASE)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=20000, help="size of the drawn pool")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pretrain(args.out, args.steps, args.batch, args.images, args.lr, args.seed)


def pretrain(out: Path, steps: int, batch: int, images: int, lr: float, seed: int) -> None:
    """Flow-matching pretraining of every base weight, the Tiny trainer's loss and conditioning."""
    config = TinyConfig(train_data_dir=Path("."), output_dir=Path("."))
    patch = config.tiny_patch_size
    encoder = CaptionEncoder(
        config.tiny_joint_attention_dim, config.tiny_caption_tokens, config.tiny_model_seed
    )
    tokens, captions, pooled = _pool(images, config.resolution, patch, encoder, seed)
    torch.manual_seed(seed)
    model = new_base_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    ids = image_ids(config.resolution, config.resolution, patch)
    generator = torch.Generator().manual_seed(seed)
    started, recent = time.monotonic(), []
    for step in range(steps):
        for group in optimizer.param_groups:  # linear warm-up, cosine decay
            group["lr"] = (
                lr * min(1.0, (step + 1) / 200) * 0.5 * (1 + math.cos(math.pi * step / steps))
            )
        index = torch.randint(len(tokens), (batch,), generator=generator)
        x0 = tokens[index]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.sigmoid(torch.randn(batch, generator=generator))
        noisy = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
        predicted = predict(model, noisy, captions[index], pooled[index], t, ids)
        loss = F.mse_loss(predicted, x0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        recent = [*recent[-99:], loss.item()]
        if (step + 1) % 200 == 0 or step + 1 == steps:
            elapsed = time.monotonic() - started
            print(f"step {step + 1}/{steps} loss {sum(recent) / len(recent):.4f} {elapsed:.0f}s",
                  flush=True)  # fmt: skip
    save_base(model, config, out, {"pretrain_seed": str(seed), "pretrain_steps": str(steps)})
    out.chmod(0o644)  # safetensors writes 0600
    print(f"wrote {out} ({out.stat().st_size / 1000:.0f} kB)")


def _pool(
    count: int, resolution: int, patch: int, encoder: CaptionEncoder, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`count` drawn shapes as packed tokens, with their encoded captions."""
    rng = random.Random(seed)
    tokens, sequences, pooled = [], [], []
    for _ in range(count):
        image, caption = draw_example(rng, rng.choice(PRETRAIN_SHAPES))
        image = ImageOps.fit(image, (resolution, resolution), Image.Resampling.BICUBIC)
        data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        pixels = data.view(resolution, resolution, 3).permute(2, 0, 1).float() / 127.5 - 1.0
        tokens.append(image_to_tokens(pixels, patch))
        sequence, summary = encoder.encode(caption)
        sequences.append(sequence)
        pooled.append(summary)
    return torch.stack(tokens), torch.stack(sequences), torch.stack(pooled)


if __name__ == "__main__":
    main()
