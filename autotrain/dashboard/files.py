"""What the dashboard reads from a job's output folder: samples, the trainer log, run.json.

A job's files are in `output/<name>/` while it owns that folder, and in
`output/<name>/runs/<job id>/` once a later job of the same name moved them there
(autotrain.trainers.outputs). Every file shown or served is opened by `open_output_file`: inside
the workspace's `output/`, one folder at a time without following a symlink, regular files only.
Whoever can write into a job's folder (its trainer, a user of a shared fleet) cannot make the
dashboard show a file from elsewhere by planting a link to it.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from autotrain.jobs.job import Job
from autotrain.trainers.outputs import RUNS_DIR, SAMPLE_SUFFIXES, output_owner, sample_position
from autotrain.workspace import Workspace, check_dataset_name

__all__ = [
    "open_output_file",
    "Sample",
    "job_dir",
    "samples_of",
    "prompts_of",
    "sample_bytes",
    "log_tail",
    "read_log",
    "manifest_of",
]

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a planted FIFO returns at once (and is then refused as not a regular file)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_output_file(workspace: Workspace, path: Path) -> BinaryIO | None:
    """`path` (below the workspace's `output/`) opened for reading, or None.

    None when it is not below `output/`, when any folder or the file itself below `output/` is a
    symlink (each is opened relative to its parent with O_NOFOLLOW, so no link is followed and no
    check can be raced), when it is not a regular file, or when it cannot be opened at all (gone,
    no permission, a name too long). `output/` itself may be a link (a data disk mounted
    elsewhere): the deployment chose it.
    """
    fd = _open_below_output(workspace, path, _FILE_FLAGS)
    if fd is None:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _open_below_output(workspace: Workspace, path: Path, flags: int) -> int | None:
    """A descriptor of `path`, opened from `output/` down one name at a time, following no link."""
    try:
        parts = path.relative_to(workspace.output_root).parts
    except ValueError:
        return None
    if not parts or any(part in (".", "..") for part in parts):
        return None
    try:
        folder = os.open(workspace.output_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        for part in parts[:-1]:
            inner = os.open(part, _DIR_FLAGS, dir_fd=folder)
            os.close(folder)
            folder = inner
        return os.open(parts[-1], flags, dir_fd=folder)
    except OSError:
        return None
    finally:
        os.close(folder)


@dataclass(frozen=True)
class Sample:
    """One sample image of a job: which prompt (line of the prompts file) at which step."""

    job_id: str
    file: str  # the file name inside the job's sample folder
    step: int
    prompt: int
    mtime: float

    @property
    def url(self) -> str:
        return f"/jobs/{self.job_id}/samples/{self.file}?v={int(self.mtime)}"


def job_dir(workspace: Workspace, job: Job) -> Path:
    """The folder holding this job's files: `output/<name>/`, or its archive under runs/."""
    current = workspace.output_root / check_dataset_name(job.name)  # not resolved: see above
    if output_owner(current) in (job.id, None):
        return current
    archived = current / RUNS_DIR / job.id
    return archived if archived.is_dir() else current


def samples_of(workspace: Workspace, job: Job) -> list[Sample]:
    """The job's sample images, newest step first, then by prompt.

    Listed like autotrain.trainers.outputs.sample_images (its suffixes, no dot files), but through
    a descriptor of the folder opened without following links, and regular files only: a linked
    folder or image (or a dangling link) is not listed, as it would not be served."""
    fd = _open_below_output(workspace, job_dir(workspace, job) / "model" / "sample", _DIR_FLAGS)
    if fd is None:
        return []
    found = []
    try:
        with os.scandir(fd) as entries:
            for entry in entries:
                suffix = Path(entry.name).suffix.lower()
                if suffix not in SAMPLE_SUFFIXES or entry.name.startswith("."):
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                position = sample_position(entry.name)
                step, prompt = (position.step, position.prompt) if position else (0, 0)
                mtime = entry.stat(follow_symlinks=False).st_mtime
                found.append(Sample(job.id, entry.name, step, prompt, mtime))
    except OSError:
        return []
    finally:
        os.close(fd)
    return sorted(found, key=lambda s: (-s.step, s.prompt, s.file))


def sample_bytes(workspace: Workspace, job: Job, name: str) -> bytes | None:
    """Sample image `name` of the job, None unless it is an image file in its sample folder."""
    if not _SAFE_NAME.fullmatch(name) or Path(name).suffix.lower() not in SAMPLE_SUFFIXES:
        return None
    return _read(workspace, job_dir(workspace, job) / "model" / "sample" / name)


def prompts_of(workspace: Workspace, job: Job) -> list[str]:
    """The job's sample prompts, one per line of its prompts file, without kohya's options."""
    raw = _read(workspace, job_dir(workspace, job) / "sample_prompts.txt")
    if raw is None:
        return []
    lines = raw.decode("utf-8", errors="replace").splitlines()
    prompts = [line.split(" --")[0].strip() for line in lines]
    return [p for p in prompts if p and not p.startswith("#")]


def log_tail(workspace: Workspace, job: Job, lines: int = 200) -> tuple[list[str], str, int]:
    """The last `lines` lines of the trainer log, its live (unfinished) line and the offset read."""
    handle = open_output_file(workspace, job_dir(workspace, job) / "log" / "trainer.log")
    if handle is None:
        return [], "", 0
    with handle:
        start = max(0, os.fstat(handle.fileno()).st_size - 64 * 1024)
        done, live, offset = read_log(handle, start)
    return done[-lines:] if start == 0 else done[1:][-lines:], live, offset


def read_log(handle: BinaryIO, offset: int) -> tuple[list[str], str, int]:
    """Complete lines after `offset`, the unfinished last line, and the offset of that line.

    A tqdm bar is redrawn with `\\r` on one line; like a terminal, each line shows what was drawn
    last, so a thousand redraws are one line, not a thousand.
    """
    try:
        handle.seek(offset)
        chunk = handle.read(1024 * 1024)
    except OSError:
        return [], "", offset
    cut = chunk.rfind(b"\n") + 1
    text = chunk[:cut].decode("utf-8", errors="replace")
    lines = [_shown(line) for line in text.splitlines()]
    live = _shown(chunk[cut:].decode("utf-8", errors="replace"))
    return lines, live, offset + cut


def manifest_of(workspace: Workspace, job: Job, stored: dict[str, Any] | None) -> str | None:
    """run.json as indented text: the file when phase 5 wrote it, else what Redis holds."""
    raw = _read(workspace, job_dir(workspace, job) / "run.json")
    try:
        return json.dumps(json.loads(raw or b""), indent=2)
    except ValueError:
        return json.dumps(stored, indent=2) if stored else None


def _read(workspace: Workspace, path: Path, limit: int = 64 * 1024 * 1024) -> bytes | None:
    """The file's bytes (at most `limit`) through `open_output_file`; None where it refuses."""
    handle = open_output_file(workspace, path)
    if handle is None:
        return None
    with handle:
        try:
            return handle.read(limit)
        except OSError:
            return None


def _shown(line: str) -> str:
    parts = [p for p in line.rstrip("\n").split("\r") if p.strip()]
    return parts[-1] if parts else ""
