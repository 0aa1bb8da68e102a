"""Phase 2: stage the valid images and their captions into `input/<name>/`, atomically.

Staging decides what becomes of what is already there: nothing yet (copy it), a copy whose
manifest (`autotrain.datasets.manifest`) matches the source (reuse it), one that differs (replace
it with --force, else an error), or the dataset being its own staging folder (use it in place).
The copy itself (`autotrain.datasets.atomic_copy`) is built aside and renamed into place, so
`input/<name>/` is either absent or whole, and holds exactly the bytes validation checked.
Symlinks are never followed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, Field

from autotrain.datasets.atomic_copy import copy_into_place, remove_stale
from autotrain.datasets.manifest import MANIFEST_NAME, manifest_difference, write_manifest
from autotrain.datasets.validate import FileRecord, ValidationReport, name_list
from autotrain.errors import StagingError
from autotrain.workspace import Workspace

__all__ = ["StageResult", "stage_dataset", "Action"]

Action = Literal[
    "copied",
    "reused",
    "replaced",
    "in-place",
    "would-copy",
    "would-reuse",
    "would-replace",
    "would-use-in-place",
]
_DRY = {
    "copied": "would-copy",
    "reused": "would-reuse",
    "replaced": "would-replace",
    "in-place": "would-use-in-place",
}


class StageResult(BaseModel):
    """What staging did (or, in a dry run, would do); JSON-safe."""

    name: str
    source: Path
    staged_dir: Path
    output_dir: Path
    manifest_path: Path
    action: Action
    dry_run: bool = False
    files_copied: int = 0
    bytes_copied: int = 0
    files: list[str] = Field(default_factory=list, description="relpaths in the staged copy")
    skipped: list[tuple[str, str]] = Field(default_factory=list, description="(relpath, reason)")
    notes: list[str] = Field(default_factory=list)


def stage_dataset(
    report: ValidationReport,
    workspace: Workspace,
    *,
    min_images: int = 1,
    skip_copy: bool = False,
    force: bool = False,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> StageResult:
    """Stage `report`'s valid files; a dry run takes the same decisions and touches nothing.

    An existing `input/<name>/` identical to the source is reused; one that differs is replaced
    with `force`, and is an error otherwise (with `skip_copy` too). Errors raise StagingError.
    """
    report.raise_for_errors()
    _check_min_images(report, min_images)
    staged = workspace.input_dir(report.name)
    files = report.manifest_files()
    _check_relpaths(files)
    result = StageResult(
        name=report.name,
        source=report.dataset_path,
        staged_dir=staged,
        output_dir=workspace.output_dir(report.name),
        manifest_path=staged / MANIFEST_NAME,
        action="copied",
        dry_run=dry_run,
        files=[f.relpath for f in files],
        skipped=_skipped(report),
    )
    action = _decide(report, staged, files, skip_copy, force, result.notes)
    copies = action in ("copied", "replaced")
    if copies:
        result.files_copied, result.bytes_copied = len(files), sum(f.size for f in files)
        result.notes += _turned_upright(files, dry_run)
    if dry_run:
        result.action = _DRY[action]  # type: ignore[assignment]
        return result
    remove_stale(staged)
    if action == "in-place":
        write_manifest(staged, report, files)
    elif copies:
        copy_into_place(report, files, staged, action == "replaced", progress, workers)
    result.action = action  # type: ignore[assignment]
    workspace.model_dir(report.name).mkdir(parents=True, exist_ok=True)
    workspace.log_dir(report.name).mkdir(parents=True, exist_ok=True)
    return result


# Decisions


def _check_min_images(report: ValidationReport, min_images: int) -> None:
    valid = len(report.images)
    if valid >= min_images:
        return
    bad = [p.path for p in report.errors]
    excluded = f" ({len(bad)} unusable excluded: {name_list(bad)})" if bad else ""
    raise StagingError(
        f"Only {valid} valid images in {report.dataset_path}, --min-images is {min_images}"
        f"{excluded}: add images or lower --min-images."
    )


def _decide(
    report: ValidationReport,
    staged: Path,
    files: list[FileRecord],
    skip_copy: bool,
    force: bool,
    notes: list[str],
) -> str:
    """copied | reused | replaced | in-place, or StagingError when the user must choose."""
    source = Path(report.dataset_path).resolve()
    if source == staged:
        return _in_place(report, force, notes)
    if staged.is_relative_to(source) or source.is_relative_to(staged):
        raise StagingError(
            f"Dataset {source} and its staging folder {staged} overlap: keep datasets outside "
            "the workspace's input/ folder (or pass the staged folder itself)."
        )
    if not os.path.lexists(staged):
        if skip_copy:
            notes.append(f"--skip-copy: {staged} does not exist yet, so it is copied")
        return "copied"
    difference = manifest_difference(staged, files)
    if force:
        if difference is None:
            notes.append("--force: replacing an identical staged copy")
        return "replaced"
    if difference is None:
        notes.append(f"{staged} already holds this dataset (manifest matches); reused")
        return "reused"
    if skip_copy:
        raise StagingError(
            f"--skip-copy: the staged copy {staged} does not match {source} ({difference}). "
            "Pass --force to replace it with a fresh copy."
        )
    raise StagingError(
        f"{staged} already exists and differs from {source} ({difference}). Pass --force to "
        "replace it, or --skip-copy to reuse it only if it matches; or choose another "
        "--dataset-name."
    )


def _turned_upright(files: list[FileRecord], dry_run: bool) -> list[str]:
    """One note per image staging turns upright: sd-scripts never applies EXIF orientation."""
    verb = "would stage" if dry_run else "staged"
    return [
        f"{f.relpath}: {verb} upright (EXIF orientation {f.orientation}, which sd-scripts ignores)"
        for f in files
        if f.orientation != 1
    ]


def _in_place(report: ValidationReport, force: bool, notes: list[str]) -> str:
    """The dataset is input/<name> itself: nothing to copy, and never anything to delete."""
    turned = [i.relpath for i in report.images if i.orientation != 1]
    if turned:
        raise StagingError(
            f"Dataset {report.dataset_path} is its own staging folder, so its images cannot be "
            f"turned upright, and sd-scripts ignores EXIF orientation: {name_list(turned)} would "
            "train rotated. Stage from a folder outside input/, or save them upright."
        )
    if report.errors:
        raise StagingError(
            f"Dataset {report.dataset_path} is its own staging folder and holds unusable files "
            f"the trainer would read ({name_list([p.path for p in report.errors])}); remove them "
            "or stage from a folder outside input/."
        )
    if force:
        notes.append("--force ignored: the dataset is the staged folder itself")
    return "in-place"


def _check_relpaths(files: list[FileRecord]) -> None:
    """A report read back from the job store must not steer a copy outside the staging folder."""
    for record in files:
        path = PurePosixPath(record.relpath)
        if path.is_absolute() or ".." in path.parts or not path.parts:
            raise StagingError(
                f"Refusing to stage {record.relpath!r}: not a path inside the dataset."
            )


def _skipped(report: ValidationReport) -> list[tuple[str, str]]:
    skipped = [(p.path, p.reason) for p in report.errors]
    skipped += [
        (p.path, p.reason)
        for p in report.warnings
        if "symbolic link" in p.reason or "kohya skips it" in p.reason
    ]
    skipped += [(path, "caption of an unusable image") for path in report.excluded_captions]
    skipped += [(path, "OS or hidden junk") for path in report.junk_skipped]
    skipped += [(path, "not an image or an image's caption") for path in report.ignored_files]
    return skipped
