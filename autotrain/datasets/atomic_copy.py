"""Copy a dataset's files into place whole or not at all.

The copy is built in a hidden temporary folder next to its destination, with the manifest
written last, and renamed into place only when complete; any failure removes the temporary
folder. Each file is read once without following links and must hash to what validation
decoded, so the copy holds exactly the bytes that were checked.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from autotrain.datasets.diskspace import (
    allocated_bytes,
    free_bytes,
    human_size,
    is_disk_full,
    mount_point,
)
from autotrain.datasets.imagecheck import cpu_count, read_nofollow, upright_bytes
from autotrain.datasets.manifest import write_manifest
from autotrain.datasets.validate import FileRecord, ValidationReport
from autotrain.errors import StagingError

__all__ = ["copy_into_place", "remove_stale"]

_STALE_SECONDS = 3600  # leftovers of a killed staging older than this are removed
_COPY_CHUNK = 64  # files per copying task


def copy_into_place(
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
        staged_sizes = _copy_all(Path(report.dataset_path), tmp, files, progress, workers)
        write_manifest(tmp, report, files, staged_sizes)
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


def remove_stale(staged: Path) -> None:
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
) -> dict[str, int]:
    """Copy in chunks on a few threads: the work is system calls and hashing, which free the GIL.

    Chunks rather than one task per file keep the pool's own overhead below the copying.
    Returns the size of each file staged changed (turned upright), by relpath.
    """
    for folder in sorted({Path(f.relpath).parent for f in files}):
        (tmp / folder).mkdir(parents=True, exist_ok=True)
    chunks = [files[i : i + _COPY_CHUNK] for i in range(0, len(files), _COPY_CHUNK)]
    done, changed = 0, {}
    with ThreadPoolExecutor(workers or cpu_count()) as pool:
        futures = [pool.submit(_copy_chunk, source, tmp, chunk) for chunk in chunks]
        try:
            for future in as_completed(futures):
                sizes = future.result()
                done += len(sizes)
                changed |= {path: size for path, size in sizes.items() if size >= 0}
                if progress:
                    progress(done, len(files))
        finally:
            for pending in futures:
                pending.cancel()
    return changed


def _copy_chunk(source: Path, tmp: Path, chunk: list[FileRecord]) -> dict[str, int]:
    """Copy each file; an unexpected failure becomes a StagingError naming the file.

    Returns relpath -> staged size for files written changed, -1 for those copied as they are.
    """
    sizes: dict[str, int] = {}
    for record in chunk:
        try:
            sizes[record.relpath] = _copy_file(source, tmp, record)
        except StagingError:
            raise
        except Exception as exc:
            if is_disk_full(exc):
                raise  # about the workspace, not this file: see _disk_full
            raise StagingError(
                f"Copying {record.relpath} from {source} failed ({exc}); nothing was staged. "
                "Fix the cause and re-run."
            ) from exc
    return sizes


def _copy_file(source: Path, tmp: Path, record: FileRecord) -> int:
    """Read once without following links, check it is the validated content, write it (turned
    upright when its EXIF orientation says so). Returns the size written when it changed the
    bytes, else -1."""
    data = read_nofollow(str(source / record.relpath))
    if len(data) != record.size or hashlib.sha256(data).hexdigest() != record.sha256:
        raise StagingError(
            f"{source / record.relpath} changed after validation; nothing was staged. Re-run "
            "once the dataset is no longer being modified."
        )
    changed = record.orientation != 1
    if changed:
        data = upright_bytes(data)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp / record.relpath, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return len(data) if changed else -1


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
