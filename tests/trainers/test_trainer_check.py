"""The trainer as the judge: sd-scripts' own dataset code checks what phase 3 wrote.

Here sd-scripts is the stand-in (tests/standins/sd_scripts/library/, its dataset code copied from
sd-scripts 48d368fa); tests/trainers/test_real_sd_scripts.py runs the same check on the real one. Every
dataset is made of real files, staged and configured by autotrain's own phases 1-3.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from autotrain.errors import ValidationError
from autotrain.jobs.job import JobState
from autotrain.pipeline import prepare_pipeline
from autotrain.profile import load_profile
from autotrain.spec import JobSpec
from autotrain.trainers.plan import TrainPlan
from autotrain.trainers.trainer_check import ask_the_trainer, trainer_check_unavailable
from autotrain.worker.judge import judge_before_training
from autotrain.workspace import Workspace
from tests.conftest import wait_for
from tests.helpers_kohya import STANDIN

PROFILE = "FluxLORA"  # built in: resolution 1024, bucket_no_upscale, bucket step 64


def _image(path: Path, size: tuple[int, int] = (128, 96), caption: bytes | None = b"") -> None:
    Image.new("RGB", size, (200, 30, 30)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_bytes(caption)


def _clean(folder: Path) -> Path:
    folder.mkdir(parents=True)
    _image(folder / "red.png", caption=b"a red square")
    _image(folder / "wide.png", (256, 128), caption="a wide caf\u00e9 sign".encode())
    _image(folder / "plain.png", caption=None)  # no caption: the class tokens
    return folder


@pytest.fixture
def settings(kohya_settings):
    return kohya_settings


def test_every_file_the_trainer_would_reject_is_named_with_its_fix(tmp_path, settings):
    data = _clean(tmp_path / "cats")
    _image(data / "empty.png", caption=b"")  # 0 bytes: sd-scripts asserts
    _image(data / "legacy.png", caption="caf\u00e9 au lait".encode("cp1252"))  # not UTF-8
    _image(data / "thin.png", (200, 40), caption=b"a thin strip")  # 40 px rounds to a 0 px bucket

    with pytest.raises(ValidationError) as failure:
        prepare_pipeline(data, PROFILE, settings=settings)

    message = str(failure.value)
    assert "would reject dataset 'cats'" in message
    assert f"{data / 'empty.txt'}: an empty caption file (0 bytes)" in message
    assert "caption file is empty" in message
    assert f"{data / 'legacy.txt'}: not UTF-8 (byte 0xe9 at offset 3)" in message
    assert "re-save it as UTF-8" in message
    assert f"{data / 'thin.png'}: 200x40: with bucket_no_upscale" in message
    assert "turn off bucket_no_upscale" in message
    for fine in ("red", "wide", "plain"):
        assert f"{fine}." not in message
    staged = Workspace(settings.workspace).input_dir("cats")
    assert str(staged) not in message  # named as the user spelled them, not as staged


def test_what_the_trainer_reads_differently_is_a_warning_per_file(tmp_path, settings):
    data = _clean(tmp_path / "dogs")
    _image(data / "multi.png", caption=b"a dog on a lawn\nsunny afternoon, 35mm\n")
    _image(data / "blank.png", caption=b"  \n\t\n")
    _image(data / "bom.png", caption="\ufeffa dog with a bom".encode())

    result = prepare_pipeline(data, PROFILE, settings=settings)

    warnings = {p.path: p.reason for p in result.report.warnings}
    assert "has 2 lines: the trainer trains on its first line only" in warnings["multi.txt"]
    assert '("a dog on a lawn")' in warnings["multi.txt"]
    assert (
        "trains this image with an empty caption, not with the class tokens"
        in (warnings["blank.txt"])
    )
    assert "byte order mark" in warnings["bom.txt"]
    assert len(result.plan.trainer_warnings) == 3
    assert result.plan.trainer_warnings[0].startswith(str(data))
    assert result.plan.trainer_check_deferred is None


def test_a_clean_dataset_is_accepted_with_the_captions_the_trainer_reads(tmp_path, settings):
    data = _clean(tmp_path / "birds")
    result = prepare_pipeline(data, PROFILE, settings=settings)
    profile = load_profile(PROFILE, Workspace(settings.workspace).templates_dir)
    staged = Workspace(settings.workspace).input_dir("birds")

    check = ask_the_trainer(result.plan, profile, settings, staged, data)

    assert check.available and check.accepted, check
    assert check.images == 3
    assert check.captions == {
        "red.png": "a red square",
        "wide.png": "a wide caf\u00e9 sign",
        "plain.png": "birds",  # the class tokens, as sd-scripts fills in a missing caption
    }
    assert check.warnings == [] and result.plan.trainer_warnings == []


def test_without_sd_scripts_library_the_check_waits_for_the_train_phase(tmp_path, settings):
    bare = tmp_path / "sd-scripts-without-library"
    shutil.copytree(STANDIN, bare, ignore=shutil.ignore_patterns("library", "__pycache__"))
    data = _clean(tmp_path / "owls")
    _image(data / "empty.png", caption=b"")
    prep = settings.model_copy(update={"sd_scripts_dir": bare})
    profile = load_profile(PROFILE, Workspace(settings.workspace).templates_dir)
    assert "library/ is missing" in trainer_check_unavailable(profile, prep)

    result = prepare_pipeline(data, PROFILE, settings=prep)  # the prep host cannot ask
    plan = TrainPlan.model_validate(result.plan.model_dump(mode="json"))  # as the job stores it
    assert "library/ is missing" in plan.trainer_check_deferred

    spec = JobSpec.for_dataset(data, PROFILE)
    with pytest.raises(ValidationError) as failure:  # the GPU host can: refused before training
        judge_before_training(spec, plan, profile, settings)
    assert f"{data / 'empty.txt'}: an empty caption file" in str(failure.value)
    assert (
        not (plan.log_dir / "trainer.log").exists()
        or "step" not in (plan.log_dir / "trainer.log").read_text()
    )


def test_tiny_profiles_keep_autotrains_own_checks(tmp_path, settings):
    data = _clean(tmp_path / "newts")
    _image(data / "empty.png", caption=b"")
    result = prepare_pipeline(data, "Tiny", settings=settings)
    assert result.plan.trainer_check_deferred is None
    assert result.plan.trainer_warnings == []
    assert any("captions are empty" in p.reason for p in result.report.warnings)


@pytest.mark.slow
def test_a_queued_job_the_trainer_would_reject_fails_at_configure(cluster, tmp_path):
    """Refused on the prep host, before the job waits for a GPU; every file is named."""
    for name in ("flux_model", "clip_l", "t5xxl", "ae"):
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(len(b"{}  ").to_bytes(8, "little") + b"{}  ")
        cluster.env[f"AUTOTRAIN_{name.upper()}"] = str(path)
    cluster.env["AUTOTRAIN_SD_SCRIPTS_DIR"] = str(STANDIN)
    cluster.env["AUTOTRAIN_SD_SCRIPTS_PYTHON"] = sys.executable
    data = _clean(tmp_path / "geese")
    _image(data / "empty.png", caption=b"")
    _image(data / "legacy.png", caption="na\u00efve".encode("cp1252"))
    cluster.start_worker("h1")
    job_id = cluster.submit(data, profile=PROFILE)
    store = cluster.store()
    wait_for(lambda: store.get(job_id).is_final, 90, "the job to end")
    job = store.get(job_id)
    assert job.state == JobState.FAILED
    assert job.phase == "configure" and job.training_started_at is None
    assert f"{data / 'empty.txt'}: an empty caption file" in job.error
    assert f"{data / 'legacy.txt'}: not UTF-8 (byte 0xef at offset 2)" in job.error
