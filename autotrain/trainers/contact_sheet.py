"""`output/<name>/samples.png`: a job's sample images as one picture, a row per prompt and a
column per sample step, so what the model learned shows at a glance at the end of a run.

Trainers name samples `<output_name>_<step>_<prompt index>[_<suffix>].<ext>`: the Tiny trainer
`shapes_000100_00.png`, kohya `shapes_000100_00_20261201123456.png` (or `e000003` for an epoch).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from autotrain.trainers.outputs import SamplePosition, sample_images, sample_position

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["write_contact_sheet", "sample_grid", "SHEET_NAME"]

SHEET_NAME = "samples.png"  # in output/<name>/

_CELL = 96  # pixels per sample in the sheet
_GAP = 4
_HEADER = 18


def sample_grid(sample_dir: Path, output_name: str) -> dict[tuple[int, SamplePosition], Path]:
    """(prompt index, position) -> newest sample file, for this job's samples only."""
    grid: dict[tuple[int, SamplePosition], Path] = {}
    for path in sample_images(sample_dir):  # oldest first: the newest of a position wins
        position = sample_position(path.name, output_name)
        if position is not None and path.is_file():
            grid[(position.prompt, SamplePosition(position.step, 0, position.epoch))] = path
    return grid


def write_contact_sheet(sample_dir: Path, output_name: str, target: Path) -> Path | None:
    """Draw every sample into `target` (a PNG); None, writing nothing, when there are none."""
    grid = sample_grid(sample_dir, output_name)
    if not grid:
        return None
    from PIL import Image, ImageDraw

    rows = sorted({row for row, _ in grid})
    steps = sorted({step for _, step in grid}, key=lambda s: (s.epoch, s.step))
    pitch = _CELL + _GAP
    sheet = Image.new("RGB", (_GAP + pitch * len(steps), _HEADER + pitch * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for column, step in enumerate(steps):
        draw.text((_GAP + column * pitch + 2, 3), step.label, fill="black")
        for line, row in enumerate(rows):
            path = grid.get((row, step))
            if path is not None:
                sheet.paste(_cell(path), (_GAP + column * pitch, _HEADER + line * pitch))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    sheet.save(partial, format="PNG")
    partial.replace(target)
    return target


def _cell(path: Path) -> Image.Image:
    """The sample fitted into a square cell; small samples are enlarged with sharp pixels."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, ValueError):
        return Image.new("RGB", (_CELL, _CELL), (200, 200, 200))  # unreadable: a grey cell
    resample = Image.Resampling.NEAREST if max(image.size) <= _CELL else Image.Resampling.LANCZOS
    return ImageOps.pad(image, (_CELL, _CELL), resample, color="white")
