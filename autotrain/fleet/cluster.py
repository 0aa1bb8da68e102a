"""The embedded local cluster: a real redis-server on loopback plus this host's workers.

Used when no shared Redis is configured. Its state lives under `.autotrain/` in the workspace:
`redis.json` (port and pid), `redis/` (append-only data), `workers.json` (the supervisor's pid) and
the logs of both, so `up`, `down` and `status` work from any shell on the host.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from autotrain.errors import AutotrainError
from autotrain.jobs.connection import redis_url_for
from autotrain.jobs.local_redis import (
    LOCKED_COMMANDS,
    embedded_password,
    embedded_redis_url,
    find_redis_server,
    local_url,
    read_json,
    redact,
    redis_state_file,
)
from autotrain.jobs.redis_url import explain_redis_failure
from autotrain.settings import Settings
from autotrain.workspace import Workspace, open_private_log, private_dir, write_private

__all__ = [
    "ClusterStatus",
    "up",
    "down",
    "ensure_up",
    "cluster_status",
    "embedded_redis_url",
    "find_redis_server",
    "start_embedded_redis",
    "start_local_workers",
    "local_dashboard_running",
]


@dataclass
class ClusterStatus:
    redis_url: str | None
    redis_running: bool
    redis_pid: int | None
    workers_pid: int | None
    embedded: bool
    problem: str = ""  # why Redis does not answer, when it does not


def ensure_up(settings: Settings, *, workers: bool = True, say=print) -> bool:
    """Start the local cluster when it is not running; returns True when it started something."""
    if settings.redis_url:
        return False
    status = cluster_status(settings)
    if status.redis_running and (status.workers_pid or not workers):
        return False
    say("Starting the local cluster (embedded Redis and workers); `autotrain down` stops it.")
    up(settings, workers=workers)
    return True


def up(
    settings: Settings, *, workers: bool = True, worker_args: list[str] | None = None
) -> ClusterStatus:
    """Start the embedded Redis (if not running) and the local workers (if not running)."""
    if settings.redis_url:
        raise AutotrainError(
            f"AUTOTRAIN_REDIS_URL is set ({redact(settings.redis_url)}): `autotrain up` manages only "
            "the embedded Redis. Run `autotrain worker` on each GPU host instead."
        )
    status = cluster_status(settings)
    if not status.redis_running:
        start_embedded_redis(settings)
    if workers and not status.workers_pid:
        start_local_workers(settings, worker_args or [])
    return cluster_status(settings)


def down(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Stop the local workers (warm shutdown), then Redis (its data is kept). Returns what stopped."""
    stopped: list[str] = []
    board = read_json(_dashboard_state_file(settings))
    if board and _pid_alive(board["pid"]):
        _terminate(board["pid"], timeout)
        stopped.append(f"dashboard (pid {board['pid']})")
    _dashboard_state_file(settings).unlink(missing_ok=True)
    workers = read_json(_workers_state_file(settings))
    if workers and _pid_alive(workers["pid"]):
        _terminate(workers["pid"], timeout)
        stopped.append(f"workers (pid {workers['pid']})")
    _workers_state_file(settings).unlink(missing_ok=True)
    state = read_json(redis_state_file(settings))
    if state and _pid_alive(state["pid"]):
        # The reply to SHUTDOWN is a closed connection.
        with contextlib.suppress(redis.RedisError):
            redis.Redis.from_url(local_url(settings, state["port"]), socket_timeout=5).shutdown(
                save=False
            )
        _terminate(state["pid"], timeout)
        stopped.append(f"redis (pid {state['pid']}, port {state['port']})")
    redis_state_file(settings).unlink(missing_ok=True)
    return stopped


def cluster_status(settings: Settings) -> ClusterStatus:
    if settings.redis_url:
        url = redis_url_for(settings)
        problem = _why_unreachable(url)
        return ClusterStatus(url, problem is None, None, None, False, problem or "")
    state = read_json(redis_state_file(settings))
    url = local_url(settings, state["port"]) if state else None
    running = bool(state) and _pid_alive(state["pid"]) and _ping(url)
    workers = read_json(_workers_state_file(settings))
    workers_pid = workers["pid"] if workers and _pid_alive(workers["pid"]) else None
    return ClusterStatus(url, running, state["pid"] if running else None, workers_pid, True)


def start_embedded_redis(settings: Settings) -> int:
    """A real redis-server on 127.0.0.1, AOF on, noeviction, detached from this process."""
    state_dir = Workspace(settings.workspace).private_state_dir()
    data_dir = private_dir(state_dir / "redis")
    _make_private(data_dir)  # data an older version left readable by all
    binary = find_redis_server()
    password = embedded_password(settings, create=True)
    # Restarting after a crash: keep the old port, so running workers reconnect by themselves.
    previous = (read_json(redis_state_file(settings)) or {}).get("port")
    for attempt in range(5):
        port = previous if attempt == 0 and previous and _port_free(previous) else _free_port()
        config = state_dir / "redis.conf"
        write_private(config, _redis_config(port, data_dir, state_dir, password))
        argv = [binary, str(config)]  # the password stays in the 0600 file, off the command line
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            umask=0o077,  # its append-only files and log: this user only
        )
        if _wait_for_redis(local_url(settings, port), proc, timeout=10):
            _write_json(redis_state_file(settings), {"pid": proc.pid, "port": port})
            return port
        proc.kill()
    raise AutotrainError(f"redis-server did not start; see {state_dir / 'redis.log'}.")


def run_redis_in_foreground(settings: Settings, port: int) -> None:
    """Become the workspace's Redis (exec): what `autotrain up` starts, for a process manager
    (the Procfile, systemd) to supervise. Same password, locked commands and private files;
    every local command and worker finds it through `.autotrain/redis.json` as usual."""
    if settings.redis_url:
        raise AutotrainError(
            f"AUTOTRAIN_REDIS_URL is set ({redact(settings.redis_url)}): `autotrain redis` runs "
            "only the workspace's own Redis. Unset it, or run that Redis as you run it now."
        )
    status = cluster_status(settings)
    if status.redis_running:
        raise AutotrainError(
            f"The workspace's Redis already runs (pid {status.redis_pid}). Stop it first: "
            "autotrain down"
        )
    state_dir = Workspace(settings.workspace).private_state_dir()
    data_dir = private_dir(state_dir / "redis")
    _make_private(data_dir)
    password = embedded_password(settings, create=True)
    config = state_dir / "redis.conf"
    write_private(config, _redis_config(port, data_dir, state_dir, password, log_to_stdout=True))
    _write_json(redis_state_file(settings), {"pid": os.getpid(), "port": port})
    os.umask(0o077)
    binary = find_redis_server()
    os.execv(binary, [binary, str(config)])


def _redis_config(port: int, data_dir: Path, state_dir: Path, password: str | None,
                  log_to_stdout: bool = False) -> str:  # fmt: skip
    """redis.conf of the embedded Redis: loopback, AOF, noeviction, a password, locked commands."""
    lines = [
        "bind 127.0.0.1",
        f"port {port}",
        f'dir "{data_dir}"',
        "appendonly yes",
        "appendfsync everysec",
        "maxmemory-policy noeviction",
        'save ""',
        "daemonize no",
        'logfile ""' if log_to_stdout else f'logfile "{state_dir / "redis.log"}"',
        "protected-mode yes",
    ]
    if password:
        lines.append(f"requirepass {password}")
    lines += [f'rename-command {name} ""' for name in LOCKED_COMMANDS]
    return "\n".join(lines) + "\n"


def _make_private(folder: Path) -> None:
    """Take group and other permissions off everything under `folder` that this user owns."""
    for path in [folder, *folder.rglob("*")]:
        mode = path.lstat().st_mode
        if mode & 0o077 and not path.is_symlink() and path.lstat().st_uid == os.getuid():
            path.chmod(mode & 0o700)


def start_local_workers(settings: Settings, worker_args: list[str]) -> int:
    """`autotrain worker` in the background, logging to .autotrain/worker.log."""
    return _start_in_background(settings, ["worker", *worker_args], "worker.log",
                                _workers_state_file(settings))  # fmt: skip


def start_local_dashboard(settings: Settings) -> int | None:
    """`autotrain dashboard` in the background (.autotrain/dashboard.log), unless it runs."""
    state = read_json(_dashboard_state_file(settings))
    if state and _pid_alive(state["pid"]):
        return None
    return _start_in_background(settings, ["dashboard"], "dashboard.log",
                                _dashboard_state_file(settings))  # fmt: skip


def _start_in_background(settings: Settings, args: list[str], log_name: str, state: Path) -> int:
    state_dir = Workspace(settings.workspace).private_state_dir()
    env = {**os.environ, "AUTOTRAIN_WORKSPACE": str(settings.workspace)}
    log = open_private_log(state_dir / log_name)  # handed to the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotrain.cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    log.close()
    _write_json(state, {"pid": proc.pid})
    return proc.pid


def local_dashboard_running(settings: Settings) -> bool:
    """Whether `autotrain up --dashboard` (or `autotrain dashboard` started by it) serves here."""
    state = read_json(_dashboard_state_file(settings))
    return bool(state and _pid_alive(state["pid"]))


def _dashboard_state_file(settings: Settings) -> Path:
    return Workspace(settings.workspace).state_dir / "dashboard.json"


def _workers_state_file(settings: Settings) -> Path:
    return Workspace(settings.workspace).state_dir / "workers.json"


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".tmp")
    write_private(tmp, json.dumps(value))
    os.replace(tmp, path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ping(url: str | None) -> bool:
    return bool(url) and _why_unreachable(url) is None


def _why_unreachable(url: str) -> str | None:
    """None when Redis at `url` answers a PING; else what is wrong, and the fix where the URL or
    the server's TLS setup is at fault."""
    try:
        redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        return explain_redis_failure(url, exc) or f"{exc}"
    return None


def _wait_for_redis(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _ping(url):
            return True
        time.sleep(0.05)
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of this process counts as gone.
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return not _is_zombie(pid)  # another process's child: exited, not yet reaped


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _terminate(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.1)
    if _pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
