"""The job store: every read and write of a job record goes through `JobStore`.

Each job is a hash `autotrain:job:<id>` (fields JSON-encoded), indexed by creation time in
`autotrain:jobs` (all), `autotrain:jobs:active` (not final) and its batch's index, with its
progress events in the stream `autotrain:job:<id>:events` and its attempts in a history list (see
autotrain.jobs.keys). Who owns a job changes only through `JobStore.move` and `JobStore.reopen`
(the Lua in autotrain.jobs.scripts), and only along autotrain.jobs.states.ALLOWED; the moves
themselves (hand-offs, finishing) are autotrain.jobs.dispatch.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import redis

from autotrain.errors import AmbiguousJobId, AutotrainError, JobNotFinal, NameInUse, NoSuchJob
from autotrain.jobs import keys, owners, scripts
from autotrain.jobs.job import Job, decode_fields, encode_fields
from autotrain.jobs.states import FINAL_STATES, JobState
from autotrain.spec import JobSpec

__all__ = ["JobStore"]


class JobStore:
    """Reads and writes job records; every process (CLI, workers, monitors) goes through it."""

    def __init__(
        self,
        client: redis.Redis,
        stream_maxlen: int = 5000,
        retention_seconds: float = 7 * 86400,
        on_final: Callable[[JobStore, Job], None] | None = None,
    ) -> None:
        """`on_final(store, job)` runs after each move that ends a job (notifications)."""
        self.redis = client
        self.stream_maxlen = stream_maxlen
        self.retention_seconds = int(retention_seconds)
        self.on_final = on_final

    # Keys (see autotrain.jobs.keys)
    key = staticmethod(keys.job)
    events_key = staticmethod(keys.job_events)
    data_key = staticmethod(keys.job_data)
    name_key = staticmethod(keys.name)
    INDEX = keys.JOBS

    # Records
    def create(self, spec: JobSpec, dispatch_until: float | None = None, **fields: Any) -> Job:
        """A new job record; raises NameInUse while another job in progress has the name.

        `dispatch_until`: the job is born owned by the queue, and the message for its first
        phase must be confirmed sent by then (else the reaper sends it).
        """
        for _ in range(10):
            job = Job(id=_new_job_id(), spec=spec, **fields)
            args: list[Any] = [job.id, job.created_at, dispatch_until or ""]
            for name, value in encode_fields(job.model_dump(mode="json")).items():
                args += [name, value]
            batch_index = keys.batch_jobs(spec.batch_id) if spec.batch_id else keys.JOBS
            index_keys = [self.key(job.id), keys.JOBS, keys.name(spec.name), keys.ACTIVE]
            outcome = scripts.CREATE(self.redis, [*index_keys, batch_index, keys.DISPATCH,
                                                  keys.profile_jobs(spec.profile), keys.INDEXED],
                                     args)  # fmt: skip
            if outcome[0] == 1:
                return job
            if outcome[0] == -1:
                raise NameInUse(spec.name, outcome[1])
        raise AutotrainError("Could not find a free job id after 10 tries; is the clock stuck?")

    def get(self, job_id: str) -> Job:
        """A job by id or unique id prefix; NoSuchJob or AmbiguousJobId when there is none."""
        raw = self.redis.hgetall(self.key(job_id))
        if not raw:
            matches = self._ids_starting_with(job_id)
            if len(matches) == 1:
                raw = self.redis.hgetall(self.key(matches[0]))
            elif len(matches) > 1:
                raise AmbiguousJobId(job_id, matches)
        if not raw:
            raise NoSuchJob(job_id)
        return Job.model_validate(decode_fields(raw))

    def _ids_starting_with(self, prefix: str) -> list[str]:
        """Ids with this prefix among the jobs in progress and the newest 10,000 (bounded)."""
        if not prefix:
            return []
        pipe = self.redis.pipeline(transaction=False)
        pipe.zrange(keys.ACTIVE, 0, -1)
        pipe.zrevrange(keys.JOBS, 0, 9999)
        found: list[str] = []
        for rows in pipe.execute():
            found += [i for i in rows if i.startswith(prefix) and i not in found]
        return found[:6]

    def page(
        self,
        *,
        states: set[JobState] | None = None,
        batch_id: str | None = None,
        profile: str | None = None,
        where: Callable[[Job], bool] | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> list[Job]:
        """Jobs newest first, one page; reads only the index that can hold them.

        A batch from its own index, a profile from its own, jobs in progress from the active
        index, the jobs that ended one way from that state's index (their sizes follow what is
        asked for, not history: a filter that matches nothing costs what one that matches does);
        everything else from the full index, a page at a time.
        """
        index = self._index_for(states, batch_id, profile)
        found: list[Job] = []
        skipped, start, chunk = 0, 0, max(limit, 100)
        while len(found) < limit:
            ids = self.redis.zrevrange(index, start, start + chunk - 1)
            if not ids:
                break
            start += chunk
            for job in self.many(ids):
                if (
                    (states is None or job.state in states)
                    and (profile is None or job.profile == profile)
                    and (where is None or where(job))
                ):
                    if skipped < offset:
                        skipped += 1
                        continue
                    found.append(job)
                    if len(found) == limit:
                        break
        return found

    def _index_for(self, states: set[JobState] | None, batch_id: str | None,
                   profile: str | None) -> str:  # fmt: skip
        if batch_id:
            return keys.batch_jobs(batch_id)
        if profile is not None:
            self._ensure_indexes()
            return keys.profile_jobs(profile)
        if states and not states & FINAL_STATES:
            return keys.ACTIVE
        if states and len(states) == 1:
            self._ensure_indexes()
            return keys.state_jobs(str(next(iter(states))))
        return keys.JOBS

    def _ensure_indexes(self) -> None:
        """Jobs made before the profile and final-state indexes existed are added to them, once:
        a store upgraded in place answers those filters in full."""
        if self.redis.exists(keys.INDEXED):
            return
        start, chunk = 0, 1000
        while ids := self.redis.zrange(keys.JOBS, start, start + chunk - 1, withscores=True):
            start += chunk
            pipe = self.redis.pipeline(transaction=False)
            for job in self.many([job_id for job_id, _ in ids]):
                created = {job.id: job.created_at}
                pipe.zadd(keys.profile_jobs(job.profile), created)
                if job.is_final:
                    pipe.zadd(keys.state_jobs(str(job.state)), created)
            pipe.execute()
        self.redis.set(keys.INDEXED, "1")

    def list(self, states: set[JobState] | None = None, batch_id: str | None = None) -> list[Job]:
        """Every matching job, newest first (a batch or the active jobs are cheap; all is not)."""
        return self.page(states=states, batch_id=batch_id, limit=10**9)

    def many(self, ids: list[str]) -> list[Job]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self.key(job_id))
        return [Job.model_validate(decode_fields(raw)) for raw in pipe.execute() if raw]

    def count_active(self) -> dict[JobState, int]:
        """Jobs in progress per state (reads the active index only)."""
        counts: dict[JobState, int] = {}
        ids = self.redis.zrange(keys.ACTIVE, 0, -1)
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self.key(job_id), "state")
        for raw in pipe.execute():
            if raw:
                state = JobState(json.loads(raw))
                counts[state] = counts.get(state, 0) + 1
        return counts

    def update(self, job_id: str, **fields: Any) -> None:
        """Set fields without touching state or owner (progress, plan...)."""
        self.redis.hset(self.key(job_id), mapping=encode_fields(fields))

    def move(
        self,
        job_id: str,
        *,
        expected: str | None,
        owner: str | None,
        state: JobState | None = None,
        lease_until: float | None = None,
        dispatch_until: float | None = None,
        lease_expired_before: float | None = None,
        **fields: Any,
    ) -> int:
        """Change a job's owner (and state, fields) atomically; see autotrain.jobs.scripts.MOVE.

        `expected` None moves whoever owns it; `owner` None keeps the owner. Returns 1 when it
        moved, 0 when the owner was not `expected`, -1 when the job is final, -2 when unknown;
        raises when `state` is not an allowed move from the job's state (states.ALLOWED).
        """
        args: list[Any] = [
            job_id,
            "*" if expected is None else json.dumps(expected),
            "*" if owner is None else json.dumps(owner),
            "" if lease_until is None else lease_until,
            "" if dispatch_until is None else dispatch_until,
            "" if lease_expired_before is None else lease_expired_before,
            max(1, self.retention_seconds),
            "" if state is None else json.dumps(str(state)),
        ]
        for name, value in encode_fields(fields).items():
            args += [name, value]
        name_key = keys.name("-")  # used only by a move to a final state (it frees the name)
        if state in FINAL_STATES and (spec := self.redis.hget(self.key(job_id), "spec")):
            name_key = keys.name(json.loads(spec)["name"])
        state_index = keys.state_jobs(str(state) if state in FINAL_STATES else "-")
        job_keys = [self.key(job_id), keys.LEASES, keys.DISPATCH, keys.ACTIVE, name_key,
                    state_index, keys.JOBS, *_bulky_keys(job_id)]  # fmt: skip
        moved = int(scripts.MOVE(self.redis, job_keys, args))
        if moved == -3:
            raise AutotrainError(
                f"Job {job_id} cannot move to {state} from {self.state(job_id)}: not an allowed "
                "move (autotrain.jobs.states.ALLOWED)."
            )
        if moved == 1 and state in FINAL_STATES:
            self._record_end(job_id)
        return moved

    def reopen(self, job_id: str, owner: str, state: JobState, dispatch_until: float,
               **fields: Any) -> None:  # fmt: skip
        """Hand a final job back to the queue (a user's retry); see autotrain.jobs.scripts.REOPEN.

        Raises NameInUse when another job in progress took its name meanwhile.
        """
        job = self.get(job_id)
        args: list[Any] = [job.id, job.created_at, dispatch_until, json.dumps(owner),
                           json.dumps(str(state))]  # fmt: skip
        for name, value in encode_fields(fields).items():
            args += [name, value]
        job_keys = [self.key(job.id), keys.ACTIVE, keys.name(job.spec.name), keys.DISPATCH,
                    *_final_indexes(), *_bulky_keys(job.id)]  # fmt: skip
        outcome = scripts.REOPEN(self.redis, job_keys, args)
        if outcome[0] == -1:
            raise NameInUse(job.spec.name, outcome[1])
        if outcome[0] != 1:
            raise JobNotFinal(
                f"Job {job.id} is {self.state(job.id)}: only a finished job can be retried."
            )

    # The history of attempts: how each started and ended (a list, appended to atomically)
    def add_history(self, job_id: str, **entry: Any) -> None:
        entry.setdefault("at", time.time())
        self.redis.rpush(keys.job_history(job_id), json.dumps(entry))

    def history(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.redis.lrange(keys.job_history(job_id), 0, -1)]

    def _record_end(self, job_id: str) -> None:
        job = self.get(job_id)
        self.add_history(job_id, attempt=job.attempt, event=str(job.state), error=job.error,
                         worker=job.worker, host=job.host, gpu=job.gpu, step=job.step,
                         total=job.total)  # fmt: skip
        if self.on_final:
            try:
                self.on_final(self, job)
            except Exception:  # noqa: BLE001 - a hook never undoes the end of a job
                logging.getLogger(__name__).exception("on_final hook failed for %s", job_id)

    def set_state(self, job_id: str, state: JobState, **fields: Any) -> bool:
        """Move to `state` whoever owns the job, unless it is final; returns whether it moved.

        Reaching a final state also clears the owner.
        """
        owner = owners.NOBODY if state in FINAL_STATES else None
        return self.move(job_id, expected=None, owner=owner, state=state, **fields) == 1

    def renew(self, job_id: str, owner: str, until: float) -> bool:
        """Extend a worker's lease; False when that worker no longer owns the job."""
        args = [job_id, json.dumps(owner), until]
        return bool(scripts.RENEW(self.redis, [self.key(job_id), keys.LEASES], args))

    def expired_leases(self, before: float, limit: int = 1000) -> list[str]:
        """Jobs whose owning worker has not renewed since `before` (cost: the expired ones)."""
        return self.redis.zrangebyscore(keys.LEASES, "-inf", before, start=0, num=limit)

    def undelivered(self, before: float, limit: int = 1000) -> list[str]:
        """Jobs handed to the queue whose message was not confirmed sent by `before`."""
        return self.redis.zrangebyscore(keys.DISPATCH, "-inf", before, start=0, num=limit)

    def state(self, job_id: str) -> JobState | None:
        raw = self.redis.hget(self.key(job_id), "state")
        return JobState(json.loads(raw)) if raw else None

    def cancel_requested(self, job_id: str) -> bool:
        return self.redis.hget(self.key(job_id), "cancel_requested") == "true"

    # Bulky per-job data kept beside the record (validation report, staging result)
    def put_data(self, job_id: str, what: str, value: dict[str, Any]) -> None:
        self.redis.set(self.data_key(job_id, what), json.dumps(value))

    def get_data(self, job_id: str, what: str) -> dict[str, Any] | None:
        raw = self.redis.get(self.data_key(job_id, what))
        return json.loads(raw) if raw else None

    # Progress stream
    def add_event(
        self, job_id: str, event: dict[str, Any], summary: dict[str, Any] | None = None
    ) -> None:
        """Append an event to the job's bounded stream and update its summary in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(
            self.events_key(job_id),
            {"e": json.dumps(event)},
            maxlen=self.stream_maxlen,
            approximate=True,
        )
        if summary:
            pipe.hset(self.key(job_id), mapping=encode_fields(summary))
        pipe.execute()

    def read_events(
        self, job_id: str, after: str = "0-0", block_ms: int | None = None, count: int = 1000
    ) -> list[tuple[str, dict[str, Any]]]:
        """Events after stream id `after`; blocks up to `block_ms` for new ones when asked."""
        if block_ms is None:
            rows = self.redis.xrange(self.events_key(job_id), min=f"({after}", count=count)
        else:
            reply = self.redis.xread({self.events_key(job_id): after}, count=count, block=block_ms)
            rows = reply[0][1] if reply else []
        return [(entry_id, json.loads(fields["e"])) for entry_id, fields in rows]

    def last_event_id(self, job_id: str) -> str:
        """The stream id of the job's newest event ("0-0" when it has none): where to follow on."""
        newest = self.redis.xrevrange(self.events_key(job_id), count=1)
        return newest[0][0] if newest else "0-0"


def _final_indexes() -> list[str]:
    return [keys.state_jobs(str(state)) for state in sorted(FINAL_STATES)]


def _bulky_keys(job_id: str) -> list[str]:
    """The keys of a job that expire once it is final (its events and bulky data)."""
    return [keys.job_events(job_id), *(keys.job_data(job_id, w) for w in keys.JOB_DATA)]


def _new_job_id() -> str:
    """Sortable by submission time and short enough to type."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
