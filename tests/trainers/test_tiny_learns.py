"""The demo shows learning: README command 1's run (the Tiny profile on the bundled example
dataset) ends with samples of the dataset's captions that look like the images they describe,
and with `output/<name>/samples.png`, a contact sheet of every sample.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from autotrain.trainers.contact_sheet import SHEET_NAME, sample_grid, write_contact_sheet
from tests.conftest import EXAMPLE_DATASET, copy_example

PROMPTS = 4  # sample_captions in the Tiny template


def pixels(path: Path) -> np.ndarray:
    """32x32 RGB in [0, 1], the images cropped and scaled the way the trainer reads them."""
    with Image.open(path) as opened:
        image = ImageOps.fit(opened.convert("RGB"), (32, 32), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 255


def nearest_training_image(sample: Path, training: np.ndarray) -> tuple[int, np.ndarray]:
    errors = ((training - pixels(sample)) ** 2).mean(axis=(1, 2, 3))
    return int(errors.argmin()), errors


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`autotrain pipeline run --profile Tiny --immediate` on the example dataset, once."""
    tmp_path = tmp_path_factory.mktemp("demo")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    dataset = copy_example(tmp_path)
    env = os.environ | {"AUTOTRAIN_WORKSPACE": str(workspace), "AUTOTRAIN_MIN_FREE_DISK_GB": "0"}
    env.pop("AUTOTRAIN_REDIS_URL", None)
    command = [sys.executable, "-m", "autotrain.cli", "pipeline", "run", "--dataset-path",
               str(dataset), "--profile", "Tiny", "--immediate"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=workspace,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    return {"output": workspace / "output" / "tiny_shapes", "stdout": done.stdout}


@pytest.mark.slow
def test_samples_look_like_the_images_their_captions_describe(demo: dict) -> None:
    captions = sorted(EXAMPLE_DATASET.glob("*.txt"))
    training = np.stack([pixels(c.with_suffix(".png")) for c in captions])
    grid = sample_grid(demo["output"] / "model" / "sample", "tiny_shapes")
    steps = sorted({step for _, step in grid})
    assert len(steps) >= 2
    for index, caption in enumerate(captions[:PROMPTS]):
        assert f"prompt: {caption.read_text().strip()}" in demo["stdout"]
        assert all((index, step) in grid for step in steps), "one sample per prompt and step"

    first, last = steps[0], steps[-1]
    own = [nearest_training_image(grid[(i, last)], training)[0] == i for i in range(PROMPTS)]
    assert sum(own) >= 3, f"final samples nearest to their own training image: {own}"

    # Learning: from the first sample step to the last the samples came much closer to their images.
    def own_error(step: str) -> float:
        return float(np.mean([nearest_training_image(grid[(i, step)], training)[1][i]
                              for i in range(PROMPTS)]))  # fmt: skip

    assert own_error(last) < 0.75 * own_error(first), (own_error(first), own_error(last))


@pytest.mark.slow
def test_the_run_ends_with_a_contact_sheet(demo: dict) -> None:
    sheet = demo["output"] / SHEET_NAME
    manifest = json.loads((demo["output"] / "run.json").read_text())
    assert manifest["samples_sheet"] == str(sheet)
    grid = sample_grid(demo["output"] / "model" / "sample", "tiny_shapes")
    rows, columns = {row for row, _ in grid}, {step for _, step in grid}
    with Image.open(sheet) as image:
        width, height = image.size
    assert len(rows) > PROMPTS  # the captions, then the profile's own prompt
    assert width == 4 + 100 * len(columns) and height == 18 + 100 * len(rows)


def test_contact_sheet_has_a_row_per_prompt_and_a_column_per_step(tmp_path: Path) -> None:
    samples = tmp_path / "sample"
    samples.mkdir()
    colours = {0: (200, 0, 0), 1: (0, 0, 200)}
    for step in (50, 100, 150):
        for row, colour in colours.items():
            Image.new("RGB", (32, 32), colour).save(samples / f"cat_{step:06d}_{row:02d}.png")
    # kohya's names carry a timestamp; another job's samples and other files are left out
    Image.new("RGB", (64, 48), (0, 200, 0)).save(samples / "cat_000200_00_20261201120000.png")
    Image.new("RGB", (32, 32)).save(samples / "dog_000100_00.png")
    (samples / "cat_000100_00.txt").write_text("not an image")

    sheet = write_contact_sheet(samples, "cat", tmp_path / "out" / SHEET_NAME)
    assert sheet == tmp_path / "out" / SHEET_NAME
    with Image.open(sheet) as image:
        assert image.size == (4 + 100 * 4, 18 + 100 * 2)
        cell = lambda column, row: image.getpixel((4 + 100 * column + 48, 18 + 100 * row + 48))  # noqa: E731
        assert cell(0, 0) == (200, 0, 0) and cell(2, 1) == (0, 0, 200)
        assert cell(3, 0) == (0, 200, 0)  # step 200, the kohya-named sample
        assert cell(3, 1) == (255, 255, 255)  # no sample of prompt 1 at step 200
    assert not list((tmp_path / "out").glob(".*"))


def test_no_samples_no_sheet(tmp_path: Path) -> None:
    assert write_contact_sheet(tmp_path / "missing", "cat", tmp_path / SHEET_NAME) is None
    (tmp_path / "sample").mkdir()
    assert write_contact_sheet(tmp_path / "sample", "cat", tmp_path / SHEET_NAME) is None
    assert not (tmp_path / SHEET_NAME).exists()
