"""What a trainer writes, uploaded as it appears, so a job can go on from the store elsewhere.

While the trainer runs, a thread looks at the job's `output/<name>/` every few seconds and
uploads each file once it stopped changing (weights, samples), the logs at most every
`log_interval` seconds (they never stop changing), and each saved state once it is complete:
its files first, then its marker (`layout.STATE_MARKER`), so a state with a marker in the store
is whole. What the trainer deletes (sd-scripts keeps the last N states and checkpoints), and
what autotrain renames (an attempt's files folded back to their true step names), goes from
the store too.
After the trainer stops, `stop()` uploads what is left, whatever it looks like.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from autotrain.storage.layout import job_key, state_marker_key
from autotrain.storage.objects import ObjectStore, StorageError, Traffic

__all__ = ["WriteThrough", "upload_outputs", "is_state_dir", "SKIPPED_DIRS"]

log = logging.getLogger(__name__)

UPLOAD_THREADS = 8
SKIPPED_DIRS = ("runs",)  # earlier runs' files, archived beside this one's
Signature = tuple[int, int]  # size, mtime_ns


def is_state_dir(relpath: str) -> bool:
    """A trainer's resumable state: `model/<name>-...-state` (sd-scripts and the Tiny trainer)."""
    parts = relpath.split("/")
    return len(parts) == 2 and parts[0] == "model" and parts[1].endswith("-state")


class WriteThrough:
    """Upload a running job's outputs as they appear (see the module's docstring)."""

    def __init__(
        self,
        store: ObjectStore,
        job_id: str,
        output_dir: Path,
        is_complete_state: Callable[[Path], bool],
        *,
        interval: float = 2.0,
        log_interval: float = 10.0,
    ):
        self.store, self.job_id, self.output_dir = store, job_id, output_dir
        self.is_complete_state = is_complete_state
        self.interval, self.log_interval = interval, log_interval
        self.sent: dict[str, Signature] = {}  # relpath -> what was uploaded
        self.marked: dict[str, list[str]] = {}  # state relpath -> its files, marker written
        self._last_seen: dict[str, Signature] = {}
        self._log_sent_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._before, self._busy = store.snapshot(), 0.0
        self._pool = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="autotrain-upload")

    def start(self) -> WriteThrough:
        self._thread = threading.Thread(target=self._loop, name="autotrain-write-through",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        return self

    def stop(self, *, attempts: int = 3) -> Traffic:
        """Stop watching and upload everything left; raises StorageError if the store keeps
        refusing (the outputs stay on this host's disk)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        background, started = self._busy, time.monotonic()
        try:
            for attempt in range(attempts):
                try:
                    self.scan(final=True)
                    break
                except StorageError:
                    if attempt == attempts - 1:
                        raise
                    time.sleep(2.0 * (attempt + 1))
        finally:
            self._pool.shutdown()
        traffic = self.store.snapshot().minus(self._before)
        traffic.seconds = time.monotonic() - started  # what the job waited for
        traffic.background_seconds = background
        return traffic

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.scan(final=False)
            except StorageError as exc:  # the store is away: the next scan tries again
                log.warning("write-through of %s: %s", self.job_id, exc)
            except OSError as exc:  # a file went away while read: the next scan sees
                log.debug("write-through of %s: %s", self.job_id, exc)

    def scan(self, *, final: bool) -> None:
        """One look at the folder: upload what is ready (everything, when `final`), several
        files at once."""
        started = now = time.monotonic()
        files, states = _listing(self.output_dir)
        ready = {}
        for rel, signature in files.items():
            if self.sent.get(rel) == signature:
                continue
            if rel.startswith("log/"):
                if final or now - self._log_sent_at.get(rel, 0.0) >= self.log_interval:
                    ready[rel] = signature
                    self._log_sent_at[rel] = now
            elif final or self._last_seen.get(rel) == signature:
                ready[rel] = signature
        marks = {}
        for state, members in states.items():
            if (due := self._state_due(state, members, final)) is not None:
                ready.update(due)
                marks[state] = members
        self._upload_all(ready)
        for state, members in marks.items():  # each state's files are in: its marker, last
            self._mark(state, members)
        self._forget_deleted_states(states)
        self._forget_deleted_files(files)
        self._last_seen = files | {m: s for ms in states.values() for m, s in ms.items()}
        if ready or marks:
            self._busy += time.monotonic() - started

    def _state_due(self, state: str, members: dict[str, Signature],
                   final: bool) -> dict[str, Signature] | None:  # fmt: skip
        """The files to upload for a complete, settled state whose marker is missing or stale
        ({} when only the marker is); None while it is not ready or already in the store."""
        changed = {m: s for m, s in members.items() if self.sent.get(m) != s}
        if not changed and state in self.marked:
            return None
        settled = all(self._last_seen.get(m) == s for m, s in members.items())
        if not (final or settled) or not self.is_complete_state(self.output_dir / state):
            return None
        return changed

    def _mark(self, state: str, members: dict[str, Signature]) -> None:
        folder = self.output_dir / state
        marker = {"files": sorted(members), "mtime_ns": folder.stat().st_mtime_ns,
                  "written_at": time.time()}  # fmt: skip
        self.store.put_bytes(state_marker_key(self.job_id, state), json.dumps(marker).encode())
        self.marked[state] = sorted(members)

    def _forget_deleted_states(self, states: dict[str, dict[str, Signature]]) -> None:
        """A state the trainer removed leaves the store: its marker first, then its files."""
        for state in [s for s in self.marked if s not in states]:
            members = self.marked.pop(state)
            self.store.delete([state_marker_key(self.job_id, state)])
            self.store.delete([job_key(self.job_id, m) for m in members])
            for member in members:
                self.sent.pop(member, None)

    def _forget_deleted_files(self, files: dict[str, Signature]) -> None:
        """A file uploaded here that is gone now leaves the store: a checkpoint the trainer
        removed, or one renamed to its true step when an attempt is folded back (else the next
        host to download the job's files would bring the attempt's name back)."""
        gone = [rel for rel in self.sent
                if rel not in files and not is_state_dir("/".join(rel.split("/")[:2]))]  # fmt: skip
        if gone:
            self.store.delete([job_key(self.job_id, rel) for rel in gone])
            for rel in gone:
                self.sent.pop(rel, None)

    def _upload_all(self, ready: dict[str, Signature]) -> None:
        def upload(item: tuple[str, Signature]) -> None:
            rel, signature = item
            self.store.put_file(self.output_dir / rel, job_key(self.job_id, rel))
            self.sent[rel] = signature

        list(self._pool.map(upload, ready.items()))


def upload_outputs(store: ObjectStore, job_id: str, output_dir: Path,
                   only: list[str]) -> Traffic:  # fmt: skip
    """Upload the named files of a job's output folder (relpaths), e.g. run.json at the end."""
    with store.measuring() as traffic:
        for rel in only:
            if (output_dir / rel).is_file():
                store.put_file(output_dir / rel, job_key(job_id, rel))
    return traffic


def _listing(output_dir: Path) -> tuple[dict[str, Signature], dict[str, dict[str, Signature]]]:
    """The folder's files outside states, and each state's files, with their signatures.
    Files being written aside (`.tmp`, `.partial`), hidden folders and the archive of earlier
    runs are left out; hidden files are not (the resume record is one)."""
    files: dict[str, Signature] = {}
    states: dict[str, dict[str, Signature]] = {}
    if not output_dir.is_dir():
        return files, states
    for path in output_dir.rglob("*"):
        rel = path.relative_to(output_dir).as_posix()
        parts = rel.split("/")
        if parts[0] in SKIPPED_DIRS or any(p.startswith(".") for p in parts[:-1]):
            continue
        if path.suffix in (".tmp", ".partial") or not path.is_file():
            continue
        stat = path.stat()
        signature = (stat.st_size, stat.st_mtime_ns)
        state = (
            "/".join(parts[:2]) if len(parts) > 2 and is_state_dir("/".join(parts[:2])) else None
        )
        if state:
            states.setdefault(state, {})[rel] = signature
        else:
            files[rel] = signature
    return files, states
