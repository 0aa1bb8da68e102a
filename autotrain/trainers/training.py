"""Phase 4's core: run the trainer as a child process and turn its output into progress events.

The trainer runs under `autotrain.trainers.guard` in a session of its own: cancel reaches every process it
starts, and when the worker dies the guard kills the trainer's whole tree (PR_SET_PDEATHSIG alone
would reach only `accelerate launch`, not the training script it starts). When the guard itself
dies (SIGKILL) while the worker lives, the worker kills the session within a second and the run
says `guard_lost`: its exit status is the guard's, not the trainer's.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from autotrain.trainers.guard import die_with_parent, guarded_command, kill_session
from autotrain.trainers.progress import ProgressEvent, TrainerOutputParser
from autotrain.trainers.watchdog import StallWatchdog

__all__ = ["TrainerRun", "run_trainer", "stop_process_group"]


@dataclass
class TrainerRun:
    """How a trainer run ended."""

    returncode: int
    cancelled: bool
    started_at: float
    finished_at: float
    last_step: int = 0
    total: int | None = None
    last_loss: float | None = None
    error_event: dict[str, Any] | None = None
    tail: list[str] = field(default_factory=list)
    stalled_seconds: float | None = None  # ended by the stall watchdog after this much silence
    trainer_versions: dict[str, str] = field(default_factory=dict)  # set by phase 4
    resume: dict[str, Any] | None = None  # how this run resumed (phase 4), None when it did not
    first_step: int = (
        0  # the first step this run reported, and when (its pace: autotrain.fleet.eta)
    )
    first_step_at: float | None = None
    last_step_at: float | None = None
    guard_lost: bool = False  # the guard died unsupervised; the trainer's tree was killed

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0 and not self.cancelled and not self.guard_lost


def run_trainer(
    command: list[str],
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    on_event: Callable[[ProgressEvent], None] | None = None,
    on_output: Callable[[str], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    grace_seconds: float = 5.0,
    on_start: Callable[[int], None] | None = None,
    parser_options: dict[str, Any] | None = None,
    watchdog: StallWatchdog | None = None,
) -> TrainerRun:
    """Run `command` to the end (or until `should_cancel()`), streaming events as they come.

    `on_start(session)` gets the trainer's session id (its guard's pid) as soon as it runs. With
    a `watchdog`, a trainer silent past its budget is ended and the run says `stalled_seconds`.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    parser = TrainerOutputParser(**(parser_options or {}))
    tail: deque[str] = deque(maxlen=40)
    state: dict[str, Any] = {"step": 0, "total": None, "loss": None, "error": None}
    started = time.time()
    with open(log_path, "ab", buffering=0) as log:
        log.write(f"\n$ {' '.join(command)}\n".encode())
        proc = _spawn(command, grace_seconds, env, cwd)
        if on_start:
            on_start(proc.pid)
        cancelled = threading.Event()
        watcher = _start_cancel_watcher(proc, should_cancel, cancelled, grace_seconds, watchdog,
                                        state)  # fmt: skip

        def handle(events: list[ProgressEvent]) -> None:
            for event in events:
                if watchdog:
                    watchdog.saw(event)
                _track(state, event)
                if on_event:
                    on_event(event)

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            for text in _read_output(proc, log, decoder):
                if on_output:
                    on_output(text)
                tail.extend(line for line in text.replace("\r", "\n").splitlines() if line.strip())
                handle(parser.feed(text))
        except BaseException:
            # Ctrl+C or a failing callback: never leave the trainer running on its own.
            watcher.stop.set()
            stop_process_group(proc, grace_seconds)
            raise
        handle(parser.feed(decoder.decode(b"", final=True)) + parser.finish())
        returncode = proc.wait()
        watcher.stop.set()
    return TrainerRun(
        returncode=returncode,
        cancelled=cancelled.is_set(),
        started_at=started,
        finished_at=time.time(),
        last_step=state["step"],
        total=state["total"],
        last_loss=state["loss"],
        error_event=state["error"],
        tail=list(tail),
        stalled_seconds=state.get("stalled"),
        first_step=state.get("first_step", 0),
        first_step_at=state.get("first_step_at"),
        last_step_at=state.get("last_step_at"),
        guard_lost=state.get("guard_lost", False),
    )


def stop_process_group(proc: subprocess.Popen, grace_seconds: float) -> None:
    """SIGTERM the whole group, then SIGKILL whatever is left after the grace period.

    The guard leading the group escalates by itself after the same grace; the extra seconds here
    are for a guard that is stuck.
    """
    for sig, wait in ((signal.SIGTERM, grace_seconds + 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; make sure no child it started lingers in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


def _spawn(
    command: list[str], grace_seconds: float, env: dict[str, str] | None, cwd: Path | None
) -> subprocess.Popen:
    """The trainer under its guard, in a session of its own, output and errors on one pipe."""
    return subprocess.Popen(
        guarded_command(command, grace_seconds),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )


def _read_output(proc: subprocess.Popen, log: BinaryIO, decoder: Any) -> Iterator[str]:
    """The trainer's output as text, chunk by chunk as it comes, each chunk logged first."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    while chunk := os.read(fd, 65536):
        log.write(chunk)
        yield decoder.decode(chunk)


def _track(state: dict[str, Any], event: ProgressEvent) -> None:
    if event.kind == "step":
        if event.step and "first_step_at" not in state:
            state["first_step"], state["first_step_at"] = event.step, time.time()
        if event.step and event.step != state["step"]:
            state["last_step_at"] = time.time()
        state["step"] = event.step or state["step"]
        state["total"] = event.total or state["total"]
        if event.loss is not None:
            state["loss"] = event.loss
    elif event.kind == "total" and event.total:
        state["total"] = event.total
    elif event.kind == "error" and state["error"] is None:
        state["error"] = event.to_dict()


class _Watcher(threading.Thread):
    def __init__(self, target: Callable[[threading.Event], None]) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self._target_fn = target

    def run(self) -> None:
        self._target_fn(self.stop)


def _start_cancel_watcher(
    proc: subprocess.Popen,
    should_cancel: Callable[[], bool] | None,
    cancelled: threading.Event,
    grace_seconds: float,
    watchdog: StallWatchdog | None = None,
    state: dict[str, Any] | None = None,
) -> _Watcher:
    def watch(stop: threading.Event) -> None:
        while not stop.wait(0.5):
            if _guard_died(proc) and state is not None:
                state["guard_lost"] = True
                kill_session(proc.pid)
                return
            if watchdog and (silent := watchdog.stalled_for()) is not None and state is not None:
                state["stalled"] = round(silent, 1)
                stop_process_group(proc, grace_seconds)
                return
            if should_cancel is None:
                continue
            try:
                wanted = should_cancel()
            except Exception:  # noqa: BLE001 - a Redis blip must not kill the run
                continue
            if wanted:
                cancelled.set()
                stop_process_group(proc, grace_seconds)
                return

    watcher = _Watcher(watch)
    watcher.start()
    return watcher


def _guard_died(proc: subprocess.Popen) -> bool:
    """The guard ended by a signal it could not handle (SIGKILL): it exits by itself only once
    the trainer's tree is gone, and then with a status of its own (never negative)."""
    code = proc.poll()
    return code is not None and code < 0
