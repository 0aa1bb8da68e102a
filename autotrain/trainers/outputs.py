"""One job, one output folder: `output/<name>/` belongs to the job that trains it now.

A dataset name is held by at most one job in progress (`JobStore.create` refuses a second). When a
new job takes a name trained before, the earlier run's files are moved, not overwritten, to
`output/<name>/runs/<earlier job id>/`, so its weights, samples, logs and run.json stay as they
were. The owner is noted in `output/<name>/job.json`; a re-queued attempt of the same job keeps
the folder as it is, so it can resume from its own checkpoints.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from autotrain.workspace import Workspace

__all__ = [
    "claim_output_dir",
    "archive_run",
    "output_owner",
    "sample_images",
    "OWNER_FILE",
    "RUNS_DIR",
    "SAMPLE_SUFFIXES",
    "SamplePosition",
    "sample_position",
]

OWNER_FILE = "job.json"
RUNS_DIR = "runs"
# The image types a trainer writes its samples as (kohya: png; PIL could write any of these).
SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True, order=True)
class SamplePosition:
    """Where a sample sits in a run: the step (or epoch) it was made at and its prompt's line."""

    step: int
    prompt: int
    epoch: bool = False  # made at the end of epoch `step`, not at a step

    @property
    def label(self) -> str:
        return f"epoch {self.step}" if self.epoch else f"step {self.step}"


# kohya and the Tiny trainer name samples `<output_name>_<step:06d>_<prompt:02d>[_<time>].<ext>`
# (`e<epoch:06d>` instead of the step for samples made at the end of an epoch).
_SAMPLE_NAME = re.compile(r"_(e?)(\d{6})_(\d{2})(?:_[^.]*)?\.[A-Za-z]+$")


def sample_position(name: str, output_name: str | None = None) -> SamplePosition | None:
    """The step and prompt a sample's file name says; None for a name of another shape (or of
    another output name, when one is given)."""
    if output_name is not None and not name.startswith(f"{output_name}_"):
        return None
    match = _SAMPLE_NAME.search(name)
    if not match or Path(name).suffix.lower() not in SAMPLE_SUFFIXES:
        return None
    return SamplePosition(int(match[2]), int(match[3]), epoch=bool(match[1]))


def sample_images(folder: Path) -> list[Path]:
    """The sample images in `folder` (a job's `model/sample/`), oldest first; [] without one.

    The run manifest, the job record and the dashboard all list samples through this."""
    if not folder.is_dir():
        return []
    images = [p for p in folder.iterdir()
              if p.suffix.lower() in SAMPLE_SUFFIXES and not p.name.startswith(".")]  # fmt: skip
    return sorted(images, key=lambda p: p.stat().st_mtime_ns)


def output_owner(output_dir: Path) -> str | None:
    """The job id that owns `output_dir`, None when nobody claimed it."""
    try:
        return json.loads((output_dir / OWNER_FILE).read_text(encoding="utf-8")).get("job")
    except (OSError, ValueError, AttributeError):
        return None


def claim_output_dir(
    workspace: Workspace, name: str, job_id: str, profile: str, *, dry_run: bool = False
) -> str | None:
    """Make `output/<name>/` this job's; returns a note when an earlier run's files were moved."""
    output_dir = workspace.output_dir(name)
    previous = output_owner(output_dir)
    if previous == job_id:
        return None
    note = None
    if _run_files(output_dir):
        label = previous or _legacy_label(output_dir)
        archive = output_dir / RUNS_DIR / label
        note = (
            f"outputs of the earlier run {label} {'would be ' if dry_run else ''}moved to {archive}"
        )
        if not dry_run:
            archive_run(workspace, name, label)
    if not dry_run:
        output_dir.mkdir(parents=True, exist_ok=True)
        owner = {"job": job_id, "profile": profile, "claimed_at": time.time()}
        tmp = output_dir / f".{OWNER_FILE}.tmp"
        tmp.write_text(json.dumps(owner), encoding="utf-8")
        os.replace(tmp, output_dir / OWNER_FILE)
    return note


def archive_run(workspace: Workspace, name: str, label: str) -> Path | None:
    """Move what a run left in `output/<name>/` to `output/<name>/runs/<label>/`; None if empty."""
    output_dir = workspace.output_dir(name)
    leftovers = _run_files(output_dir)
    if not leftovers:
        return None
    archive = output_dir / RUNS_DIR / label
    archive.mkdir(parents=True, exist_ok=True)
    for path in leftovers:
        os.replace(path, archive / path.name)
    return archive


def _run_files(output_dir: Path) -> list[Path]:
    """Everything a run left in the folder: all but the archive of earlier runs (and empty dirs)."""
    if not output_dir.is_dir():
        return []
    found = []
    for path in sorted(output_dir.iterdir()):
        if path.name == RUNS_DIR or (path.is_dir() and not any(path.rglob("*"))):
            continue
        found.append(path)
    return found


def _legacy_label(output_dir: Path) -> str:
    """A name for a run that left no job.json: when it last wrote."""
    newest = max((p.stat().st_mtime for p in output_dir.rglob("*")), default=time.time())
    return "before-" + time.strftime("%Y%m%d-%H%M%S", time.localtime(newest))
