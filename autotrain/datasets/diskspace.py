"""Disk space as the filesystem counts it: what a copy will really take, and which filesystem.

A file takes whole blocks, so a folder of small captions takes many times its byte count; and
the message for a full disk must name the filesystem that filled (the workspace's), not the
dataset that was being read.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

__all__ = [
    "allocated_bytes",
    "mount_point",
    "free_bytes",
    "is_disk_full",
    "existing_ancestor",
    "human_size",
]


def allocated_bytes(files: Iterable[tuple[str, int]], where: Path) -> int:
    """The space a copy of `files` ((relpath, size) pairs) takes under `where`, in whole blocks
    of the filesystem holding it: one per started block of each file, one per folder."""
    block = os.statvfs(existing_ancestor(where)).f_frsize or 4096
    folders, total = {PurePosixPath(".")}, 0
    for relpath, size in files:
        total += -(-size // block) * block
        folders.update(PurePosixPath(relpath).parents)
    return total + len(folders) * block


def free_bytes(where: Path) -> int:
    """Bytes an unprivileged user may still write on the filesystem holding `where`."""
    stats = os.statvfs(existing_ancestor(where))
    return stats.f_bavail * stats.f_frsize


def mount_point(path: Path) -> Path:
    """The mount point of the filesystem holding `path` (or its nearest existing ancestor)."""
    path = existing_ancestor(path).resolve()
    device = path.stat().st_dev
    while path != path.parent and path.parent.stat().st_dev == device:
        path = path.parent
    return path


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def existing_ancestor(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def human_size(size: float) -> str:
    """`1.5 GB`, `330.0 kB`, `12 B` (decimal units, as `df -H` and disk vendors count)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} B"
