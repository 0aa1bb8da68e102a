"""The object store that hosts of a fleet share instead of a shared folder (`storage_url`).

Each host keeps its own workspace as a cache; what other hosts need travels through an
S3-compatible store: staged datasets (content-addressed, `dataset_copy`), what training writes
(as it appears, `write_through`), and a job's outputs for any host that asks (`job_outputs`).
`objects` is the client and its traffic count, `layout` names every key.
"""
