"""Every Redis key autotrain uses, in one place (Celery's own keys are Celery's).

| key                                  | type   | TTL            | written by                      |
|--------------------------------------|--------|----------------|---------------------------------|
| autotrain:job:<id>                   | hash   | until pruned   | JobStore (the source of truth)  |
| autotrain:job:<id>:events            | stream | retention once final | workers (progress)         |
| autotrain:job:<id>:<what>            | string | retention once final | phases (report, stage, run)|
| autotrain:job:<id>:history           | list   | until pruned   | each attempt's start and end    |
| autotrain:jobs                       | zset   | -              | every job by creation time      |
| autotrain:jobs:active                | zset   | -              | jobs not final, by creation     |
| autotrain:batch:<b>:jobs             | zset   | -              | a batch's jobs, by creation     |
| autotrain:profile:<p>:jobs           | zset   | -              | a profile's jobs, by creation   |
| autotrain:jobs:<final state>         | zset   | -              | jobs that ended so, by creation |
| autotrain:jobs:indexed               | string | -              | the two above cover every job   |
| autotrain:batch:<b>                  | hash   | -              | batch settings (max_concurrent) |
| autotrain:batch:<b>:training/parked  | set/zset | -            | batch slots                     |
| autotrain:batch:<b>:notified         | string | -              | the batch's end was announced   |
| autotrain:name:<name>                | string | -              | the job in progress owning a name |
| autotrain:leases                     | zset   | -              | job -> lease deadline (owner is a worker) |
| autotrain:dispatch                   | zset   | -              | job -> deadline to confirm a sent message |
| autotrain:workers                    | zset   | -              | worker name -> last heartbeat   |
| autotrain:worker:<name>              | string | 3 heartbeats   | the worker's description        |
| autotrain:workers:starting           | hash   | -              | host -> workers it is starting, until when |
| autotrain:worker:<name>:jobs         | zset   | a lease        | the jobs a worker trains -> until |
| autotrain:queues                     | set    | -              | broker queues workers consume   |
| autotrain:gpu:<host>:<index>         | hash   | a lease        | jobs' memory reservations on a GPU |
| autotrain:gpu:<host>:<index>:failures | string | a day         | NCCL/hardware failures seen there |
| autotrain:reaper                     | string | a reaper pass  | fleet-wide reaper lock          |
| autotrain:pace                       | hash   | -              | profile+GPU model -> measured pace |

Celery's broker queues are Redis lists too, named as below (`prep`, `prep.ongoing`, `gpu`,
`gpu.<host>.<index>`); they are defined here so that readers need not import Celery.
"""

from __future__ import annotations

__all__ = [
    "PREP_QUEUE",
    "PREP_ONGOING_QUEUE",
    "GPU_QUEUE",
    "gpu_queue_name",
    "PRIORITIES",
    "PRIORITY_SEP",
    "broker_lists",
    "PREFIX",
    "job",
    "JOB_PREFIX",
    "job_events",
    "job_data",
    "job_history",
    "JOBS",
    "ACTIVE",
    "batch_jobs",
    "batch",
    "batch_notified",
    "name",
    "LEASES",
    "DISPATCH",
    "WORKERS",
    "INDEXED",
    "profile_jobs",
    "state_jobs",
    "WORKERS_STARTING",
    "worker",
    "worker_jobs",
    "QUEUES",
    "gpu_lock",
    "gpu_failures",
    "REAPER",
    "LOST_MESSAGES",
    "KOMBU_UNACKED",
    "KOMBU_UNACKED_INDEX",
    "PACE",
    "JOB_DATA",
]

PREP_QUEUE = "prep"  # validation of new jobs
PREP_ONGOING_QUEUE = "prep.ongoing"  # phases 2, 3 and 5 of jobs under way: served first
GPU_QUEUE = "gpu"


# Priorities are kombu's Redis-transport priorities: one list per level, `<queue>` for the first
# and `<queue>\x06\x16<level>` for the others, level 0 served first (kombu/transport/redis.py,
# `_q_for_pri` and `priority_steps`). FIFO within a level.
PRIORITIES = {"high": 0, "normal": 1, "low": 2}
PRIORITY_SEP = "\x06\x16"


def broker_lists(queue: str) -> list[str]:
    """The Redis lists that hold a broker queue's messages, highest priority first."""
    return [queue if p == 0 else f"{queue}{PRIORITY_SEP}{p}" for p in sorted(PRIORITIES.values())]


def gpu_queue_name(host: str, gpu: int | str) -> str:
    """The queue of one GPU of one host (`gpu.<host>.<index>`), or of a host's CPU worker."""
    return f"{GPU_QUEUE}.{host}.{gpu}"


PREFIX = "autotrain:"
JOBS = f"{PREFIX}jobs"
JOB_PREFIX = f"{PREFIX}job:"  # every key of one job starts so: its record, events, data, history
ACTIVE = f"{PREFIX}jobs:active"
LEASES = f"{PREFIX}leases"
DISPATCH = f"{PREFIX}dispatch"
WORKERS = f"{PREFIX}workers"
INDEXED = f"{PREFIX}jobs:indexed"  # set once the profile and final-state indexes are complete
WORKERS_STARTING = f"{PREFIX}workers:starting"  # host -> the workers it starts (registry)
QUEUES = f"{PREFIX}queues"
REAPER = f"{PREFIX}reaper"
# The reaper's last look for lost messages: {"at": time, "missing": [message ids]} (reaper.py).
LOST_MESSAGES = f"{PREFIX}lost-messages"
# kombu's Redis transport keeps each message a worker fetched and has not acked yet in a hash,
# with the time it was fetched in a sorted set (its defaults, kombu/transport/redis.py Channel:
# unacked_key, unacked_index_key).
KOMBU_UNACKED = "unacked"
KOMBU_UNACKED_INDEX = "unacked_index"
PACE = f"{PREFIX}pace"  # profile and GPU model -> measured pace (autotrain.fleet.pace)
JOB_DATA = ("report", "stage", "run")  # bulky per-job data beside the record


def job(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def job_events(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:events"


def job_data(job_id: str, what: str) -> str:
    return f"{PREFIX}job:{job_id}:{what}"


def job_history(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}:history"


def batch(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}"


def batch_notified(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}:notified"


def batch_jobs(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}:jobs"


def name(dataset_name: str) -> str:
    return f"{PREFIX}name:{dataset_name}"


def profile_jobs(profile: str) -> str:
    """A profile's jobs by creation time: a filter by profile reads only these."""
    return f"{PREFIX}profile:{profile}:jobs"


def state_jobs(state: str) -> str:
    """The jobs that ended in final `state`, by creation time (JobStore.move keeps it)."""
    return f"{PREFIX}jobs:{state}"


def worker(worker_name: str) -> str:
    return f"{PREFIX}worker:{worker_name}"


def host_drain(host: str) -> str:
    """Set while a host's workers give their jobs back and stop (SIGTERM, `worker --drain`)."""
    return f"{PREFIX}drain:{host}"


def worker_jobs(worker_name: str) -> str:
    """The jobs a worker trains (several when packed), each scored by when its mark expires."""
    return f"{PREFIX}worker:{worker_name}:jobs"


def gpu_lock(host: str, gpu: int) -> str:
    return f"{PREFIX}gpu:{host}:{gpu}"


def gpu_failures(host: str, gpu: int | str) -> str:
    return f"{PREFIX}gpu:{host}:{gpu}:failures"
