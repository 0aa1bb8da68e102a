"""Datasets travel once: staged where they are submitted, uploaded content-addressed, and
downloaded by the other hosts checked against their hashes (a real S3 server, SeaweedFS)."""

from __future__ import annotations

import json

import pytest

from autotrain.storage.dataset_copy import fetch_dataset, upload_dataset
from autotrain.storage.layout import blob_key
from autotrain.storage.objects import ObjectStore, StorageError
from autotrain.workspace import Workspace
from tests.conftest import copy_example


@pytest.fixture
def store_env(cluster, s3_server, monkeypatch):
    """The cluster's workspace and this process, both pointed at a fresh prefix of the store."""
    url = s3_server.fresh_url()
    cluster.env.update(s3_server.env, AUTOTRAIN_STORAGE_URL=url)
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return url


def _submit_uploads(cluster, dataset, *extra: str) -> int:
    """`pipeline run` through the store; returns how many files it says it uploaded."""
    run = cluster.cli("pipeline", "run", "--dataset-path", str(dataset), "--profile", "TinyTest",
                      *extra, check=True)  # fmt: skip
    line = next(x for x in run.stdout.splitlines() if x.startswith("Dataset in the store"))
    job_id = next(w for w in run.stdout.split() if w.count("-") == 2 and w[:8].isdigit())
    show = json.loads(cluster.cli("train", "show", "--job", job_id, "--json", check=True).stdout)
    uploaded = show["storage"]["phases"]["submit"]["uploaded_files"]
    assert f"{uploaded} files uploaded" in line
    cluster.cli("train", "cancel", "--job", job_id, check=True)  # frees the dataset's name
    return uploaded


def test_a_dataset_submitted_twice_unchanged_uploads_nothing_the_second_time(
    cluster, store_env, tmp_path
):
    dataset = copy_example(tmp_path)
    first = _submit_uploads(cluster, dataset)
    assert first >= 9  # 8 images, their captions, the staging manifest (and the listing)
    assert _submit_uploads(cluster, dataset) == 0
    (dataset / "shape_00.txt").write_text("a blue circle, drawn again")
    # the changed caption, the staging manifest that names its new hash, and a new listing
    assert _submit_uploads(cluster, dataset, "--force") == 3


@pytest.fixture
def uploaded(s3_server, tmp_path, monkeypatch):
    """The example dataset staged in a submitter's workspace and uploaded: (store, its workspace,
    the upload)."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    store = ObjectStore(s3_server.fresh_url())
    submitter = Workspace(tmp_path / "submitter")
    copy_example(submitter.input_root)
    return store, submitter, upload_dataset(store, submitter, "tiny_shapes")


def test_a_file_damaged_in_the_store_is_refused_on_download(uploaded, tmp_path):
    store, _submitter, upload = uploaded
    listing = json.loads(store.get_bytes(upload.key))
    caption = next(e for e in listing["files"] if e["path"].endswith(".txt"))
    store.put_bytes(blob_key(caption["sha256"]), b"not the caption that was uploaded")

    other = Workspace(tmp_path / "gpu-host")
    with pytest.raises(StorageError) as refused:
        fetch_dataset(store, other, "tiny_shapes", upload.key)
    assert caption["path"] in str(refused.value) and "damaged" in str(refused.value)
    assert not other.input_dir("tiny_shapes").exists()  # nothing half-made in its place


def test_a_second_host_downloads_the_dataset_once(uploaded, tmp_path):
    store, submitter, upload = uploaded
    other = Workspace(tmp_path / "gpu-host")
    first = fetch_dataset(store, other, "tiny_shapes", upload.key)
    assert first.downloaded_files == upload.files + 1  # each file, and the listing
    staged = sorted(p.name for p in other.input_dir("tiny_shapes").iterdir())
    assert staged == sorted(p.name for p in submitter.input_dir("tiny_shapes").iterdir())
    assert fetch_dataset(store, other, "tiny_shapes", upload.key).downloaded_files == 0


def test_a_wrong_secret_key_is_said_before_anything_is_queued(cluster, store_env, tmp_path):
    cluster.env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    run = cluster.cli("pipeline", "run", "--dataset-path", str(copy_example(tmp_path)),
                      "--profile", "TinyTest")  # fmt: skip
    assert run.returncode != 0
    assert store_env in run.stderr and "AWS_SECRET_ACCESS_KEY" in run.stderr
    assert "Traceback" not in run.stderr
    assert "Queued" not in run.stdout and not cluster.store().list()
