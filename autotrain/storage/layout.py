"""Every key autotrain writes in the store, under the prefix of `storage_url`.

blobs/sha256/<ab>/<sha256>            one file's content, named by its hash (datasets)
datasets/<name>/<digest>.json         a staged dataset: relpath -> sha256 and size
jobs/<job id>/<relpath>               what a job wrote in output/<name>/, as it appeared
jobs/<job id>/<state>/.complete       written last: the state above it is whole
"""

from __future__ import annotations

__all__ = [
    "blob_key",
    "dataset_key",
    "job_prefix",
    "job_key",
    "state_marker_key",
    "STATE_MARKER",
]

STATE_MARKER = ".complete"


def blob_key(sha256: str) -> str:
    return f"blobs/sha256/{sha256[:2]}/{sha256}"


def dataset_key(name: str, digest: str) -> str:
    return f"datasets/{name}/{digest}.json"


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def job_key(job_id: str, relpath: str) -> str:
    """`relpath` is relative to the job's output folder, with '/' separators."""
    return job_prefix(job_id) + relpath


def state_marker_key(job_id: str, state_relpath: str) -> str:
    return job_key(job_id, f"{state_relpath}/{STATE_MARKER}")
