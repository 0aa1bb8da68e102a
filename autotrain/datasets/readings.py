"""How the trainer will really read each image and caption, in words a user can act on.

autotrain's phase 1 must agree with the trainer, not with its own idea of it. Each rule below
copies a behaviour of kohya sd-scripts (the reference is `library/train_util.py` at commit
48d368fa; the line numbers cite it) or of the built-in Tiny trainer (`tiny_trainer/data.py`),
and says what that behaviour does to the file and what to do about it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from autotrain.datasets.discovery import Problem
from autotrain.datasets.imagecheck import FileCheck
from autotrain.profile import Profile

__all__ = [
    "BucketSettings",
    "bucket_settings",
    "high_depth_reason",
    "upright_reason",
    "stem_of",
    "stem_clash_reason",
    "placement_problem",
    "small_image_reason",
    "caption_reason",
    "blank_captions_reason",
]

# Modes Pillow gives 16- and 32-bit greyscale; `convert("RGB")` clips them at 255, so almost
# every pixel becomes white (sd-scripts, train_util.py:2956; Tiny, tiny_trainer/data.py).
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_TINY_CROP_RATIO = 2.0  # Tiny fits every image to a centred square: beyond 2:1 it loses half


class BucketSettings:
    """The profile's bucket keys, as the trainer config template sets them."""

    def __init__(self, config: dict[str, Any], resolution: int) -> None:
        self.enabled = bool(config.get("enable_bucket", False))
        self.no_upscale = bool(config.get("bucket_no_upscale", False))
        self.min_reso = int(config.get("min_bucket_reso", 256))
        self.max_reso = int(config.get("max_bucket_reso", 1024))
        self.steps = int(config.get("bucket_reso_steps", 64)) or 64
        self.resolution = resolution


def bucket_settings(profile: Profile) -> BucketSettings:
    """The bucket keys of the profile's config template (none when it cannot be read)."""
    try:
        config = profile.load_template()
    except Exception:  # a missing template is reported by the backend's own checks
        config = {}
    return BucketSettings(config, profile.resolution)


def high_depth_reason(mode: str) -> str | None:
    """Refuse 16-bit greyscale rather than guess its tone curve: a fixed shift by 8 bits would
    turn a 12-bit scan (values below 4096) almost black, and only the user knows the range."""
    if mode not in _HIGH_DEPTH_MODES:
        return None
    return (
        f"high bit depth (Pillow mode {mode}): the trainer's convert('RGB') clips it at 255, so it "
        "would train almost all white; excluded. Save it as 8-bit (e.g. `magick in.png -depth 8 "
        "-auto-level out.png`, or Export as 8 bits per channel)"
    )


def upright_reason(orientation: int) -> str:
    return (
        f"EXIF orientation {orientation}: sd-scripts never applies it (train_util.py:2948, "
        "load_image), so it would train rotated; staged upright (pixels turned, tag dropped)"
    )


def stem_of(relpath: str) -> str:
    """The path without its extension: what sd-scripts derives captions and caches from."""
    path = PurePosixPath(relpath)
    return str(path.with_suffix("")) if path.suffix else relpath


def stem_clash_reason(first: str) -> str:
    return (
        f"shares its name stem with {first}: sd-scripts reads one caption for both "
        "(splitext(path)[0] + '.txt', train_util.py:1948) and caches both latents in one "
        f"<stem>_<size>.npz file, so one would train as the other; excluded, {first} is kept. "
        "Rename one of them (and give it its own caption)"
    )


def placement_problem(
    relpath: str, width: int, height: int, profile: Profile, buckets: BucketSettings
) -> Problem | None:
    """An image the trainer cannot place, or crops hard, at the profile's bucket settings."""
    ratio = max(width, height) / max(1, min(width, height))
    if profile.backend != "kohya":
        if ratio <= _TINY_CROP_RATIO:
            return None
        kept = round(100 / ratio)
        return Problem(
            path=relpath,
            reason=f"aspect ratio {ratio:.1f}:1: the Tiny trainer crops every image to a centred "
            f"square, keeping {kept}% of it; crop it yourself to the part that matters",
        )
    if not buckets.enabled:
        return None
    if buckets.no_upscale:
        return _no_upscale_problem(relpath, width, height, buckets)
    widest = buckets.max_reso / max(buckets.min_reso, buckets.resolution**2 / buckets.max_reso)
    if ratio <= widest * 1.05:
        return None
    return Problem(
        path=relpath,
        reason=f"aspect ratio {ratio:.1f}:1 is beyond the widest bucket ({widest:.1f}:1 at "
        f"resolution {buckets.resolution}, max_bucket_reso {buckets.max_reso}); sd-scripts "
        f"crops it to that bucket, keeping about {round(100 * widest / ratio)}% of it "
        "(train_util.py:286, select_bucket). Crop it, or raise max_bucket_reso",
    )


def _no_upscale_problem(
    relpath: str, width: int, height: int, buckets: BucketSettings
) -> Problem | None:
    """With bucket_no_upscale, sd-scripts shrinks the image to the training area and rounds each
    side down to the bucket step (train_util.py:308-338); a side under one step becomes 0 px and
    `select_bucket` divides by it (train_util.py:345)."""
    area = buckets.resolution**2
    scale = min(1.0, math.sqrt(area / (width * height)))
    short = min(width, height) * scale
    if short >= buckets.steps:
        return None
    return Problem(
        path=relpath,
        reason=f"{width}x{height}: with bucket_no_upscale sd-scripts shrinks it to about "
        f"{round(width * scale)}x{round(height * scale)} and rounds its short side down to 0 px "
        f"at bucket step {buckets.steps}, then stops dividing by zero (train_util.py:345, "
        "select_bucket), so the job would fail. Crop it to a less extreme shape (a short side of at least "
        f"{buckets.steps} px after scaling to {buckets.resolution}x{buckets.resolution} pixels' "
        "area)",
    )


def small_image_reason(width: int, height: int, profile: Profile, buckets: BucketSettings) -> str:
    """What the trainer does with an image under the profile's min_resolution."""
    base = (
        f"small image {width}x{height}: below the profile's min_resolution "
        f"{profile.min_resolution} on a side"
    )
    if profile.backend != "kohya":
        return f"{base} (the Tiny trainer scales it to {profile.resolution}x{profile.resolution})"
    if buckets.enabled and buckets.no_upscale:
        return (
            f"{base} (bucket_no_upscale: sd-scripts trains it at its own size, never upscaled, "
            "so it teaches less detail)"
        )
    return f"{base} (it will be upscaled to a {profile.resolution}-class bucket and look soft)"


def caption_reason(check: FileCheck, backend: str) -> str | None:
    """What the trainer does with this caption when that is not simply its text, or None."""
    kohya = backend == "kohya"
    if check.bad_utf8:
        if kohya:  # refused rather than re-encoded: cp1252, Latin-1 and cp1251 all decode any
            # bytes, so a guessed encoding could garble a caption silently
            return (
                "caption is not valid UTF-8: sd-scripts reads captions as strict UTF-8 and stops "
                "with UnicodeDecodeError (train_util.py:1958-1963). Re-save it as UTF-8 (e.g. "
                "`iconv -f cp1252 -t utf-8`)"
            )
        return "caption is not valid UTF-8; unreadable bytes become U+FFFD (re-save it as UTF-8)"
    if check.size == 0 and kohya:
        return (
            "caption file is empty (0 bytes): sd-scripts stops on it ('caption file is empty', "
            "train_util.py:1964), it does not use the class tokens. Write a caption or delete "
            "the file"
        )
    if check.empty and kohya:
        return (
            "caption holds only whitespace: sd-scripts trains the image with an empty caption "
            "(lines[0].strip(), train_util.py:1968), not the class tokens. Write a caption or "
            "delete the file"
        )
    if check.multi_line:
        if not kohya:
            return (
                "caption spans several lines: the Tiny trainer reads them all as one caption; "
                "sd-scripts would read only the first, so keep captions on one line"
            )
        return (
            "caption spans several lines: sd-scripts trains only its first line "
            "(lines[0].strip(), train_util.py:1968). Put the whole caption on one line"
        )
    return None


def blank_captions_reason(paths: list[str], name_list: Callable[[list[str]], str]) -> str:
    """Tiny reads the file's text stripped (tiny_trainer/data.py, _caption): blank is ""."""
    return (
        f"{len(paths)} captions are empty ({name_list(paths)}); the trainer trains them with an "
        "empty caption, not the class tokens: write captions or delete the files"
    )
