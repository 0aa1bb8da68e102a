"""Where parsed trainer events go: `output/<name>/log/progress.jsonl`, the job's Redis stream and
its summary, and (throttled) Celery's PROGRESS state for Flower. Used in queued and immediate mode.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from autotrain.jobs.store import JobStore
from autotrain.trainers.outputs import sample_images
from autotrain.trainers.progress import ProgressEvent
from autotrain.trainers.resume import final_path

__all__ = ["ProgressRecorder", "read_loss_history", "PROGRESS_FILE"]

PROGRESS_FILE = "progress.jsonl"

SUMMARY_INTERVAL = 0.5  # seconds between step summaries on the job record
log = logging.getLogger(__name__)


class ProgressRecorder:
    """Records each event; also notices new images in the trainer's sample folder.

    Trainers print "generating sample images" before the files exist, so the folder is scanned
    (at most once a second, and at the end) and each new image becomes a `sample` event with
    its path, which monitors list and run.json records.

    A resumed attempt writes under a name of its own (`<name>.r2...`) that is renamed once it
    ends (autotrain.trainers.resume): checkpoints and samples are recorded under their final
    names from the start, so each is shown once, under a name that exists afterwards.
    """

    def __init__(
        self,
        log_dir: Path,
        sample_dir: Path | None = None,
        store: JobStore | None = None,
        job_id: str | None = None,
        flower_update: Callable[[dict[str, Any]], None] | None = None,
        flower_interval: float = 1.0,
    ) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(log_dir / PROGRESS_FILE, "a", encoding="utf-8")  # noqa: SIM115
        self.store, self.job_id = store, job_id
        self.flower_update, self.flower_interval = flower_update, flower_interval
        self._last_flower = 0.0
        self.samples: list[str] = []
        self.sample_dir = sample_dir
        self._seen_samples = set(map(self._final, _images_in(sample_dir)))
        self._last_scan = 0.0
        self._redis_down = False
        self._pending: dict[str, Any] = {}  # summary fields not yet on the job record
        self._last_summary = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        self._record(event)
        if self.sample_dir and time.monotonic() - self._last_scan >= 1.0:
            self.scan_samples()

    def scan_samples(self) -> None:
        """Emit a `sample` event for each image that appeared in the sample folder."""
        self._last_scan = time.monotonic()
        for path in map(self._final, _images_in(self.sample_dir)):
            if path not in self._seen_samples:
                self._seen_samples.add(path)
                self._record(ProgressEvent(kind="sample", path=path))

    def _final(self, path: str) -> str:
        return final_path(path, self.sample_dir.parent) if self.sample_dir else path

    def _record(self, event: ProgressEvent) -> None:
        if event.kind in ("sample", "checkpoint") and event.path:
            event.path = self._final(event.path)
        if event.kind == "sample" and event.path:
            self._seen_samples.add(event.path)
        data = event.to_dict()
        self._file.write(json.dumps(data) + "\n")
        self._file.flush()
        summary = _summary(event)
        if event.kind == "sample" and event.path and event.path not in self.samples:
            self.samples.append(event.path)
            summary["samples"] = self.samples[-8:]
        # Redis may be restarting: the trainer must go on; progress.jsonl keeps every event.
        try:
            if self.store and self.job_id:
                self.store.add_event(self.job_id, data, self._summary_due(event, summary))
            if self.flower_update and event.kind == "step":
                now = time.monotonic()
                if now - self._last_flower >= self.flower_interval:
                    self._last_flower = now
                    self.flower_update(summary)
        except (redis.RedisError, OSError) as exc:
            if not self._redis_down:
                log.warning("cannot record progress in Redis (%s); the trainer goes on", exc)
            self._redis_down = True
        else:
            self._redis_down = False

    def _summary_due(self, event: ProgressEvent, summary: dict[str, Any]) -> dict[str, Any]:
        """The summary fields to write on the job record with this event: a step's numbers at
        most every SUMMARY_INTERVAL seconds (the stream has every step; `train list` needs
        no more), anything else and the last step at once."""
        self._pending.update(summary)
        now = time.monotonic()
        last_step = event.kind == "step" and event.total is not None and event.step == event.total
        if event.kind == "step" and not last_step and now - self._last_summary < SUMMARY_INTERVAL:
            return {}
        due, self._pending, self._last_summary = self._pending, {}, now
        return due

    def close(self) -> None:
        if self.sample_dir:
            self.scan_samples()
        if self._pending and self.store and self.job_id:
            with contextlib.suppress(redis.RedisError):
                self.store.update(self.job_id, **self._pending)
        self._file.close()


def _images_in(folder: Path | None) -> list[str]:
    return [] if folder is None else [str(p) for p in sample_images(folder)]


def _summary(event: ProgressEvent) -> dict[str, Any]:
    if event.kind == "step":
        fields = {
            "step": event.step,
            "total": event.total,
            "rate": event.rate,
            "eta_seconds": event.eta_seconds,
        }
        if event.loss is not None:
            fields["loss"] = event.loss
        return {k: v for k, v in fields.items() if v is not None or k in ("rate", "eta_seconds")}
    if event.kind == "total" and event.total:
        return {"total": event.total}
    if event.kind == "epoch":
        return {
            k: v for k, v in {"epoch": event.epoch, "epochs": event.epochs}.items() if v is not None
        }
    return {}


def read_loss_history(log_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every step event recorded for the job, oldest first, last value per step."""
    by_step: dict[int, float] = {}
    try:
        with open(log_dir / PROGRESS_FILE, encoding="utf-8") as handle:
            for line in handle:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if (
                    event.get("kind") == "step"
                    and event.get("loss") is not None
                    and event.get("step")
                ):
                    by_step[int(event["step"])] = float(event["loss"])
    except OSError:
        return []
    return sorted(by_step.items())
