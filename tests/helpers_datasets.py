"""Build datasets for tests: good images of many kinds, broken ones, captions, and a tree snapshot.

Everything is generated with Pillow (or, for the decompression bomb, written byte by byte) into a
folder the test owns. Images made by one call differ in content, so they are never duplicates
unless a test copies one on purpose.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

from autotrain.errors import ConfigError
from autotrain.profile import Profile, load_profile
from autotrain.settings import Settings

__all__ = [
    "write_image",
    "make_dataset",
    "write_truncated",
    "write_not_image",
    "write_bomb_png",
    "write_exif_rotated",
    "tiny_profile",
    "test_settings",
    "snapshot",
    "copy_tree",
]

_COLOURS = ["red", "green", "blue", "orange", "purple", "yellow", "cyan", "magenta", "white"]


def write_image(
    path: Path,
    size: tuple[int, int] = (64, 64),
    colour: str = "red",
    mode: str = "RGB",
    seed: int = 0,
    **save_options: object,
) -> Path:
    """An image whose content depends on `colour` and `seed`; format from the extension."""
    image = Image.new("RGB", size, colour)
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.rectangle([seed % w, seed % h, (seed % w) + w // 3, (seed % h) + h // 3], fill="black")
    draw.text((1, 1), str(seed), fill="grey")
    if mode != "RGB":
        image = image.convert("L").convert(mode) if mode == "I;16" else image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **save_options)
    return path


def make_dataset(
    root: Path,
    count: int = 4,
    *,
    size: tuple[int, int] = (64, 64),
    ext: str = "png",
    captions: bool = True,
    prefix: str = "img",
    start: int = 0,
) -> Path:
    """`count` distinct images `<prefix>_<i>.<ext>` in `root`, each with a caption when asked."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        colour = _COLOURS[i % len(_COLOURS)]
        write_image(root / f"{prefix}_{i:03d}.{ext}", size, colour, seed=i)
        if captions:
            (root / f"{prefix}_{i:03d}.txt").write_text(f"a {colour} square, number {i}\n")
    return root


def write_truncated(path: Path, fraction: float = 0.5) -> Path:
    """A real image cut short: the header is fine, the pixel data ends early."""
    write_image(path, (128, 128), "blue", seed=7)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def write_not_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not an image, whatever its extension says\n")
    return path


def write_bomb_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A valid 1-bit PNG of width*height pixels that compresses to a few dozen kB.

    Written chunk by chunk, so making it never holds the image in memory.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed pixels
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def write_exif_rotated(path: Path, size: tuple[int, int] = (96, 48), orientation: int = 6) -> Path:
    """A JPEG stored `size` wide/high whose EXIF says to rotate it when shown."""
    image = Image.new("RGB", size, "green")
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, exif=exif)
    return path


def tiny_profile(tmp_path: Path | None = None, **overrides: object) -> Profile:
    """The built-in Tiny profile with `overrides`; a minimal stand-in where it is not installed."""
    try:
        profile = load_profile("Tiny")
    except ConfigError:
        if tmp_path is None:
            raise
        templates = tmp_path / "profile-templates"
        (templates / "Tiny").mkdir(parents=True, exist_ok=True)
        (templates / "Tiny" / "profile.toml").write_text('backend = "tiny"\n')
        (templates / "Tiny" / "base.toml").write_text("")
        profile = load_profile("Tiny", templates)
    return profile.model_copy(update=overrides)


def test_settings(workspace: Path, **overrides: object) -> Settings:
    """Settings for a workspace in tmp_path that ignore the host's free-space reserve."""
    values = {"min_free_disk_gb": 0.0, **overrides}
    return Settings(workspace=workspace, **values)


test_settings.__test__ = False  # a helper, not a test, despite its name


def snapshot(root: Path) -> dict[str, bytes | str | None]:
    """Every path under `root` with its bytes (files), link target (links) or None (folders)."""
    tree: dict[str, bytes | str | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):  # does not descend into linked folders
        base = Path(dirpath)
        for name in dirnames + filenames:
            path = base / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                tree[rel] = os.readlink(path)
            elif path.is_dir():
                tree[rel] = None
            else:
                tree[rel] = path.read_bytes()
    return dict(sorted(tree.items()))


def copy_tree(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, symlinks=True)
    return dest
