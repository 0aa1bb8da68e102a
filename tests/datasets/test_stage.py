"""Phase 2: the staged copy is whole or absent, matches its manifest, and dry runs touch nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import autotrain.datasets.atomic_copy as atomic_copy
from autotrain.datasets.manifest import MANIFEST_NAME, read_manifest
from autotrain.datasets.stage import StageResult, stage_dataset
from autotrain.datasets.validate import ValidationReport, validate_dataset
from autotrain.errors import StagingError, ValidationError
from autotrain.spec import JobSpec
from autotrain.workspace import Workspace
from tests.helpers_datasets import (
    make_dataset,
    snapshot,
    test_settings,
    tiny_profile,
    write_image,
    write_truncated,
)


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path / "ws")


@pytest.fixture
def profile(tmp_path):
    return tiny_profile(tmp_path, min_resolution=8)


@pytest.fixture
def dataset(tmp_path) -> Path:
    """Root images, a repeat folder, a bad image with a caption, junk and a stray file."""
    ds = make_dataset(tmp_path / "cats", 3)
    make_dataset(ds / "10_ohwx cat", 2, prefix="cat")
    write_truncated(ds / "broken.png")
    (ds / "broken.txt").write_text("caption of a broken image")
    (ds / ".DS_Store").write_text("junk")
    (ds / "notes.md").write_text("stray")
    return ds


def validate(ds: Path, ws: Workspace, profile, name: str = "cats") -> ValidationReport:
    spec = JobSpec.for_dataset(ds, "Tiny", name=name)
    return validate_dataset(spec, test_settings(ws.root), profile)


STAGED = [
    "10_ohwx cat/cat_000.png",
    "10_ohwx cat/cat_000.txt",
    "10_ohwx cat/cat_001.png",
    "10_ohwx cat/cat_001.txt",
    "img_000.png",
    "img_000.txt",
    "img_001.png",
    "img_001.txt",
    "img_002.png",
    "img_002.txt",
]


def test_stages_valid_files_with_manifest_and_output_folders(dataset, ws, profile):
    result = stage_dataset(validate(dataset, ws, profile), ws)
    staged = ws.input_dir("cats")
    assert result.action == "copied" and result.staged_dir == staged
    assert result.files == STAGED and result.files_copied == len(STAGED)
    on_disk = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
    assert on_disk == sorted([*STAGED, MANIFEST_NAME])
    for relpath in STAGED:
        assert (staged / relpath).read_bytes() == (dataset / relpath).read_bytes()
    manifest = read_manifest(staged)
    assert manifest and manifest["source"] == str(dataset)
    for entry in manifest["files"]:
        data = (staged / entry["path"]).read_bytes()
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert ws.model_dir("cats").is_dir() and ws.log_dir("cats").is_dir()
    skipped = dict(result.skipped)
    assert "truncated" in skipped["broken.png"]
    assert set(skipped) >= {"broken.txt", ".DS_Store", "notes.md"}
    assert [p.name for p in ws.input_root.iterdir()] == ["cats"]  # no temp folders left
    assert StageResult.model_validate_json(result.model_dump_json()) == result


@pytest.mark.parametrize("fail_at", [1, 6])
def test_failure_mid_copy_leaves_nothing(dataset, ws, profile, monkeypatch, fail_at):
    real_copy, calls = atomic_copy._copy_file, []

    def failing_copy(source, tmp, record):
        calls.append(record.relpath)
        if len(calls) == fail_at:
            raise OSError(28, "No space left on device")
        return real_copy(source, tmp, record)

    monkeypatch.setattr(atomic_copy, "_copy_file", failing_copy)
    with pytest.raises(
        StagingError, match="The workspace filesystem .* is full.*nothing was staged"
    ):
        stage_dataset(validate(dataset, ws, profile), ws)
    assert list(ws.input_root.iterdir()) == []
    assert not ws.output_dir("cats").exists()


def test_file_removed_after_validation_is_named_and_nothing_staged(dataset, ws, profile):
    report = validate(dataset, ws, profile)
    (dataset / "img_001.png").unlink()
    with pytest.raises(StagingError, match="img_001.png"):
        stage_dataset(report, ws)
    assert list(ws.input_root.iterdir()) == []


def test_file_changed_after_validation_is_refused(dataset, ws, profile):
    report = validate(dataset, ws, profile)
    write_image(dataset / "img_002.png", colour="white", seed=99)
    with pytest.raises(StagingError, match="img_002.png changed after validation"):
        stage_dataset(report, ws)
    assert list(ws.input_root.iterdir()) == []


def test_identical_existing_copy_is_reused_untouched(dataset, ws, profile):
    report = validate(dataset, ws, profile)
    stage_dataset(report, ws)
    before = snapshot(ws.root)
    again = stage_dataset(validate(dataset, ws, profile), ws)
    assert again.action == "reused" and again.files_copied == 0
    assert snapshot(ws.root) == before
    assert stage_dataset(report, ws, skip_copy=True).action == "reused"


def test_differing_copy_needs_a_flag_and_is_left_alone(dataset, ws, profile):
    stage_dataset(validate(dataset, ws, profile), ws)
    before = snapshot(ws.root)
    make_dataset(dataset, 1, start=7)  # the source gained an image since it was staged
    report = validate(dataset, ws, profile)
    with pytest.raises(StagingError, match="--force") as info:
        stage_dataset(report, ws)
    assert "--skip-copy" in str(info.value) and "img_007.png" in str(info.value)
    with pytest.raises(StagingError, match="--skip-copy: the staged copy .* does not match"):
        stage_dataset(report, ws, skip_copy=True)
    assert snapshot(ws.root) == before


def test_force_replaces_the_copy_whole(dataset, ws, profile):
    stage_dataset(validate(dataset, ws, profile), ws)
    (dataset / "img_000.png").unlink()
    (dataset / "img_000.txt").unlink()
    result = stage_dataset(validate(dataset, ws, profile), ws, force=True)
    staged = ws.input_dir("cats")
    assert result.action == "replaced"
    assert not (staged / "img_000.png").exists() and (staged / "img_001.png").exists()
    assert [e["path"] for e in read_manifest(staged)["files"]] == STAGED[:4] + STAGED[6:]
    assert [p.name for p in ws.input_root.iterdir()] == ["cats"]


def test_copy_not_made_by_autotrain_or_tampered_is_not_reused(dataset, ws, profile):
    report = validate(dataset, ws, profile)
    shutil.copytree(dataset, ws.input_dir("cats"))  # by hand: no manifest
    with pytest.raises(StagingError, match="no readable .autotrain-manifest.json"):
        stage_dataset(report, ws)
    assert stage_dataset(report, ws, force=True).action == "replaced"
    (ws.input_dir("cats") / "img_001.png").write_bytes(b"edited")
    with pytest.raises(StagingError, match="changed after staging: img_001.png"):
        stage_dataset(report, ws, skip_copy=True)


def test_dry_run_changes_nothing(dataset, ws, profile):
    report = validate(dataset, ws, profile)
    assert snapshot(ws.root) == {}
    result = stage_dataset(report, ws, dry_run=True)
    assert not ws.root.exists()
    assert result.action == "would-copy" and result.dry_run and result.files == STAGED
    assert result.files_copied == len(STAGED) and "broken.png" in dict(result.skipped)

    stage_dataset(report, ws)
    before = snapshot(ws.root)
    assert stage_dataset(report, ws, dry_run=True).action == "would-reuse"
    assert stage_dataset(report, ws, force=True, dry_run=True).action == "would-replace"
    make_dataset(dataset, 1, start=7)
    with pytest.raises(StagingError, match="--force"):
        stage_dataset(validate(dataset, ws, profile), ws, dry_run=True)
    assert snapshot(ws.root) == before


def test_min_images_counts_valid_images_only(dataset, ws, profile):
    report = validate(dataset, ws, profile)
    with pytest.raises(StagingError) as info:
        stage_dataset(report, ws, min_images=10)
    message = str(info.value)
    assert "Only 5 valid images" in message and "--min-images is 10" in message
    assert "1 unusable" in message and str(dataset) in message
    assert not ws.root.exists()
    assert stage_dataset(report, ws, min_images=5).action == "copied"


def test_fatal_report_is_not_staged(tmp_path, ws, profile):
    ds = tmp_path / "ds"
    write_truncated(ds / "only.png")
    with pytest.raises(ValidationError, match="only.png"):
        stage_dataset(validate(ds, ws, profile, name="ds"), ws)
    assert not ws.root.exists()


def test_dataset_already_in_input_is_used_in_place(ws, profile):
    staged = make_dataset(ws.input_root / "cats", 2)
    before = {p.name: p.read_bytes() for p in staged.iterdir()}
    result = stage_dataset(validate(staged, ws, profile), ws, force=True)
    assert result.action == "in-place" and any("--force ignored" in n for n in result.notes)
    assert {p.name: p.read_bytes() for p in staged.iterdir() if p.name != MANIFEST_NAME} == before
    assert len(json.loads((staged / MANIFEST_NAME).read_text())["files"]) == 4


def test_report_with_escaping_path_is_refused(dataset, ws, profile):
    report = validate(dataset, ws, profile)
    report.images[0].relpath = "../../outside.png"
    with pytest.raises(StagingError, match="not a path inside the dataset"):
        stage_dataset(report, ws)
    assert not ws.root.exists()


def test_force_replaces_a_stray_file_and_reports_progress(dataset, ws, profile):
    report = validate(dataset, ws, profile)
    ws.input_root.mkdir(parents=True)
    ws.input_dir("cats").write_text("not a folder")
    with pytest.raises(StagingError, match="--force"):
        stage_dataset(report, ws)
    seen = []
    result = stage_dataset(report, ws, force=True, progress=lambda d, t: seen.append((d, t)))
    assert result.action == "replaced" and ws.input_dir("cats").is_dir()
    assert seen[-1] == (len(STAGED), len(STAGED))
    assert [p.name for p in ws.input_root.iterdir()] == ["cats"]


def test_an_exif_rotated_photo_is_staged_upright_and_reused(tmp_path, ws, profile):
    """sd-scripts never applies EXIF orientation: the staged copy holds the turned pixels."""
    from PIL import Image

    from tests.helpers_datasets import write_exif_rotated

    ds = make_dataset(tmp_path / "phone", 1)
    write_exif_rotated(ds / "photo.jpg", (96, 48), orientation=6)
    source = (ds / "photo.jpg").read_bytes()
    result = stage_dataset(validate(ds, ws, profile, "phone"), ws)
    assert "photo.jpg: staged upright (EXIF orientation 6, which sd-scripts ignores)" in (
        result.notes
    )
    with Image.open(ws.input_dir("phone") / "photo.jpg") as staged:
        assert staged.size == (48, 96) and staged.format == "JPEG"
        assert staged.getexif().get(0x0112) in (None, 1)
    assert (ds / "photo.jpg").read_bytes() == source  # the user's file is untouched
    again = stage_dataset(validate(ds, ws, profile, "phone"), ws)
    assert again.action == "reused", again.notes


def test_rotated_photos_are_named_in_a_dry_run_and_refused_in_place(tmp_path, ws, profile):
    from tests.helpers_datasets import write_exif_rotated

    ds = make_dataset(tmp_path / "phone", 1)
    write_exif_rotated(ds / "photo.jpg", (96, 48), orientation=8)
    dry = stage_dataset(validate(ds, ws, profile, "phone"), ws, dry_run=True)
    assert "photo.jpg: would stage upright (EXIF orientation 8, which sd-scripts ignores)" in (
        dry.notes
    )
    in_place = ws.input_dir("phone")
    shutil.copytree(ds, in_place)
    with pytest.raises(StagingError, match=r"cannot be turned upright.*photo\.jpg"):
        stage_dataset(validate(in_place, ws, profile, "phone"), ws)
