"""The manifest of a staged copy: what staging copied, and whether a staged folder still holds it.

`input/<name>/.autotrain-manifest.json` records the path, size and sha256 of each staged file.
Staging writes it before the copy is renamed into place, and reads it back to decide whether an
existing copy can be reused as it is.
"""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from autotrain.datasets.validate import FileRecord, ValidationReport, name_list
from autotrain.workspace import MANIFEST_NAME

__all__ = ["MANIFEST_NAME", "read_manifest", "write_manifest", "manifest_difference"]

MANIFEST_FORMAT = 1


def read_manifest(staged_dir: Path) -> dict[str, Any] | None:
    """The manifest of a staged copy, or None when there is none or it is unreadable."""
    try:
        data = json.loads((staged_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), list) else None


def write_manifest(
    folder: Path,
    report: ValidationReport,
    files: list[FileRecord],
    staged_sizes: dict[str, int] | None = None,
) -> None:
    """Write the manifest of `files` into `folder`, whole or not at all (renamed into place).

    Each entry names the source's size and sha256; `staged_size` is added for a file staging
    changed (an image turned upright), so a reused copy is checked against what was written.
    """
    staged_sizes = staged_sizes or {}
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": report.name,
        "source": str(report.dataset_path),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": [_entry(f, staged_sizes.get(f.relpath)) for f in files],
    }
    target = folder / MANIFEST_NAME
    partial = folder / f"{MANIFEST_NAME}.partial"
    partial.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    os.replace(partial, target)


def _entry(record: FileRecord, staged_size: int | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": record.relpath, "size": record.size, "sha256": record.sha256}
    if staged_size is not None:
        entry["staged_size"] = staged_size
    return entry


def manifest_difference(staged: Path, files: list[FileRecord]) -> str | None:
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
        f"{label}: {name_list(paths)}"
        for label, paths in (("changed", changed), ("new", new), ("removed", gone))
        if paths
    ]
    if parts:
        return "; ".join(parts)
    written = {e.get("path"): e.get("staged_size", e.get("size")) for e in manifest["files"]}
    on_disk = _listing(staged)
    if on_disk != written:
        odd = sorted(set(on_disk) ^ set(written)) or [
            p for p in written if on_disk.get(p) != written[p]
        ]
        return f"its files were changed after staging: {name_list(odd)}"
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
