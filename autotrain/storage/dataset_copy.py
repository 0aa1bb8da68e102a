"""Staged datasets in the store, content-addressed: each file's content once, a listing per copy.

The submitting host uploads its staged `input/<name>/` (`upload_dataset`): every file under its
sha256 (a file already in the store, from this dataset or any other, is not sent again), then a
listing of relpath, size and hash, last, so a listing in the store always has all its files.
A re-run of an unchanged dataset finds its listing and sends nothing. Other hosts download a
listing's files into their own `input/<name>/` (`fetch_dataset`), each checked against its hash,
and keep a note of what they hold so the next phase on the same host downloads nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotrain.storage.layout import blob_key, dataset_key
from autotrain.storage.objects import ObjectStore, StorageError, Traffic
from autotrain.workspace import MANIFEST_NAME, Workspace, write_private

__all__ = ["DatasetUpload", "upload_dataset", "fetch_dataset", "file_sha256"]

LISTING_FORMAT = 1
TRANSFER_THREADS = 8


@dataclass
class DatasetUpload:
    key: str  # the listing's key: what the job record names
    files: int
    traffic: Traffic


def upload_dataset(
    store: ObjectStore,
    workspace: Workspace,
    name: str,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetUpload:
    """Upload the staged `input/<name>/`; only content the store does not hold yet is sent.

    `progress(done, total)` follows the files looked at (and sent, where the store lacks them).
    """
    with store.measuring() as traffic:  # hashing what the store may lack counts too
        folder = workspace.input_dir(name)
        entries = _entries(folder)
        listing = json.dumps({"format": LISTING_FORMAT, "name": name, "files": entries},
                             sort_keys=True, indent=0).encode()  # fmt: skip
        key = dataset_key(name, hashlib.sha256(listing).hexdigest())
        if not store.exists(key):
            _upload_blobs(store, {e["sha256"]: folder / e["path"] for e in entries}, progress)
            store.put_bytes(key, listing)  # last: a listing in the store has all of its files
        _remember(workspace, name, key)
    return DatasetUpload(key, len(entries), traffic)


def fetch_dataset(store: ObjectStore, workspace: Workspace, name: str, key: str) -> Traffic:
    """Make `input/<name>/` the dataset listed at `key`, downloading only when this host does
    not hold that copy yet; every file is checked against its sha256."""
    folder = workspace.input_dir(name)
    with store.measuring() as traffic:
        if not _holds(workspace, name, key, folder):
            _download_listing(store, workspace, name, key)
    return traffic


def _upload_blobs(store: ObjectStore, by_hash: dict[str, Path],
                  progress: Callable[[int, int], None] | None) -> None:  # fmt: skip
    """Each content the store lacks, eight at a time."""
    with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
        uploads = pool.map(lambda item: _upload_blob(store, *item), by_hash.items())
        for done, _ in enumerate(uploads, 1):
            if progress:
                progress(done, len(by_hash))


def _download_listing(store: ObjectStore, workspace: Workspace, name: str, key: str) -> None:
    """The listing's files into `input/<name>/`, built aside, checked, then renamed into place."""
    folder = workspace.input_dir(name)
    raw = store.get_bytes(key)
    if raw is None:
        raise StorageError(
            f"The dataset {name} is not in the store {store.url} (no {key}): it was removed "
            "from the store, or this host uses another storage_url. Submit the dataset again."
        )
    entries = json.loads(raw)["files"]
    building = folder.with_name(f".{name}.fetching")
    shutil.rmtree(building, ignore_errors=True)
    with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
        list(pool.map(lambda entry: _fetch_file(store, building, entry, name), entries))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(building, folder)
    _remember(workspace, name, key)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _entries(folder: Path) -> list[dict[str, Any]]:
    """relpath, size and sha256 of every file of a staged copy. Staging's manifest already has
    the hash of each file it copied unchanged; the others (turned upright, the manifest) are
    hashed here."""
    known: dict[str, tuple[int, str]] = {}
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        for e in manifest.get("files", []):
            if "staged_size" not in e:
                known[e["path"]] = (e["size"], e["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel, size = path.relative_to(folder).as_posix(), path.stat().st_size
        recorded = known.get(rel)
        digest = recorded[1] if recorded and recorded[0] == size else file_sha256(path)
        entries.append({"path": rel, "size": size, "sha256": digest})
    return entries


def _upload_blob(store: ObjectStore, sha256: str, path: Path) -> None:
    key = blob_key(sha256)
    if not store.exists(key):
        store.put_file(path, key)


def _fetch_file(store: ObjectStore, building: Path, entry: dict[str, Any], name: str) -> None:
    dest = building / entry["path"]
    if not dest.resolve().is_relative_to(building.resolve()):
        raise StorageError(f"The dataset {name} in the store names a file outside it: {entry['path']!r}.")  # fmt: skip
    store.get_file(blob_key(entry["sha256"]), dest)
    if dest.stat().st_size != entry["size"] or file_sha256(dest) != entry["sha256"]:
        raise StorageError(
            f"{entry['path']} of the dataset {name} arrived damaged from the store {store.url} "
            f"(its sha256 is not {entry['sha256']}); the store's copy may be corrupt. Submit "
            "the dataset again to upload it anew."
        )


def _note_path(workspace: Workspace, name: str) -> Path:
    return workspace.private_state_dir() / "store" / "datasets" / f"{name}.json"


def _remember(workspace: Workspace, name: str, key: str) -> None:
    """Note which listing this host's `input/<name>/` holds, with each file's size."""
    note = _note_path(workspace, name)
    note.parent.mkdir(parents=True, exist_ok=True)
    write_private(note, json.dumps({"key": key, "sizes": _sizes(workspace.input_dir(name))}))


def _holds(workspace: Workspace, name: str, key: str, folder: Path) -> bool:
    """Whether `folder` is still the copy of `key` this host downloaded or uploaded."""
    try:
        note = json.loads(_note_path(workspace, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if note.get("key") != key or not folder.is_dir():
        return False
    return _sizes(folder) == note.get("sizes")


def _sizes(folder: Path) -> dict[str, int]:
    """relpath -> size of every file under `folder`."""
    return {p.relative_to(folder).as_posix(): p.stat().st_size
            for p in folder.rglob("*") if p.is_file()}  # fmt: skip
