"""What training writes reaches the store as it appears, and a state counts only once it is
whole (its marker is written last); against a real S3 server (SeaweedFS)."""

from __future__ import annotations

import pytest

from autotrain.storage.job_outputs import fetch_job_outputs
from autotrain.storage.layout import job_key, job_prefix
from autotrain.storage.objects import ObjectStore
from autotrain.storage.write_through import WriteThrough


@pytest.fixture
def store(s3_server, monkeypatch) -> ObjectStore:
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return ObjectStore(s3_server.fresh_url())


def _complete(state) -> bool:
    """The Tiny trainer's rule: a state is whole once its optimizer file is there."""
    return (state / "optimizer.pt").is_file()


def _keys(store: ObjectStore) -> set[str]:
    return {o.key.removeprefix(job_prefix("j1")) for o in store.list(job_prefix("j1"))}


def test_a_state_counts_once_it_is_whole_and_leaves_when_the_trainer_deletes_it(store, tmp_path):
    output = tmp_path / "output" / "cats"
    state = output / "model" / "cats-step00000020-state"
    state.mkdir(parents=True)
    (state / "lora.safetensors").write_bytes(b"weights")
    (output / "log").mkdir()
    (output / "log" / "trainer.log").write_text("step 20\n")
    attempt_named = output / "model" / "cats.r2-step00000004.safetensors"  # a resumed attempt's
    attempt_named.write_bytes(b"checkpoint")
    watcher = WriteThrough(store, "j1", output, _complete)
    watcher.scan(final=False)
    watcher.scan(final=False)  # settled, but not whole: no marker, its files wait
    assert "model/cats-step00000020-state/.complete" not in _keys(store)
    assert "log/trainer.log" in _keys(store)  # the log goes at once

    (state / "optimizer.pt").write_bytes(b"moments")
    watcher.scan(final=False)  # changed since the last look: not settled yet
    assert "model/cats-step00000020-state/.complete" not in _keys(store)
    watcher.scan(final=False)
    assert {"model/cats-step00000020-state/lora.safetensors",
            "model/cats-step00000020-state/optimizer.pt",
            "model/cats-step00000020-state/.complete"} <= _keys(store)  # fmt: skip

    resumed = tmp_path / "other-host" / "cats"
    fetch_job_outputs(store, "j1", resumed, states="newest")
    assert (
        resumed / "model" / "cats-step00000020-state" / "optimizer.pt"
    ).read_bytes() == b"moments"

    assert "model/cats.r2-step00000004.safetensors" in _keys(store)
    attempt_named.rename(output / "model" / "cats-step00000024.safetensors")  # folded back
    for path in state.iterdir():  # the trainer keeps the last N states: this one goes
        path.unlink()
    state.rmdir()
    (output / "model" / "cats.safetensors").write_bytes(b"final weights")
    traffic = watcher.stop()
    keys = _keys(store)
    assert not any(k.startswith("model/cats-step00000020-state") for k in keys)
    assert "model/cats.safetensors" in keys  # the final scan takes what never settled
    assert "model/cats-step00000024.safetensors" in keys  # under its true name only
    assert "model/cats.r2-step00000004.safetensors" not in keys
    assert traffic.uploaded_files >= 4 and traffic.seconds >= 0


def test_an_incomplete_state_in_the_store_is_never_brought_back(store, tmp_path):
    store.put_bytes(job_key("j1", "model/cats-step00000040-state/lora.safetensors"), b"half")
    store.put_bytes(job_key("j1", "log/trainer.log"), b"step 40\n")
    here = tmp_path / "cats"
    fetch_job_outputs(store, "j1", here, states="newest")
    assert (here / "log" / "trainer.log").read_bytes() == b"step 40\n"
    assert not (here / "model" / "cats-step00000040-state").exists()
