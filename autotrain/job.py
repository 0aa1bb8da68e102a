"""Jobs: the unit users see, stored in Redis as the source of truth for state and progress.

Celery task states are an implementation detail; every command reads the job record instead.
Each job is a hash `autotrain:job:<id>` (fields JSON-encoded), listed in the sorted set
`autotrain:jobs`, with its progress events in the stream `autotrain:job:<id>:events`.
"""

from __future__ import annotations

import json
import secrets
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

import redis
from pydantic import BaseModel, Field

from autotrain.connection import KEY_PREFIX
from autotrain.errors import AutotrainError
from autotrain.spec import JobSpec

__all__ = ["Job", "JobState", "JobStore", "FINAL_STATES", "NameInUse"]


class JobState(StrEnum):
    QUEUED = "queued"
    VALIDATING = "validating"
    PREPARING = "preparing"
    CONFIGURING = "configuring"
    WAITING_GPU = "waiting_gpu"
    TRAINING = "training"
    REPORTING = "reporting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class Job(BaseModel):
    """A job record as users see it in `train list`, `train monitor` and the SDK."""

    id: str
    spec: JobSpec
    state: JobState = JobState.QUEUED
    attempt: int = 0
    host: str | None = None
    gpu: str | None = None
    worker: str | None = None  # the worker of the current (or last) phase
    train_worker: str | None = None  # the worker that ran (or runs) the trainer
    step: int = 0
    total: int | None = None
    loss: float | None = None
    rate: float | None = None
    eta_seconds: float | None = None
    epoch: int | None = None
    epochs: int | None = None
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    training_started_at: float | None = None
    training_finished_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    cancel_requested: bool = False
    queue: str | None = None
    task_ids: list[str] = Field(default_factory=list)
    plan: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    samples: list[str] = Field(default_factory=list)
    files: list[int] | None = None  # [done, total] of the phase checking or copying files

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def profile(self) -> str:
        return self.spec.profile

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.step / self.total)


_FINAL_JSON = "{['\"succeeded\"']=1, ['\"failed\"']=1, ['\"cancelled\"']=1}"

# KEYS: job hash, index, name key. ARGV: job id, created_at, then field/value pairs.
# Refuses an id that exists (never merge two jobs) and a name a job in progress holds; returns
# {1} when created, {0} on an id collision, {-1, holder} when the name is taken.
_CREATE = (
    "local final = "
    + _FINAL_JSON
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[1] then
  local state = redis.call('HGET', KEYS[1]:sub(1, #KEYS[1] - #ARGV[1]) .. holder, 'state')
  if state and not final[state] then return {-1, holder} end
end
redis.call('SET', KEYS[3], ARGV[1])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return {1}
"""
)

# KEYS: job hash, name key. ARGV: 'force' or '-', job id, then field/value pairs.
# Refuses to move a job out of a final state (a cancelled job never restarts); a job that becomes
# final lets go of its dataset name.
_SET_STATE = (
    "local final = "
    + _FINAL_JSON
    + """
local current = redis.call('HGET', KEYS[1], 'state')
if not current then return -1 end
if final[current] and ARGV[1] ~= 'force' then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local now = redis.call('HGET', KEYS[1], 'state')
if final[now] and redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
return 1
"""
)


class NameInUse(AutotrainError):
    """Another job still in progress trains a dataset of this name."""

    def __init__(self, name: str, holder: str) -> None:
        self.name, self.holder = name, holder
        super().__init__(
            f"Dataset name {name!r} is in use by job {holder}, which is still in progress: two "
            f"jobs would write the same output/{name}/. Wait for it to finish, cancel it "
            f"(`autotrain train cancel --job {holder}`), or pass --dataset-name to train this "
            "one under another name."
        )


class JobStore:
    """Reads and writes job records; every process (CLI, workers, monitors) goes through it."""

    def __init__(self, client: redis.Redis, stream_maxlen: int = 5000) -> None:
        self.redis = client
        self.stream_maxlen = stream_maxlen
        self._set_state = client.register_script(_SET_STATE)
        self._create = client.register_script(_CREATE)

    # Keys
    @staticmethod
    def key(job_id: str) -> str:
        return f"{KEY_PREFIX}job:{job_id}"

    @staticmethod
    def events_key(job_id: str) -> str:
        return f"{KEY_PREFIX}job:{job_id}:events"

    @staticmethod
    def data_key(job_id: str, what: str) -> str:
        return f"{KEY_PREFIX}job:{job_id}:{what}"

    INDEX = f"{KEY_PREFIX}jobs"

    @staticmethod
    def name_key(name: str) -> str:
        """The job in progress that owns `output/<name>/` (held from submit until final)."""
        return f"{KEY_PREFIX}name:{name}"

    # Records
    def create(self, spec: JobSpec, **fields: Any) -> Job:
        """A new job record; raises NameInUse while another job in progress has the name."""
        for _ in range(10):
            job = Job(id=_new_job_id(), spec=spec, **fields)
            args: list[Any] = [job.id, job.created_at]
            for name, value in _encode(job.model_dump(mode="json")).items():
                args += [name, value]
            keys = [self.key(job.id), self.INDEX, self.name_key(spec.name)]
            outcome = self._create(keys=keys, args=args)
            if outcome[0] == 1:
                return job
            if outcome[0] == -1:
                raise NameInUse(spec.name, outcome[1])
        raise AutotrainError("Could not find a free job id after 10 tries; is the clock stuck?")

    def get(self, job_id: str) -> Job:
        """A job by id or unique id prefix; a clear error when there is none."""
        raw = self.redis.hgetall(self.key(job_id))
        if not raw:
            matches = [j for j in self.redis.zrange(self.INDEX, 0, -1) if j.startswith(job_id)]
            if len(matches) == 1:
                raw = self.redis.hgetall(self.key(matches[0]))
            elif len(matches) > 1:
                raise AutotrainError(f"Job id {job_id!r} is ambiguous: {', '.join(matches[:5])}")
        if not raw:
            raise AutotrainError(f"No job with id {job_id!r}. See `autotrain train list`.")
        return Job.model_validate(_decode(raw))

    def list(self, states: set[JobState] | None = None, batch_id: str | None = None) -> list[Job]:
        ids = self.redis.zrange(self.INDEX, 0, -1)
        pipe = self.redis.pipeline()
        for job_id in ids:
            pipe.hgetall(self.key(job_id))
        jobs = [Job.model_validate(_decode(raw)) for raw in pipe.execute() if raw]
        return [
            j
            for j in jobs
            if (states is None or j.state in states)
            and (batch_id is None or j.spec.batch_id == batch_id)
        ]

    def update(self, job_id: str, **fields: Any) -> None:
        """Set fields without touching state (progress, host, plan...)."""
        self.redis.hset(self.key(job_id), mapping=_encode(fields))

    def set_state(
        self, job_id: str, state: JobState, *, force: bool = False, **fields: Any
    ) -> bool:
        """Move to `state` unless the job is already final; returns whether it moved."""
        values = _encode({"state": state, **fields})
        args: list[str] = ["force" if force else "-", job_id]
        for name, value in values.items():
            args += [name, value]
        name = self.redis.hget(self.key(job_id), "spec")
        name_key = self.name_key(json.loads(name)["name"]) if name else self.name_key("-")
        return self._set_state(keys=[self.key(job_id), name_key], args=args) == 1

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
            pipe.hset(self.key(job_id), mapping=_encode(summary))
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


def _new_job_id() -> str:
    """Sortable by submission time and short enough to type."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    return {name: json.dumps(_jsonable(value)) for name, value in fields.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, StrEnum | Path):
        return str(value)
    return value


def _decode(raw: dict[str, str]) -> dict[str, Any]:
    return {name: json.loads(value) for name, value in raw.items()}
