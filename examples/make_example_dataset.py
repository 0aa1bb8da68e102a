"""Generate `examples/datasets/tiny_shapes/`: 12 small captioned PNGs of coloured shapes.

It is the demo and test dataset of the `Tiny` profile: simple enough for a few-hundred-kB model to
learn something visible in seconds, small enough to keep in the repository. The output depends
only on `--seed`, so re-running it reproduces the committed files byte for byte (with the same
Pillow version).

    .venv/bin/python examples/make_example_dataset.py            # rewrite the committed copy
    .venv/bin/python examples/make_example_dataset.py --out /tmp/shapes --count 40 --seed 7
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

DEFAULT_OUT = Path(__file__).resolve().parent / "datasets" / "tiny_shapes"

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 210),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond", "ring", "star")
SIZES = ((64, 64), (96, 96), (128, 128), (128, 96), (96, 128))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to (re)create")
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    write_dataset(args.out, args.count, args.seed)
    total = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.count} images with captions to {args.out} ({total / 1000:.1f} kB)")


def write_dataset(out: Path, count: int, seed: int) -> None:
    """Replace `out` with `count` images `shape_NN.png` and captions `shape_NN.txt`."""
    rng = random.Random(seed)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for index in range(count):
        image, caption = draw_example(rng, SHAPES[index % len(SHAPES)])
        image.save(out / f"shape_{index:02d}.png", optimize=True)
        (out / f"shape_{index:02d}.txt").write_text(caption + "\n", encoding="utf-8")


def draw_example(rng: random.Random, shape: str) -> tuple[Image.Image, str]:
    """One shape on a plain or gradient background, and the sentence that describes it."""
    size = rng.choice(SIZES)
    fg_name, bg_name = rng.sample(sorted(COLOURS), 2)
    gradient = rng.random() < 0.5
    image = _background(size, COLOURS[bg_name], gradient)
    w, h = size
    radius = rng.randint(min(w, h) // 5, min(w, h) // 3)
    cx = rng.randint(radius + 2, w - radius - 2)
    cy = rng.randint(radius + 2, h - radius - 2)
    _draw_shape(ImageDraw.Draw(image), shape, (cx, cy), radius, COLOURS[fg_name])
    where = f"{bg_name} gradient background" if gradient else f"{bg_name} background"
    return image, f"a {fg_name} {shape} on a {where}"


def _background(size: tuple[int, int], colour: tuple[int, int, int], gradient: bool) -> Image.Image:
    if not gradient:
        return Image.new("RGB", size, colour)
    dark = tuple(c // 3 for c in colour)
    ramp = Image.linear_gradient("L").resize(size)  # black at the top, white at the bottom
    return Image.composite(Image.new("RGB", size, colour), Image.new("RGB", size, dark), ramp)


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    centre: tuple[int, int],
    r: int,
    colour: tuple[int, int, int],
) -> None:
    cx, cy = centre
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(3, r // 3))
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    else:  # star: five points, alternating outer and inner radius
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=colour)


if __name__ == "__main__":
    main()
