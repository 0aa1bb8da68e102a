"""Phase 2: stage the valid images and their captions into `input/<name>/`, atomically.

The copy is built in a hidden temporary folder next to its destination and renamed into place
only when complete, with a manifest (`.autotrain-manifest.json`: path, size and sha256 of each
file) written first. Any failure removes the temporary folder, so `input/<name>/` is either absent
or whole. Each file is re-hashed while it is copied and must match what validation decoded, so
the manifest describes exactly the bytes that were checked. Symlinks are never followed.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, Field

from autotrain.datasets.diskspace import (
    allocated_bytes,
    free_bytes,
    human_size,
    is_disk_full,
    mount_point,
)
from autotrain.datasets.imagecheck import cpu_count, read_nofollow
from autotrain.datasets.validate import FileRecord, ValidationReport
from autotrain.errors import StagingError
from autotrain.workspace import Workspace

__all__ = ["StageResult", "stage_dataset", "read_manifest", "MANIFEST_NAME", "Action"]

MANIFEST_NAME = ".autotrain-manifest.json"
MANIFEST_FORMAT = 1
_STALE_SECONDS = 3600  # leftovers of a killed staging older than this are removed
_LIST_LIMIT = 10
_COPY_CHUNK = 64  # files per copying task

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
    if dry_run:
        result.action = _DRY[action]  # type: ignore[assignment]
        return result
    _remove_stale(staged)
    if action == "in-place":
        _write_manifest(staged, report, files)
    elif copies:
        _copy_into_place(report, files, staged, action == "replaced", progress, workers)
    result.action = action  # type: ignore[assignment]
    workspace.model_dir(report.name).mkdir(parents=True, exist_ok=True)
    workspace.log_dir(report.name).mkdir(parents=True, exist_ok=True)
    return result


def read_manifest(staged_dir: Path) -> dict[str, Any] | None:
    """The manifest of a staged copy, or None when there is none or it is unreadable."""
    try:
        data = json.loads((staged_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), list) else None


# Decisions


def _check_min_images(report: ValidationReport, min_images: int) -> None:
    valid = len(report.images)
    if valid >= min_images:
        return
    bad = [p.path for p in report.errors]
    excluded = f" ({len(bad)} unusable excluded: {_names(bad)})" if bad else ""
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
    difference = _difference(staged, files)
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


def _in_place(report: ValidationReport, force: bool, notes: list[str]) -> str:
    """The dataset is input/<name> itself: nothing to copy, and never anything to delete."""
    if report.errors:
        raise StagingError(
            f"Dataset {report.dataset_path} is its own staging folder and holds unusable files "
            f"the trainer would read ({_names([p.path for p in report.errors])}); remove them "
            "or stage from a folder outside input/."
        )
    if force:
        notes.append("--force ignored: the dataset is the staged folder itself")
    return "in-place"


def _difference(staged: Path, files: list[FileRecord]) -> str | None:
    """None when the staged copy and its manifest match the source; else what differs."""
    manifest = read_manifest(staged)
    if manifest is None:
        return f"no readable {MANIFEST_NAME}, so it was not staged by autotrain"
    recorded = {e.get("path"): (e.get("size"), e.get("sha256")) for e in manifest["files"]}
    wanted = {f.relpath: (f.size, f.sha256) for f in files}
    changed = [p for p in wanted if p in recorded and recorded[p] != wanted[p]]
    new = [p for p in wanted if p not in recorded]
    gone = [p for p in recorded if p not in wanted]
    parts = [
        f"{label}: {_names(paths)}"
        for label, paths in (("changed", changed), ("new", new), ("removed", gone))
        if paths
    ]
    if parts:
        return "; ".join(parts)
    on_disk = _listing(staged)
    if on_disk != {p: size for p, (size, _) in wanted.items()}:
        odd = sorted(set(on_disk) ^ set(wanted)) or [
            p for p in wanted if on_disk.get(p) != wanted[p][0]
        ]
        return f"its files were changed after staging: {_names(odd)}"
    return None


def _listing(folder: Path) -> dict[str, int]:
    """relpath -> size of every entry under `folder` but the manifest; links count as -1."""
    found: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(folder):  # never descends into linked dirs
        rel = Path(dirpath).relative_to(folder)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            st = os.lstat(os.path.join(dirpath, name))
            found[(rel / name).as_posix()] = -1 if stat.S_ISLNK(st.st_mode) else st.st_size
    found.pop(MANIFEST_NAME, None)
    return found


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
    skipped += [(p.path, p.reason) for p in report.warnings if "symbolic link" in p.reason]
    skipped += [(path, "caption of an unusable image") for path in report.excluded_captions]
    skipped += [(path, "OS or hidden junk") for path in report.junk_skipped]
    skipped += [(path, "not an image or an image's caption") for path in report.ignored_files]
    return skipped


# Doing it


def _copy_into_place(
    report: ValidationReport,
    files: list[FileRecord],
    staged: Path,
    replace: bool,
    progress: Callable[[int, int], None] | None,
    workers: int | None,
) -> None:
    """Copy into a hidden temp folder, write the manifest, then rename it into place."""
    staged.parent.mkdir(parents=True, exist_ok=True)
    tmp = staged.parent / f".{staged.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        _copy_all(Path(report.dataset_path), tmp, files, progress, workers)
        _write_manifest(tmp, report, files)
        if replace:
            _swap(tmp, staged)
        else:
            try:
                os.rename(tmp, staged)
            except OSError as exc:
                raise StagingError(
                    f"Could not move the staged copy into {staged}: {exc.strerror}. Another job "
                    "may have staged the same name meanwhile; re-run with --force to replace it."
                ) from exc
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):
            raise _disk_full(staged, files) from exc
        raise


def _disk_full(staged: Path, files: list[FileRecord]) -> StagingError:
    """The filesystem that filled is the workspace's; say which, and how much is missing."""
    need = allocated_bytes(((f.relpath, f.size) for f in files), staged)
    return StagingError(
        f"The workspace filesystem {mount_point(staged)} is full: staging {staged.name} needs "
        f"{human_size(need)} ({len(files)} files), {human_size(free_bytes(staged))} is free; "
        "nothing was staged. Free space there or move the workspace (AUTOTRAIN_WORKSPACE)."
    )


def _copy_all(
    source: Path,
    tmp: Path,
    files: list[FileRecord],
    progress: Callable[[int, int], None] | None,
    workers: int | None,
) -> None:
    """Copy in chunks on a few threads: the work is system calls and hashing, which free the GIL.

    Chunks rather than one task per file keep the pool's own overhead below the copying.
    """
    for folder in sorted({Path(f.relpath).parent for f in files}):
        (tmp / folder).mkdir(parents=True, exist_ok=True)
    chunks = [files[i : i + _COPY_CHUNK] for i in range(0, len(files), _COPY_CHUNK)]
    done = 0
    with ThreadPoolExecutor(workers or cpu_count()) as pool:
        futures = [pool.submit(_copy_chunk, source, tmp, chunk) for chunk in chunks]
        try:
            for future in as_completed(futures):
                done += future.result()
                if progress:
                    progress(done, len(files))
        finally:
            for pending in futures:
                pending.cancel()


def _copy_chunk(source: Path, tmp: Path, chunk: list[FileRecord]) -> int:
    """Copy each file; an unexpected failure becomes a StagingError naming the file."""
    for record in chunk:
        try:
            _copy_file(source, tmp, record)
        except StagingError:
            raise
        except Exception as exc:
            if is_disk_full(exc):
                raise  # about the workspace, not this file: see _disk_full
            raise StagingError(
                f"Copying {record.relpath} from {source} failed ({exc}); nothing was staged. "
                "Fix the cause and re-run."
            ) from exc
    return len(chunk)


def _copy_file(source: Path, tmp: Path, record: FileRecord) -> None:
    """Read once without following links, check it is the validated content, write it."""
    data = read_nofollow(str(source / record.relpath))
    if len(data) != record.size or hashlib.sha256(data).hexdigest() != record.sha256:
        raise StagingError(
            f"{source / record.relpath} changed after validation; nothing was staged. Re-run "
            "once the dataset is no longer being modified."
        )
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp / record.relpath, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _write_manifest(folder: Path, report: ValidationReport, files: list[FileRecord]) -> None:
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": report.name,
        "source": str(report.dataset_path),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": [{"path": f.relpath, "size": f.size, "sha256": f.sha256} for f in files],
    }
    target = folder / MANIFEST_NAME
    partial = folder / f"{MANIFEST_NAME}.partial"
    partial.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    os.replace(partial, target)


def _swap(tmp: Path, staged: Path) -> None:
    """Old copy aside, new one in, old one removed: never a half copy at `staged`."""
    old = staged.parent / f".{staged.name}.old-{secrets.token_hex(4)}"
    os.rename(staged, old)
    try:
        os.rename(tmp, staged)
    except BaseException:
        os.rename(old, staged)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:  # a file or link that stood where the folder goes
        old.unlink(missing_ok=True)


def _remove_stale(staged: Path) -> None:
    """Temp and old folders that a killed staging of this name left behind."""
    if not staged.parent.is_dir():
        return
    cutoff = time.time() - _STALE_SECONDS
    for prefix in (f".{staged.name}.tmp-", f".{staged.name}.old-"):
        for leftover in staged.parent.glob(f"{prefix}*"):
            try:
                if leftover.lstat().st_mtime < cutoff:
                    shutil.rmtree(leftover, ignore_errors=True)
            except OSError:
                continue


def _names(paths: list[str]) -> str:
    shown = ", ".join(paths[:_LIST_LIMIT])
    return shown + (f" and {len(paths) - _LIST_LIMIT} more" if len(paths) > _LIST_LIMIT else "")
