"""autotrain's own checks say what sd-scripts really does with captions and odd image shapes."""

from __future__ import annotations

import pytest

from autotrain.datasets.validate import validate_dataset
from autotrain.spec import JobSpec
from tests.helpers_datasets import make_dataset, test_settings, tiny_profile, write_image


@pytest.fixture
def settings(tmp_path):
    return test_settings(tmp_path / "ws")


def kohya(tmp_path, **config):
    """A kohya-backed profile over a template holding `config` (no model files are read)."""
    from autotrain.profile import load_profile

    templates = tmp_path / "templates"
    (templates / "K").mkdir(parents=True)
    (templates / "K" / "profile.toml").write_text(
        'backend = "kohya"\nresolution = 512\nmin_resolution = 256\n'
    )
    lines = [f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in config.items()]
    (templates / "K" / "base.toml").write_text("\n".join(lines) + "\n")
    return load_profile("K", templates)


def reasons(report, path):
    return " | ".join(p.reason for p in report.problems if p.path == path)


def validate(ds, settings, profile):
    return validate_dataset(JobSpec.for_dataset(ds, profile.name, name="ds"), settings, profile)


def test_kohya_captions_are_described_as_sd_scripts_reads_them(tmp_path, settings):
    ds = make_dataset(tmp_path / "ds", 4, size=(512, 512))
    (ds / "img_000.txt").write_bytes(b"")
    (ds / "img_001.txt").write_text("   \n")
    (ds / "img_002.txt").write_text("a red square\nwith a long second paragraph\n")
    (ds / "img_003.txt").write_bytes(b"caf\xe9 sign")
    report = validate(ds, settings, kohya(tmp_path))
    empty = reasons(report, "img_000.txt")
    assert "sd-scripts stops on it" in empty and "does not use the class tokens" in empty
    assert "trains the image with an empty caption" in reasons(report, "img_001.txt")
    assert "trains only its first line" in reasons(report, "img_002.txt")
    assert "stops with UnicodeDecodeError" in reasons(report, "img_003.txt")
    assert "uses the class tokens" not in " ".join(p.reason for p in report.problems)


def test_tiny_blank_captions_train_empty_not_as_class_tokens(tmp_path, settings):
    ds = make_dataset(tmp_path / "ds", 2)
    (ds / "img_000.txt").write_bytes(b"")
    report = validate(ds, settings, tiny_profile(tmp_path, min_resolution=8))
    summary = reasons(report, ".")
    assert "captions are empty (img_000.txt)" in summary
    assert "trains them with an empty caption, not the class tokens" in summary


def test_small_images_under_bucket_no_upscale_are_not_said_to_be_upscaled(tmp_path, settings):
    ds = make_dataset(tmp_path / "ds", 1, size=(128, 128))
    no_up = validate(
        ds, settings, kohya(tmp_path / "a", enable_bucket=True, bucket_no_upscale=True)
    )
    assert "never upscaled" in reasons(no_up, "img_000.png")
    assert "upscaled to" not in reasons(no_up, "img_000.png")
    up = validate(ds, settings, kohya(tmp_path / "b", enable_bucket=True))
    assert "will be upscaled" in reasons(up, "img_000.png")


def test_aspect_ratios_beyond_the_buckets_are_named(tmp_path, settings):
    ds = make_dataset(tmp_path / "ds", 1, size=(512, 512))
    write_image(ds / "banner.png", size=(3000, 300))
    write_image(ds / "sliver.png", size=(4000, 40))
    buckets = dict(enable_bucket=True, min_bucket_reso=256, max_bucket_reso=1024)
    report = validate(ds, settings, kohya(tmp_path / "a", **buckets))
    assert "10.0:1 is beyond the widest bucket (4.0:1" in reasons(report, "banner.png")
    no_up = validate(ds, settings, kohya(tmp_path / "b", bucket_no_upscale=True, **buckets))
    sliver = reasons(no_up, "sliver.png")
    assert "rounds its short side down to 0 px" in sliver and "the job would fail" in sliver
    tiny = validate(ds, settings, tiny_profile(tmp_path, min_resolution=8))
    assert "crops every image to a centred square, keeping 10%" in reasons(tiny, "banner.png")
