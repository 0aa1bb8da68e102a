"""Checks before queueing: what the submitting host can tell in a second, refused at once.

`pipeline run` and `pipeline batch` call `check_before_queueing` in the calling process before
anything is queued, so a typo'd profile, a missing or empty folder, a folder of files that are
not images, or a kohya profile on a host with no sd-scripts configured exits 1 with the message
`prepare` gives, instead of a job certain to fail. The full decode of every image stays in
phase 1 on the workers; here each image is only opened (its header read), within a time budget.
"""

from __future__ import annotations

import time
from pathlib import Path

from autotrain.errors import ValidationError
from autotrain.profile import Profile, load_profile
from autotrain.settings import Settings
from autotrain.spec import JobSpec
from autotrain.workspace import Workspace

__all__ = ["check_before_queueing"]


def check_before_queueing(
    spec: JobSpec, settings: Settings, budget_seconds: float = 2.0
) -> Profile:
    """Raise ValidationError (or ConfigError) naming the fault and the fix; returns the profile."""
    from autotrain.datasets.discovery import scan_dataset
    from autotrain.datasets.validate import _backend_problems, _no_images_message, dataset_root

    profile = load_profile(spec.profile, Workspace(settings.workspace).templates_dir)
    root = dataset_root(spec)
    scan = scan_dataset(root)
    if not scan.images:
        raise ValidationError(_no_images_message(root, scan.junk, scan.ignored))
    if not _any_image_opens(root, [i.relpath for i in scan.images], budget_seconds):
        raise ValidationError(
            f"No usable images in {root}: none of the {len(scan.images)} image files "
            "opens as an image (corrupt or not images). Replace or remove them."
        )
    problems = _backend_problems(profile, settings)
    if problems:
        raise ValidationError(
            f"Profile {profile.name} cannot train here:\n  - " + "\n  - ".join(problems)
        )
    return profile


def _any_image_opens(root: Path, relpaths: list[str], budget_seconds: float) -> bool:
    """Whether at least one file opens as an image; True when the budget runs out first."""
    from PIL import Image, UnidentifiedImageError

    deadline = time.monotonic() + budget_seconds
    for relpath in relpaths:
        try:
            with Image.open(root / relpath) as image:
                image.size  # noqa: B018 - the header was read
            return True
        except (OSError, UnidentifiedImageError, ValueError):
            pass
        if time.monotonic() > deadline:
            return True  # phase 1 decodes every file anyway
    return False
