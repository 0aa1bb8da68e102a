"""Dataset discovery: which files of a folder are images, captions, junk or off-limits.

A dataset is a folder of images with optional `<stem>.txt` captions next to them. Each folder
that directly holds images is one subset (kohya reads subsets folder by folder, not recursively):
a folder named like kohya's `10_name/` carries its repeat count and class tokens (the dataset
folder itself too, when a repeat folder is passed directly), any other folder takes the
profile's default repeats. A `0_name/` folder is skipped, as kohya skips it, and a mistyped
`10-name/` gets a hint. OS clutter (`__MACOSX`, `._*`, `.DS_Store`, `Thumbs.db`, hidden
files) is skipped and counted, and symbolic links are never followed, so nothing outside the
dataset folder can be read or staged through it.
"""

from __future__ import annotations

import os
import re
import stat
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from autotrain.errors import ValidationError

__all__ = [
    "DatasetImage",
    "DatasetScan",
    "Problem",
    "Subset",
    "find_datasets",
    "parse_dataset_paths",
    "scan_dataset",
    "is_junk",
    "repeats_of",
    "IMAGE_EXTENSIONS",
    "CAPTION_EXTENSION",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tiff", ".tif")
CAPTION_EXTENSION = ".txt"
_JUNK_NAMES = {"__macosx", ".ds_store", "thumbs.db", "desktop.ini", "@eadir", "$recycle.bin"}
_REPEAT_DIR = re.compile(r"(\d+)_(.+)")
_ZERO_REPEATS_DIR = re.compile(r"0+_(.+)")
_MISTYPED_REPEAT_DIR = re.compile(r"(\d+)\s*[-.,\s]\s*([^\d\s].*)")


class DatasetImage(BaseModel):
    """One image of a dataset, by its path relative to the dataset root (POSIX separators)."""

    relpath: str
    size: int
    caption_relpath: str | None = None
    subset: str = Field(".", description="relpath of the folder holding it ('.' = root)")


class Subset(BaseModel):
    """A folder that directly holds images; kohya trains each as one subset."""

    relpath: str = Field(description="'.' for the dataset root")
    repeats: int | None = Field(None, description="from an `N_name` folder; None = profile default")
    class_tokens: str | None = Field(
        None, description="the `name` of `N_name`, kohya's class tokens"
    )
    image_count: int = 0


class Problem(BaseModel):
    """Something wrong with one file; `error` files are excluded, `warning` files are kept."""

    path: str
    reason: str
    level: Literal["error", "warning"] = "warning"


class DatasetScan(BaseModel):
    """What a walk of the dataset folder found, before any file is opened."""

    root: Path
    images: list[DatasetImage] = Field(default_factory=list)
    subsets: list[Subset] = Field(default_factory=list)
    junk: list[str] = Field(default_factory=list, description="skipped OS clutter, dirs end in /")
    ignored: list[str] = Field(default_factory=list, description="neither image nor its caption")
    problems: list[Problem] = Field(default_factory=list, description="symlinks, unreadable dirs")

    @property
    def captions(self) -> list[str]:
        """Caption files that belong to an image, each once."""
        return sorted({i.caption_relpath for i in self.images if i.caption_relpath})


def is_junk(name: str) -> bool:
    """OS clutter and hidden entries: never images, never staged."""
    return name.startswith(".") or name.lower() in _JUNK_NAMES


def repeats_of(folder_name: str) -> tuple[int | None, str | None]:
    """`10_ohwx dog` -> (10, "ohwx dog"); anything else (or `0_x`) -> (None, None)."""
    match = _REPEAT_DIR.fullmatch(folder_name)
    if not match or int(match.group(1)) < 1:
        return None, None
    return int(match.group(1)), match.group(2)


def parse_dataset_paths(value: str) -> list[Path]:
    """`--datasets "a,b"` -> [Path("a"), Path("b")], blanks dropped, duplicates once."""
    paths: list[Path] = []
    for part in (value or "").split(","):
        part = part.strip()
        if part and Path(part).expanduser() not in paths:
            paths.append(Path(part).expanduser())
    if not paths:
        raise ValidationError(
            f"No dataset paths in {value!r}: pass folders separated by commas, e.g. "
            '--datasets "data/cats,data/dogs".'
        )
    return paths


def find_datasets(datasets_dir: Path | str) -> list[Path]:
    """Batch mode: each immediate subfolder holding images (directly or in `N_name/`), sorted."""
    root = Path(datasets_dir).expanduser()
    if not root.is_dir():
        raise ValidationError(f"Datasets folder {root} does not exist or is not a folder.")
    found: list[Path] = []
    skipped: list[str] = []
    for entry in _sorted_entries(root):
        if is_junk(entry.name) or not entry.is_dir():
            continue
        if _holds_images(Path(entry.path)):
            found.append(Path(entry.path))
        else:
            skipped.append(entry.name)
    if not found:
        hint = (
            " It holds images itself: pass it as one dataset instead."
            if _has_image_file(root)
            else ""
        )
        looked = f" Subfolders without images: {', '.join(skipped)}." if skipped else ""
        raise ValidationError(
            f"No image files found in {root}: batch mode trains each subfolder that holds images "
            f"({', '.join(IMAGE_EXTENSIONS)}) directly or in kohya `N_name/` folders.{looked}{hint}"
        )
    return found


def scan_dataset(path: Path | str) -> DatasetScan:
    """Walk a dataset without following symlinks; classify every entry."""
    root = Path(path)
    scan = DatasetScan(root=root)
    counts: Counter[str] = Counter()
    _walk(root, "", scan, counts)
    scan.images.sort(key=lambda image: image.relpath)
    scan.junk.sort()
    scan.ignored.sort()
    scan.subsets = [_subset(root, relpath, counts[relpath]) for relpath in sorted(counts)]
    repeats, tokens = repeats_of(root.name)
    if repeats is not None and counts["."]:
        scan.problems.append(
            Problem(
                path=".",
                reason=f"the dataset folder {root.name} is a kohya repeat folder: its images "
                f"train with {repeats} repeats and class tokens {tokens!r}, as kohya reads the "
                "folder inside its parent",
            )
        )
    return scan


def _walk(root: Path, rel: str, scan: DatasetScan, counts: Counter[str]) -> None:
    """Classify one folder's entries; images pair with `<stem>.txt` in the same folder."""
    folder = root / rel if rel else root
    try:
        entries = _sorted_entries(folder)
    except OSError as exc:
        scan.problems.append(Problem(path=rel or ".", reason=f"cannot list folder: {exc.strerror}"))
        return
    regular: dict[str, int] = {}  # name -> size, for plain files only
    for entry in entries:
        relpath = f"{rel}/{entry.name}" if rel else entry.name
        st = entry.stat(follow_symlinks=False)
        if is_junk(entry.name):
            scan.junk.append(relpath + ("/" if stat.S_ISDIR(st.st_mode) else ""))
        elif stat.S_ISLNK(st.st_mode):
            scan.problems.append(Problem(path=relpath, reason=_SYMLINK_REASON))
        elif stat.S_ISDIR(st.st_mode) and _ZERO_REPEATS_DIR.fullmatch(entry.name):
            scan.problems.append(Problem(path=relpath + "/", reason=_zero_repeats(entry.name)))
        elif stat.S_ISDIR(st.st_mode):
            _walk(root, relpath, scan, counts)
            if counts[relpath] and (hint := _mistyped_repeats(entry.name)):
                scan.problems.append(Problem(path=relpath + "/", reason=hint))
        elif stat.S_ISREG(st.st_mode):
            regular[entry.name] = st.st_size
        else:
            scan.ignored.append(relpath)
    captions_used: set[str] = set()
    prefix = f"{rel}/" if rel else ""
    for name, size in regular.items():
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        caption = os.path.splitext(name)[0] + CAPTION_EXTENSION
        has_caption = caption in regular
        if has_caption:
            captions_used.add(caption)
        scan.images.append(
            DatasetImage(
                relpath=prefix + name,
                size=size,
                caption_relpath=prefix + caption if has_caption else None,
                subset=rel or ".",
            )
        )
        counts[rel or "."] += 1
    scan.ignored.extend(
        prefix + name
        for name in regular
        if name not in captions_used and not name.lower().endswith(IMAGE_EXTENSIONS)
    )


_SYMLINK_REASON = (
    "symbolic link not followed (a link could reach outside the dataset); replace it with the file"
)


def _zero_repeats(name: str) -> str:
    """kohya ignores a subset with num_repeats < 1 (sd-scripts library/train_util.py:2118)."""
    return (
        f"folder {name}: 0 repeats, so kohya skips it ('ignore subset ... num_repeats is less "
        "than 1'); its images are not staged or trained. Rename it to N_name (N >= 1) to "
        "train them"
    )


def _mistyped_repeats(name: str) -> str | None:
    """A hint for `10-name` and the like, which kohya does not read as repeats (sd-scripts
    config_util.py:608, extract_dreambooth_params: int() of the part before the first `_`)."""
    match = _MISTYPED_REPEAT_DIR.fullmatch(name)
    if not match or _REPEAT_DIR.fullmatch(name) or not 1 <= int(match.group(1)) <= 100:
        return None  # beyond 100 it is more likely a year ("2024 trip") than repeats
    right = f"{int(match.group(1))}_{match.group(2)}"
    return (
        f"folder {name} looks like a kohya repeat folder but is not spelled <n>_<name>: it "
        f"trains at the profile's default repeats with the default class tokens. Rename it to "
        f"{right} for {int(match.group(1))} repeats and class tokens {match.group(2)!r}"
    )


def _subset(root: Path, relpath: str, count: int) -> Subset:
    """A folder's repeats and class tokens; the root's own name counts too (a repeat folder
    passed directly as the dataset keeps what kohya would read from it inside its parent)."""
    name = root.name if relpath == "." else Path(relpath).name
    repeats, tokens = repeats_of(name)
    return Subset(relpath=relpath, repeats=repeats, class_tokens=tokens, image_count=count)


def _sorted_entries(folder: Path) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as it:
        return sorted(it, key=lambda entry: entry.name)


def _listing(folder: Path) -> list[os.DirEntry[str]]:
    """The folder's entries, or none when it cannot be read."""
    try:
        return _sorted_entries(folder)
    except OSError:
        return []


def _any_image(entries: list[os.DirEntry[str]]) -> bool:
    return any(
        not is_junk(e.name)
        and e.name.lower().endswith(IMAGE_EXTENSIONS)
        and e.is_file(follow_symlinks=False)
        for e in entries
    )


def _has_image_file(folder: Path) -> bool:
    return _any_image(_listing(folder))


def _holds_images(folder: Path) -> bool:
    """Images directly inside, or inside a kohya `N_name/` subfolder (one listing of `folder`)."""
    entries = _listing(folder)
    return _any_image(entries) or any(
        not is_junk(e.name)
        and repeats_of(e.name)[0] is not None
        and e.is_dir(follow_symlinks=False)
        and _has_image_file(Path(e.path))
        for e in entries
    )
