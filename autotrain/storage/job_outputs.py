"""A job's outputs from the store into this host's `output/<name>/`: to resume, report or read.

Only what the store holds whole comes down: a state only when its marker is there (the state
the next attempt would resume from, or every one with `states="all"`), the other files as the
write-through last uploaded them. A file this host already holds at the same size is kept.
Files keep the time they were written on the host that wrote them (the resume rules compare
a state's time with the job's first training attempt).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from autotrain.storage.layout import STATE_MARKER, job_key, job_prefix
from autotrain.storage.objects import ObjectStore, Traffic
from autotrain.storage.write_through import is_state_dir

__all__ = ["fetch_job_outputs", "StateChoice"]

StateChoice = Literal["none", "newest", "all"]
TRANSFER_THREADS = 8
# Intermediate states, by step or by epoch (the final `<name>-state` is never resumed).
_NUMBERED_STATE = re.compile(r"-(?:step(\d{8})|(\d{6}))-state$")


def fetch_job_outputs(
    store: ObjectStore,
    job_id: str,
    output_dir: Path,
    *,
    states: StateChoice = "none",
    since: float | None = None,
    skip: Callable[[str], bool] | None = None,
) -> Traffic:
    """Download the job's files into `output_dir`; `skip(relpath)` leaves a file out.

    `states="newest"` brings the two newest complete numbered states written since `since`
    (two: the resume rules pass over a state at the last step), `"all"` every complete state.
    """
    with store.measuring() as traffic:
        _fetch(store, job_id, output_dir, states, since, skip)
    return traffic


def _fetch(store: ObjectStore, job_id: str, output_dir: Path, states: StateChoice,
           since: float | None, skip: Callable[[str], bool] | None) -> None:  # fmt: skip
    prefix = job_prefix(job_id)
    objects = {o.key[len(prefix) :]: o.size for o in store.list(prefix)}
    markers = [rel[: -len(STATE_MARKER) - 1] for rel in objects if rel.endswith(f"/{STATE_MARKER}")]
    wanted: dict[str, int] = {}
    for rel, size in objects.items():
        top = "/".join(rel.split("/")[:2])
        if rel.endswith(f"/{STATE_MARKER}") or is_state_dir(top) or (skip and skip(rel)):
            continue
        wanted[rel] = size
    state_times: dict[str, int] = {}
    for state in _chosen_states(store, job_id, markers, states, since, state_times):
        wanted.update({rel: objects[rel] for rel in objects
                       if rel.startswith(f"{state}/") and not rel.endswith(STATE_MARKER)})  # fmt: skip
    missing = [rel for rel, size in wanted.items() if not _held(output_dir / rel, size)]
    with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
        list(pool.map(lambda rel: store.get_file(job_key(job_id, rel), output_dir / rel), missing))
    for state, mtime_ns in state_times.items():  # the state's own time, for the resume rules
        if (output_dir / state).is_dir():
            os.utime(output_dir / state, ns=(mtime_ns, mtime_ns))


def _chosen_states(store: ObjectStore, job_id: str, markers: list[str], states: StateChoice,
                   since: float | None, times: dict[str, int]) -> list[str]:  # fmt: skip
    """The complete states to bring, filling `times` with each one's recorded mtime."""
    if states == "none":
        return []
    candidates = []
    for state in markers:
        raw = store.get_bytes(job_key(job_id, f"{state}/{STATE_MARKER}"))
        if raw is None:
            continue
        mtime_ns = int(json.loads(raw).get("mtime_ns") or 0)
        if states == "all":
            candidates.append((0, mtime_ns, state))
            continue
        number = _NUMBERED_STATE.search(state)
        if number is None or (since is not None and mtime_ns / 1e9 < since):
            continue
        candidates.append((int(number[1] or number[2]), mtime_ns, state))
    chosen = sorted(candidates, reverse=True)
    if states == "newest":
        chosen = chosen[:2]
    for _, mtime_ns, state in chosen:
        times[state] = mtime_ns
    return [state for _, _, state in chosen]


def _held(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False
