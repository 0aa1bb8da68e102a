"""The workspace layout (DESIGN.md): every path autotrain writes is derived here, and none may leave it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from autotrain.errors import AutotrainError

__all__ = [
    "Workspace",
    "check_dataset_name",
    "slugify_name",
    "NAME_PATTERN",
    "private_dir",
    "write_private",
    "open_private_log",
    "MANIFEST_NAME",
]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# In each staged `input/<name>/`: what staging copied (written by autotrain.datasets.manifest,
# quoted in run.json by autotrain.trainers.report).
MANIFEST_NAME = ".autotrain-manifest.json"


def check_dataset_name(name: str) -> str:
    """Return `name` if it is a safe dataset name, else raise with the rule and the offending value."""
    if not NAME_PATTERN.fullmatch(name or "") or len(name) > 128:
        raise AutotrainError(
            f"Invalid dataset name {name!r}: use letters, digits, '_' and '-', starting with a "
            "letter or digit (at most 128). Pass --dataset-name to choose one."
        )
    return name


def slugify_name(folder_name: str) -> str:
    """A dataset name derived from a folder name: unsafe runs become '_', kohya repeat prefixes stay."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", folder_name).strip("_-")
    return slug[:128] or "dataset"


@dataclass(frozen=True)
class Workspace:
    """Paths of one deployment's workspace; the same root on every host of a fleet."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    # Top-level folders
    @property
    def input_root(self) -> Path:
        return self.root / "input"

    @property
    def output_root(self) -> Path:
        return self.root / "output"

    @property
    def batch_config_root(self) -> Path:
        return self.root / "BatchConfig"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def templates_dir(self) -> Path:
        return self.root / "templates"

    @property
    def state_dir(self) -> Path:
        """Local state: embedded Redis data, its password, pid files, logs. Create it with
        `private_state_dir`, never by hand: it is readable by this user only."""
        return self.root / ".autotrain"

    def private_state_dir(self) -> Path:
        """`state_dir`, made (or tightened to) mode 0700: other users of the host read nothing
        in it, not the Redis data (every job record and spec), not its password, not the logs."""
        return private_dir(self.state_dir)

    # Per-dataset paths
    def input_dir(self, name: str) -> Path:
        return self._inside(self.input_root / check_dataset_name(name))

    def output_dir(self, name: str) -> Path:
        return self._inside(self.output_root / check_dataset_name(name))

    def model_dir(self, name: str) -> Path:
        return self.output_dir(name) / "model"

    def log_dir(self, name: str) -> Path:
        return self.output_dir(name) / "log"

    def sample_prompts_file(self, name: str) -> Path:
        return self.output_dir(name) / "sample_prompts.txt"

    def run_manifest_file(self, name: str) -> Path:
        return self.output_dir(name) / "run.json"

    def config_file(self, profile: str, name: str) -> Path:
        return self._inside(self.batch_config_root / profile / f"{check_dataset_name(name)}.toml")

    def dataset_config_file(self, profile: str, name: str) -> Path:
        return self._inside(
            self.batch_config_root / profile / f"{check_dataset_name(name)}_dataset.toml"
        )

    def _inside(self, path: Path) -> Path:
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):
            raise AutotrainError(f"Path {path} would leave the workspace {self.root}; refusing.")
        return resolved


def private_dir(path: Path) -> Path:
    """`path` as a folder only this user may enter (0700), made if missing, tightened if not."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077 and path.stat().st_uid == os.getuid():
        path.chmod(0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write a file readable by this user only (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def open_private_log(path: Path):
    """A binary append handle on a log only this user may read (0600), for a child's output."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.chmod(path, 0o600)
    return os.fdopen(fd, "ab")
