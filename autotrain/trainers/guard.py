"""The trainer guard: a small parent process that takes the trainer's whole process tree with it.

PR_SET_PDEATHSIG reaches only a direct child. A kohya trainer is `accelerate launch`, whose child
(the training script, or torch's elastic agent and its ranks) outlives a killed worker as an
orphan: it keeps the GPU and writes into the job's outputs while the job trains again elsewhere.
So the worker never starts a trainer directly; it starts `python -m autotrain.trainers.guard`, which:

- is started in a new session (its pid is the trainer's process group) with PDEATHSIG=SIGTERM;
- makes itself a child subreaper, so a descendant whose parent dies is re-parented to the guard
  (not to init) and stays in reach, even one that left the process group with setsid();
- when the worker dies (PDEATHSIG, or its parent changes), SIGKILLs every descendant at once;
- on SIGTERM from a living worker (cancel), passes it on, waits `--grace`, then SIGKILLs the rest;
- when the trainer exits, SIGKILLs whatever it left behind and exits with its status.

What it cannot cover: SIGKILL of the guard itself and a host that loses power (which takes its
trainers with it). A living worker notices its guard's death at once and kills the session
(autotrain.trainers.training); the per-GPU records below are the fallback when the worker died
too, for its supervisor and a restarted worker to act on.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from autotrain.workspace import private_dir

__all__ = [
    "guarded_command",
    "die_with_parent",
    "kill_tree",
    "kill_session",
    "record_trainer",
    "kill_recorded_trainers",
    "trainer_record_file",
    "device_records",
]

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def guarded_command(command: list[str], grace_seconds: float) -> list[str]:
    """`command` run under the guard, which the caller starts with `die_with_parent`."""
    return [
        sys.executable, "-m", "autotrain.trainers.guard",
        "--parent", str(os.getpid()), "--grace", str(grace_seconds), "--", *command,
    ]  # fmt: skip


def die_with_parent() -> None:
    """In the child before exec: SIGTERM when the thread that started it dies."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _prctl(option: int, value: int) -> None:
    """Linux prctl(2); a no-op where libc has none."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value)


def kill_tree(root: int) -> int:
    """SIGKILL every descendant of `root` until none is left; returns how many were killed."""
    killed = 0
    for _ in range(50):
        victims = _descendants(root)
        if not victims:
            return killed
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        _reap_children()
        time.sleep(0.02)
    return killed


def kill_session(session: int) -> int:
    """SIGKILL every process whose session or process group is `session` (a guard's pid, which
    leads both); returns how many were killed. The trainer's tree after its guard was killed."""
    members = [pid for pid, (pgid, sid) in _groups().items() if session in (pgid, sid)]
    for pid in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(members)


# --- per-GPU records: the fallback when the guard itself was SIGKILLed ---------------------------


def trainer_record_file(state_dir: Path, host: str, device: str, job_id: str) -> Path:
    """`.autotrain/trainers/<host>-<device>.<job>.json`: a trainer session on one GPU (a GPU that
    packs several jobs has one record per job)."""
    return state_dir / "trainers" / f"{host}-{device}.{job_id}.json"


def device_records(state_dir: Path, host: str, gpus: list[int], job_id: str | None = None,
                   ) -> list[Path]:  # fmt: skip
    """The record files of `job_id` on these GPUs of `host` (the CPU worker's when `gpus` is
    empty); without a job, every record that exists for them."""
    devices = [f"gpu{g}" for g in gpus] or ["cpu"]
    if job_id is not None:
        return [trainer_record_file(state_dir, host, d, job_id) for d in devices]
    folder = state_dir / "trainers"
    return sorted(p for d in devices for p in folder.glob(f"{host}-{d}.*.json"))


def record_trainer(files: list[Path], session: int, job_id: str) -> None:
    """Note that session `session` (a guard's pid) trains `job_id` on these devices."""
    record = {"session": session, "started": _start_time(session), "job": job_id}
    for path in files:
        private_dir(path.parent.parent)  # the workspace's .autotrain/
        private_dir(path.parent)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, path)


def kill_recorded_trainers(
    files: list[Path], spare: set[str] | frozenset = frozenset()
) -> list[str]:
    """Kill every process left of the sessions these records name (but those of the jobs in
    `spare`, alive beside it on a shared GPU); returns what was done.

    A process belongs to a recorded session when its session or process group id is the guard's
    pid. If a process with that pid lives but started at another time, the pid was reused by
    something else and is left alone.
    """
    done = []
    for path in files:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if record.get("job") in spare:
            continue
        session = int(record.get("session", 0))
        started = _start_time(session)
        same = session > 1 and (started is None or started == record.get("started"))
        if same and (killed := kill_session(session)):
            done.append(
                f"killed {killed} leftover trainer process(es) of job "
                f"{record.get('job')} (session {session})"
            )
        path.unlink(missing_ok=True)
    return done


# --- /proc ------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rpartition(")")[2].split()


def _start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22, starttime


def _all_stats() -> dict[int, list[str]]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) and fields[0] != "Z":
            stats[int(entry)] = fields
    return stats


def _groups() -> dict[int, tuple[int, int]]:
    """pid -> (process group, session) of every live process."""
    return {pid: (int(f[2]), int(f[3])) for pid, f in _all_stats().items()}


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, fields in _all_stats().items():
        children.setdefault(int(fields[1]), []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _reap_children() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


# --- the guard process ------------------------------------------------------------------------


def _main(argv: list[str]) -> int:
    parent, grace, command = _parse(argv)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    me = os.getpid()
    if os.getppid() != parent:  # the worker died before PDEATHSIG was armed
        return 137
    stopping: dict[str, float] = {}
    trainer: subprocess.Popen | None = None

    def on_signal(signum: int, _frame) -> None:
        if os.getppid() != parent:  # PDEATHSIG: the worker is gone, nobody waits for a save
            kill_tree(me)
            os._exit(128 + signum)
        if "at" not in stopping:  # a cancel: the trainer may save and stop within the grace
            stopping["at"] = time.monotonic()
            if trainer is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(trainer.pid, signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        trainer = subprocess.Popen(command)
    except OSError as exc:
        print(f"autotrain: cannot start the trainer {command[0]}: {exc}", file=sys.stderr)
        return 127
    while True:
        try:
            code = trainer.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            pass
        if os.getppid() != parent:
            kill_tree(me)
            return 137
        if "at" in stopping and time.monotonic() - stopping["at"] > grace:
            kill_tree(me)
    kill_tree(me)  # whatever the trainer left behind
    return code if code >= 0 else 128 - code


def _parse(argv: list[str]) -> tuple[int, float, list[str]]:
    if "--" not in argv:
        raise SystemExit(
            "usage: python -m autotrain.trainers.guard --parent PID --grace S -- COMMAND..."
        )
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    values = dict(zip(options[::2], options[1::2], strict=False))
    return int(values.get("--parent", os.getppid())), float(values.get("--grace", 5)), command


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
