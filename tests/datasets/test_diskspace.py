"""A full workspace disk, on a real small filesystem (a tmpfs mounted for the test): the
pre-check counts what staging really writes, and a disk that fills mid-copy is named."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from autotrain.datasets.stage import stage_dataset
from autotrain.datasets.validate import validate_dataset
from autotrain.errors import StagingError
from autotrain.spec import JobSpec
from autotrain.workspace import Workspace
from tests.helpers_datasets import make_dataset, snapshot, test_settings, tiny_profile


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 256 KiB tmpfs: room for 64 blocks of 4 KiB."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def many_small_files(tmp_path) -> Path:
    """40 tiny images and captions: about 10 KB of bytes, but 80 files of one block each."""
    return make_dataset(tmp_path / "smalls", 40, size=(8, 8))


def _validate(dataset: Path, workspace: Path, **spec_options):
    spec = JobSpec.for_dataset(dataset, "Tiny", name="smalls", **spec_options)
    profile = tiny_profile(None, disk_gb=0, min_resolution=8)
    return validate_dataset(spec, test_settings(workspace), profile)


@pytest.mark.parametrize("skip_copy", [False, True])
def test_the_precheck_counts_whole_blocks_and_skip_copy_with_nothing_staged(
    small_disk, many_small_files, skip_copy
):
    byte_count = sum(p.stat().st_size for p in many_small_files.iterdir())
    assert byte_count < 64 * 1024, "the bytes alone would fit: only the blocks do not"
    report = _validate(many_small_files, small_disk / "ws", skip_copy=skip_copy)
    (reason,) = [f for f in report.fatal if "Insufficient disk space" in f]
    assert f"on the workspace filesystem {small_disk}:" in reason
    assert "staged copy 331.8 kB" in reason  # 81 blocks of 4 KiB: the files and their folder
    assert "free 262.1 kB" in reason and "AUTOTRAIN_WORKSPACE" in reason


def test_a_disk_that_fills_while_staging_is_named_and_nothing_is_left(
    small_disk, many_small_files, tmp_path
):
    workspace = Workspace(small_disk / "ws")
    report = _validate(many_small_files, workspace.root)
    report.fatal = [f for f in report.fatal if "Insufficient disk space" not in f]
    before = snapshot(small_disk)
    with pytest.raises(StagingError) as error:
        stage_dataset(report, workspace)
    message = str(error.value)
    assert f"The workspace filesystem {small_disk} is full" in message
    assert str(many_small_files) not in message, "the source dataset is not what filled"
    assert "needs 331.8 kB (80 files)" in message and "nothing was staged" in message
    after = snapshot(small_disk)
    assert {p for p in after if "smalls" in p} == set(), f"half-staged files left: {after}"
    assert set(after) - set(before) <= {"ws", "ws/input"}, after
