"""What the dashboard reads from a job's output folder: samples, the trainer log, run.json.

A job's files are in `output/<name>/` while it owns that folder, and in
`output/<name>/runs/<job id>/` once a later job of the same name moved them there
(autotrain.trainers.outputs). Every path served to a browser is resolved and checked to stay inside the
workspace's `output/`, whatever a request asks for.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotrain.jobs.job import Job
from autotrain.trainers.outputs import RUNS_DIR, SAMPLE_SUFFIXES, output_owner, sample_images
from autotrain.workspace import Workspace

__all__ = [
    "Sample",
    "job_dir",
    "samples_of",
    "sample_file",
    "prompts_of",
    "log_tail",
    "read_log",
    "manifest_of",
]

# kohya and the Tiny trainer name samples `<output_name>_<step:06d>_<prompt:02d>[_<time>].png`
# (`e<epoch:06d>` instead of the step for samples made at the end of an epoch).
_SAMPLE_NAME = re.compile(r"_(e?)(\d{6})_(\d{2})(?:_[^.]*)?\.[A-Za-z]+$")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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
    current = workspace.output_dir(job.name)
    if output_owner(current) in (job.id, None):
        return current
    archived = current / RUNS_DIR / job.id
    return archived if archived.is_dir() else current


def samples_of(workspace: Workspace, job: Job) -> list[Sample]:
    """The job's sample images, newest step first, then by prompt."""
    folder = job_dir(workspace, job) / "model" / "sample"
    found = []
    for path in sample_images(folder):
        match = _SAMPLE_NAME.search(path.name)
        step, prompt = (int(match[2]), int(match[3])) if match else (0, 0)
        found.append(Sample(job.id, path.name, step, prompt, path.stat().st_mtime))
    return sorted(found, key=lambda s: (-s.step, s.prompt, s.file))


def sample_file(workspace: Workspace, job: Job, name: str) -> Path | None:
    """The path of sample `name` of the job, None unless it is an image inside output/."""
    if not _SAFE_NAME.fullmatch(name) or Path(name).suffix.lower() not in SAMPLE_SUFFIXES:
        return None
    path = (job_dir(workspace, job) / "model" / "sample" / name).resolve()
    if not path.is_relative_to(workspace.output_root.resolve()) or not path.is_file():
        return None
    return path


def prompts_of(workspace: Workspace, job: Job) -> list[str]:
    """The job's sample prompts, one per line of its prompts file, without kohya's options."""
    path = job_dir(workspace, job) / "sample_prompts.txt"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    prompts = [line.split(" --")[0].strip() for line in lines]
    return [p for p in prompts if p and not p.startswith("#")]


def log_tail(workspace: Workspace, job: Job, lines: int = 200) -> tuple[list[str], str, int]:
    """The last `lines` lines of the trainer log, its live (unfinished) line and the offset read."""
    path = job_dir(workspace, job) / "log" / "trainer.log"
    try:
        size = path.stat().st_size
    except OSError:
        return [], "", 0
    start = max(0, size - 64 * 1024)
    done, live, offset = read_log(path, start)
    return done[-lines:] if start == 0 else done[1:][-lines:], live, offset


def read_log(path: Path, offset: int) -> tuple[list[str], str, int]:
    """Complete lines after `offset`, the unfinished last line, and the offset of that line.

    A tqdm bar is redrawn with `\\r` on one line; like a terminal, each line shows what was drawn
    last, so a thousand redraws are one line, not a thousand.
    """
    try:
        with open(path, "rb") as handle:
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
    path = job_dir(workspace, job) / "run.json"
    try:
        return json.dumps(json.loads(path.read_text(encoding="utf-8")), indent=2)
    except (OSError, ValueError):
        return json.dumps(stored, indent=2) if stored else None


def _shown(line: str) -> str:
    parts = [p for p in line.rstrip("\n").split("\r") if p.strip()]
    return parts[-1] if parts else ""
