"""The trainer is the judge: kohya-ss sd-scripts' own dataset code checks a staged dataset.

autotrain's checks (phase 1) are its own reading of what sd-scripts does; where sd-scripts can be
asked, it is asked instead. `ask_the_trainer` runs `sd_scripts_probe.py` in the trainer's Python,
in the sd-scripts checkout, on the config files phase 3 wrote: sd-scripts parses them, reads every
caption, reads every image's size and makes its buckets, without loading any model. Its verdicts
come back in autotrain's words, one per file, naming the file as the user spelled it (the staged
copy keeps the dataset's relative paths), what the trainer would do and the fix:

- rejections: what would stop the trainer (a 0-byte caption, a caption that is not UTF-8, an image
  the bucketing cannot place, a config it refuses, a dataset in which it finds nothing to train);
- warnings: what it would train differently from what the user wrote (a multi-line caption
  trained as its first line, a whitespace-only caption trained as "", a byte order mark kept).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from autotrain.profile import Profile
from autotrain.settings import Settings
from autotrain.trainers.plan import TrainPlan

__all__ = [
    "FileVerdict",
    "TrainerCheck",
    "PROBE_PATH",
    "PROBE_TIMEOUT_SECONDS",
    "trainer_check_unavailable",
    "ask_the_trainer",
]

PROBE_PATH = Path(__file__).with_name("sd_scripts_probe.py")
PROBE_TIMEOUT_SECONDS = 300.0  # importing torch on a busy host takes tens of seconds
_REFERENCE = "library/train_util.py"
_DATASET_STAGES = {
    "arguments": "sd-scripts refuses the trainer config",
    "strategy": "sd-scripts fails preparing its latents cache",
    "config": "sd-scripts refuses the dataset config",
    "checks": "sd-scripts refuses the dataset",
    "dataset": "sd-scripts fails building the dataset",
    "buckets": "sd-scripts cannot bucket the dataset",
}


class FileVerdict(BaseModel):
    """One file (or folder, or config) as the trainer judges it."""

    file: str = Field(description="as the user spelled it where it is a dataset file")
    relpath: str | None = Field(None, description="inside the dataset, when it is a dataset file")
    what: str = Field(description="what the trainer would do with it")
    fix: str

    def line(self) -> str:
        return f"{self.file}: {self.what}. Fix: {self.fix}"


class TrainerCheck(BaseModel):
    """The outcome of asking the trainer; `available` False says why it could not be asked."""

    available: bool
    why_unavailable: str | None = None
    rejected: list[FileVerdict] = Field(default_factory=list)
    warnings: list[FileVerdict] = Field(default_factory=list)
    captions: dict[str, str] = Field(default_factory=dict, description="image relpath -> caption")
    images: int = 0
    seconds: float = 0.0

    @property
    def accepted(self) -> bool:
        return self.available and not self.rejected

    def rejection_message(self, name: str, script: str) -> str:
        lines = [f"The trainer ({script}) would reject dataset {name!r}; checked with "
                 "sd-scripts' own dataset code, nothing was trained:"]  # fmt: skip
        lines += [f"  - {verdict.line()}" for verdict in self.rejected]
        return "\n".join(lines)


def trainer_check_unavailable(profile: Profile, settings: Settings) -> str | None:
    """Why sd-scripts cannot be asked on this host (None when it can)."""
    if profile.backend != "kohya" or not profile.script:
        return f"profile {profile.name} does not train with sd-scripts"
    python = settings.python_for_sd_scripts
    if os.sep in python and not os.access(python, os.X_OK):
        return f"the trainer's Python {python} is not here"
    directory = settings.sd_scripts_dir
    if directory is None or not Path(directory).is_dir():
        return f"sd_scripts_dir {directory} is not a folder here"
    if not (Path(directory) / "library" / "train_util.py").is_file():
        return f"sd-scripts' library/ is missing in {directory}"
    if not (Path(directory) / profile.script).is_file():
        return f"{profile.script} is missing in {directory}"
    return None


def ask_the_trainer(
    plan: TrainPlan,
    profile: Profile,
    settings: Settings,
    staged_dir: Path,
    dataset_path: Path,
    timeout: float = PROBE_TIMEOUT_SECONDS,
) -> TrainerCheck:
    """Run the probe on the written config files; files are named under `dataset_path`."""
    why = trainer_check_unavailable(profile, settings)
    if why:
        return TrainerCheck(available=False, why_unavailable=why)
    started = time.monotonic()
    answer, trouble = _run_probe(plan, profile, settings, timeout)
    if answer is None:
        return TrainerCheck(available=False, why_unavailable=trouble)
    if answer.get("stage") in ("import", "probe"):
        error = answer.get("error") or {}
        return TrainerCheck(
            available=False,
            why_unavailable=f"sd-scripts could not be loaded in its Python ({error.get('type')}: "
            f"{error.get('message')})",
        )
    names = _Names(staged_dir, dataset_path)
    check = TrainerCheck(available=True, seconds=round(time.monotonic() - started, 2))
    _judge(check, answer, names, plan)
    return check


def _run_probe(
    plan: TrainPlan, profile: Profile, settings: Settings, timeout: float
) -> tuple[dict[str, Any] | None, str]:
    """The probe's JSON answer, or None and why there is none. Never through a shell."""
    command = [settings.python_for_sd_scripts, str(PROBE_PATH), "--script", str(profile.script),
               "--config-file", str(plan.config_path)]  # fmt: skip
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONIOENCODING": "utf-8",
    }
    try:
        done = subprocess.run(command, cwd=settings.sd_scripts_dir, env=env, capture_output=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, f"sd-scripts' dataset check took more than {timeout:.0f} s"
    except OSError as exc:
        return None, f"the trainer's Python could not start ({exc.strerror or exc})"
    lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        answer = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        return None, f"the dataset check gave no answer (exit {done.returncode}: {tail})"
    return (answer, "") if isinstance(answer, dict) else (None, "the dataset check gave no answer")


class _Names:
    """Staged paths back to the dataset's own: staging keeps every relative path."""

    def __init__(self, staged_dir: Path, dataset_path: Path) -> None:
        self.staged = Path(os.path.abspath(staged_dir))
        self.dataset = Path(dataset_path)

    def relpath(self, path: str | None) -> str | None:
        if not path:
            return None
        absolute = Path(os.path.abspath(path))
        if not absolute.is_relative_to(self.staged):
            return None
        return absolute.relative_to(self.staged).as_posix()

    def user(self, path: str | None) -> str:
        rel = self.relpath(path)
        if rel is None:
            return str(path)
        return str(self.dataset) if rel == "." else str(self.dataset / rel)

    def staged_path(self, path: str) -> Path:
        return Path(os.path.abspath(path))

    def verdict(self, path: str | None, what: str, fix: str) -> FileVerdict:
        return FileVerdict(file=self.user(path), relpath=self.relpath(path), what=what, fix=fix)


def _judge(check: TrainerCheck, answer: dict[str, Any], names: _Names, plan: TrainPlan) -> None:
    images = answer.get("images") or []
    check.images = len(images)
    error = answer.get("error") or {}
    files = list(answer.get("files") or []) + list(error.get("files") or [])
    for failure in files:
        check.rejected.append(_file_rejection(failure, names, plan))
    stage = answer.get("stage")
    if not answer.get("ok") and not files:
        check.rejected.append(_dataset_rejection(stage, error, plan))
    for image in images:
        rel = names.relpath(image.get("path"))
        if rel is not None and image.get("caption") is not None:
            check.captions[rel] = image["caption"]
        check.warnings += _caption_warnings(image, names, _caption_extension(plan))
    for subset in answer.get("subsets") or []:
        if not subset.get("used") and answer.get("ok"):
            check.warnings.append(names.verdict(
                subset.get("image_dir"),
                f"the trainer skips this folder (num_repeats {subset.get('num_repeats')}, or "
                "no image it reads)",
                "give it repeats of at least 1 and images in .png, .jpg, .jpeg, .webp or .bmp",
            ))  # fmt: skip


def _file_rejection(failure: dict[str, Any], names: _Names, plan: TrainPlan) -> FileVerdict:
    kind, message = failure.get("type"), str(failure.get("message", ""))
    captions = failure.get("captions") or []
    where = failure.get("where") or _REFERENCE
    if failure.get("subset"):
        return names.verdict(
            failure["subset"],
            f"sd-scripts refuses this folder's settings ({kind}: {_first_line(message)}, {where})",
            "check the dataset settings of the profile (its base.toml)",
        )
    if kind == "AssertionError" and "caption file is empty" in message and captions:
        return names.verdict(
            captions[0],
            'an empty caption file (0 bytes): sd-scripts stops with "caption file is empty" '
            f"when it reads it ({_REFERENCE}, read_caption)",
            f"write the caption into it, or delete it to train {names.user(failure.get('image'))} "
            "with the class tokens",
        )
    if kind == "UnicodeDecodeError" and captions:
        return names.verdict(
            captions[0],
            f"not UTF-8 (byte 0x{failure.get('byte', '??')} at offset {failure.get('position')}): "
            "sd-scripts reads captions as strict UTF-8 and stops with UnicodeDecodeError "
            f"({_REFERENCE}, read_caption)",
            "re-save it as UTF-8 (from a legacy encoding: iconv -f cp1252 -t utf-8)",
        )
    if kind in ("ZeroDivisionError", "ZeroBucket"):
        return names.verdict(failure.get("image"), _bucket_what(failure, plan),
                             _bucket_fix(plan))  # fmt: skip
    return names.verdict(
        failure.get("image") or (captions[0] if captions else None),
        f"sd-scripts fails on it ({kind}: {_first_line(message)}, {where})",
        "replace or remove it",
    )


def _bucket_what(failure: dict[str, Any], plan: TrainPlan) -> str:
    size = failure.get("size")
    shown = f"{size[0]}x{size[1]}" if size else "its size"
    steps = plan.config.get("bucket_reso_steps") or 64
    how = "with bucket_no_upscale " if plan.config.get("bucket_no_upscale") else ""
    return (
        f"{shown}: {how}sd-scripts rounds a side of it down to 0 px at its bucket step {steps}, "
        f"so it cannot bucket it ({failure.get('message')}; {_REFERENCE}, select_bucket)"
    )


def _bucket_fix(plan: TrainPlan) -> str:
    steps = plan.config.get("bucket_reso_steps") or 64
    fix = f"remove it, or enlarge it to at least {steps} px on its short side"
    if plan.config.get("bucket_no_upscale"):
        fix += " after scaling to the profile's resolution, or turn off bucket_no_upscale"
    return fix


def _dataset_rejection(stage: str | None, error: dict[str, Any], plan: TrainPlan) -> FileVerdict:
    if stage == "empty":
        return FileVerdict(
            file=str(plan.dataset_config_path or plan.config_path),
            what="the trainer finds no image to train on and would exit without training",
            fix="stage images it reads (.png, .jpg, .jpeg, .webp, .bmp) in folders with repeats "
            "of at least 1",
        )
    what = _DATASET_STAGES.get(stage or "", "sd-scripts refuses the job")
    detail = f"{error.get('type')}: {_first_line(str(error.get('message', '')))}"
    where = f", {error['where']}" if error.get("where") else ""
    source = plan.dataset_config_path if stage in ("config", "checks") else plan.config_path
    return FileVerdict(
        file=str(source or plan.config_path),
        what=f"{what} ({detail}{where})",
        fix="change the profile's base.toml (or profile.toml) so the trainer accepts it",
    )


def _caption_extension(plan: TrainPlan) -> str:
    general = (plan.dataset_config or {}).get("general", {})
    return general.get("caption_extension") or plan.config.get("caption_extension") or ".caption"


def _caption_warnings(image: dict[str, Any], names: _Names, extension: str) -> list[FileVerdict]:
    """What the user wrote against what the trainer reads: read_caption keeps the first line,
    stripped (train_util.py:1966), and strip() keeps a byte order mark."""
    path = image.get("path")
    trained = image.get("caption")
    if not path or trained is None:
        return []
    caption = Path(os.path.splitext(names.staged_path(path))[0] + extension)
    try:
        text = caption.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    written = [line.strip() for line in text.splitlines() if line.strip()]
    if text.startswith("\ufeff"):
        return [names.verdict(str(caption), "starts with a UTF-8 byte order mark, which the "
                              "trainer keeps as the caption's first character",
                              "re-save it as UTF-8 without BOM")]  # fmt: skip
    if trained == "" and not written:
        return [names.verdict(str(caption), "holds only whitespace: the trainer trains this "
                              "image with an empty caption, not with the class tokens",
                              "write a caption, or delete the file to use the class tokens")]  # fmt: skip
    if len(written) > 1 or (trained == "" and written):
        return [names.verdict(
            str(caption),
            f"has {len(text.splitlines())} lines: the trainer trains on its first line only "
            f"({_quote(trained)}) and ignores the rest",
            "put the whole caption on one line",
        )]  # fmt: skip
    return []


def _quote(text: str, limit: int = 60) -> str:
    shown = text if len(text) <= limit else text[: limit - 1] + "…"
    return json.dumps(shown, ensure_ascii=False)


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:300]
