"""Phase 1 on datasets built here: what is accepted, what is excluded and named, what is fatal."""

from __future__ import annotations

import multiprocessing
import resource
import shutil
import threading
from pathlib import Path

import pytest
from rich.console import Console

from autotrain.datasets.discovery import find_datasets, parse_dataset_paths, scan_dataset
from autotrain.datasets.imagecheck import INLINE_LIMIT, check_files
from autotrain.datasets.report_view import report_table
from autotrain.datasets.validate import ValidationReport, validate_dataset
from autotrain.errors import AutotrainError, ValidationError
from autotrain.profile import load_profile
from autotrain.spec import JobSpec
from tests.helpers_datasets import (
    make_dataset,
    test_settings,
    tiny_profile,
    write_bomb_png,
    write_exif_rotated,
    write_image,
    write_not_image,
    write_truncated,
)


@pytest.fixture
def profile(tmp_path):
    return tiny_profile(tmp_path, min_resolution=32)


@pytest.fixture
def settings(tmp_path):
    return test_settings(tmp_path / "ws")


def validate(path: Path, settings, profile, name: str = "ds") -> ValidationReport:
    return validate_dataset(JobSpec.for_dataset(path, "Tiny", name=name), settings, profile)


def problem(report: ValidationReport, path: str) -> str:
    """The reasons given for one file, joined (fails when the file is not named)."""
    reasons = [p.reason for p in report.problems if p.path == path]
    assert reasons, f"{path} not named among {[p.path for p in report.problems]}"
    return " | ".join(reasons)


def test_good_dataset_is_ok_and_round_trips_as_json(tmp_path, settings, profile):
    ds = make_dataset(tmp_path / "cats", 5)
    report = validate(ds, settings, profile)
    assert report.ok and not report.errors and not report.fatal
    assert [i.relpath for i in report.images] == [f"img_{i:03d}.png" for i in range(5)]
    assert all(i.width == 64 and i.height == 64 and len(i.sha256) == 64 for i in report.images)
    assert [c.relpath for c in report.captions] == [f"img_{i:03d}.txt" for i in range(5)]
    assert report.total_bytes == sum(p.stat().st_size for p in ds.iterdir())
    again = ValidationReport.model_validate_json(report.model_dump_json())
    assert again == report
    report.raise_for_errors()  # nothing fatal: no exception


def test_junk_is_skipped_and_counted(tmp_path, settings, profile):
    ds = make_dataset(tmp_path / "ds", 2)
    write_image(ds / "__MACOSX" / "._img_000.png")
    write_image(ds / "._img_001.png")
    (ds / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (ds / "Thumbs.db").write_bytes(b"junk")
    write_image(ds / ".hidden" / "secret.png")
    (ds / "notes.md").write_text("not a caption")
    report = validate(ds, settings, profile)
    assert report.ok
    assert len(report.images) == 2
    assert report.junk_skipped == [
        ".DS_Store",
        "._img_001.png",
        ".hidden/",
        "Thumbs.db",
        "__MACOSX/",
    ]
    assert report.ignored_files == ["notes.md"]


def test_kohya_repeat_folders_become_subsets(tmp_path, settings, profile):
    ds = make_dataset(tmp_path / "ds", 2)
    make_dataset(ds / "10_ohwx dog", 3, prefix="dog")
    make_dataset(ds / "3_style", 1, prefix="style", captions=False)
    report = validate(ds, settings, profile)
    subsets = {s.relpath: (s.repeats, s.class_tokens, s.image_count) for s in report.subsets}
    assert subsets == {
        ".": (None, None, 2),
        "10_ohwx dog": (10, "ohwx dog", 3),
        "3_style": (3, "style", 1),
    }
    dog = next(i for i in report.images if i.relpath == "10_ohwx dog/dog_000.png")
    assert dog.subset == "10_ohwx dog" and dog.caption_relpath == "10_ohwx dog/dog_000.txt"
    assert report.missing_captions == ["3_style/style_000.png"]


def test_extensions_are_matched_in_any_case(tmp_path, settings, profile):
    ds = tmp_path / "ds"
    for i, name in enumerate(
        ["a.JPG", "b.PNG", "c.JpEg", "d.webp", "e.BMP", "f.gif", "g.TIFF", "h.tif"]
    ):
        write_image(ds / name, colour="red", seed=i)
    report = validate(ds, settings, profile)
    assert len(report.images) == 8 and not report.errors


def test_kohya_profiles_exclude_files_sd_scripts_would_skip(tmp_path, settings):
    ds = tmp_path / "ds"
    for i, name in enumerate(["a.png", "b.JPG", "c.JpEg", "d.gif", "e.tiff"]):
        write_image(ds / name, colour="red", seed=i)
    kohya = tiny_profile(tmp_path, backend="kohya", script="flux_train_network.py")
    report = validate(ds, settings, kohya)
    assert [i.relpath for i in report.images] == ["a.png", "b.JPG"]
    for name, suffix in (("c.JpEg", ".JpEg"), ("d.gif", ".gif"), ("e.tiff", ".tiff")):
        assert f"sd-scripts does not read '{suffix}'" in problem(report, name)


def test_broken_images_are_named_excluded_and_not_fatal(tmp_path, settings, profile):
    ds = make_dataset(tmp_path / "ds", 2)
    write_truncated(ds / "truncated.png")
    write_truncated(ds / "truncated.jpg")
    (ds / "zero.png").write_bytes(b"")
    write_not_image(ds / "notes.jpg")
    report = validate(ds, settings, profile)
    assert report.ok, report.fatal
    assert [i.relpath for i in report.images] == ["img_000.png", "img_001.png"]
    assert {p.path for p in report.errors} == {
        "truncated.png",
        "truncated.jpg",
        "zero.png",
        "notes.jpg",
    }
    assert "truncated" in problem(report, "truncated.png")
    assert "empty file" in problem(report, "zero.png")
    assert "not an image" in problem(report, "notes.jpg")


def test_decompression_bombs_are_refused_without_decoding(tmp_path, settings, profile):
    ds = make_dataset(tmp_path / "ds", 1)
    write_bomb_png(ds / "bomb.png", 20000, 20000)  # over twice Pillow's limit: an error at open
    write_bomb_png(ds / "big.png", 10000, 10000)  # over the limit: only a warning in Pillow
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.warns(Warning):  # Pillow's own DecompressionBombWarning for big.png
        report = validate(ds, settings, profile)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert "decompression bomb" in problem(report, "bomb.png")
    assert "decompression bomb" in problem(report, "big.png")
    assert [i.relpath for i in report.images] == ["img_000.png"]
    assert grown_mb < 100, f"checking the bombs grew memory by {grown_mb:.0f} MB"


def test_unusual_modes_and_exif_rotation_are_accepted(tmp_path, settings, profile):
    ds = tmp_path / "ds"
    write_image(ds / "cmyk.jpg", mode="CMYK")
    write_image(ds / "palette.png", mode="P", seed=2)
    write_image(ds / "alpha.png", mode="LA", seed=3)
    write_image(ds / "alpha_rgba.webp", mode="RGBA", seed=4)
    write_exif_rotated(ds / "rotated.jpg", (96, 48), orientation=6)
    report = validate(ds, settings, profile)
    assert not report.errors, report.errors
    sizes = {i.relpath: (i.width, i.height) for i in report.images}
    assert len(sizes) == 5
    assert sizes["rotated.jpg"] == (48, 96)  # as displayed
    assert "staged upright" in problem(report, "rotated.jpg")


def test_sixteen_bit_greyscale_is_refused_with_the_fix(tmp_path, settings, profile):
    """convert("RGB") clips 16-bit greyscale at 255: it would train almost all white."""
    ds = make_dataset(tmp_path / "ds", 2)
    write_image(ds / "scan.png", mode="I;16", seed=1)
    report = validate(ds, settings, profile)
    assert report.ok and [i.relpath for i in report.images] == ["img_000.png", "img_001.png"]
    reason = problem(report, "scan.png")
    assert "high bit depth (Pillow mode I;16)" in reason and "almost all white" in reason
    assert "8-bit" in reason and [p.path for p in report.errors] == ["scan.png"]


def test_two_images_with_one_stem_keep_the_first_and_name_both(tmp_path, settings, profile):
    ds = make_dataset(tmp_path / "ds", 1)
    write_image(ds / "a.jpg", seed=3)
    write_image(ds / "a.png", seed=4)
    (ds / "a.txt").write_text("a caption\n")
    report = validate(ds, settings, profile)
    assert "a.jpg" in [i.relpath for i in report.images]
    assert "a.png" not in [i.relpath for i in report.images]
    reason = problem(report, "a.png")
    assert reason.startswith("shares its name stem with a.jpg") and "one caption" in reason
    assert "Rename one of them" in reason


def test_caption_problems_are_warnings(tmp_path, settings, profile):
    ds = make_dataset(tmp_path / "ds", 5)
    (ds / "img_000.txt").unlink()
    (ds / "img_001.txt").write_text("  \n\n")
    (ds / "img_002.txt").write_bytes(b'\xef\xbb\xbfa "quoted" [bracketed] {brace} caption\n')
    (ds / "img_003.txt").write_bytes(b"latin-1 caf\xe9 \xff\xfe")
    report = validate(ds, settings, profile)
    assert report.ok and len(report.images) == 5 and not report.errors
    assert report.missing_captions == ["img_000.png"]
    assert report.empty_captions == ["img_001.txt"]
    assert "not valid UTF-8" in problem(report, "img_003.txt")
    assert not [p for p in report.problems if p.path == "img_002.txt"]
    summary = " ".join(p.reason for p in report.warnings)
    assert "img_000.png" in summary and "img_001.txt" in summary


def test_small_and_duplicate_images_are_warnings_naming_both(tmp_path, settings, profile):
    ds = make_dataset(tmp_path / "ds", 2)
    write_image(ds / "tiny.png", (16, 80))
    shutil.copy(ds / "img_000.png", ds / "zz_copy.png")
    report = validate(ds, settings, profile)
    assert report.ok and len(report.images) == 4
    assert "16x80" in problem(report, "tiny.png") and "min_resolution 32" in problem(
        report, "tiny.png"
    )
    assert "duplicate of img_000.png" in problem(report, "zz_copy.png")


def test_symlinks_are_never_followed(tmp_path, settings, profile):
    outside = make_dataset(tmp_path / "outside", 2)
    ds = make_dataset(tmp_path / "ds", 1)
    (ds / "link.png").symlink_to(outside / "img_000.png")
    (ds / "10_linked").symlink_to(outside, target_is_directory=True)
    report = validate(ds, settings, profile)
    assert [i.relpath for i in report.images] == ["img_000.png"]
    assert "symbolic link not followed" in problem(report, "link.png")
    assert "symbolic link not followed" in problem(report, "10_linked")


def test_larger_dataset_is_checked_in_worker_processes(tmp_path, settings, profile):
    count = INLINE_LIMIT + 8
    ds = make_dataset(tmp_path / "ds", count, size=(40, 40), captions=False)
    write_truncated(ds / "img_017.png")
    seen = []
    report = validate_dataset(
        JobSpec.for_dataset(ds, "Tiny", name="ds"),
        settings,
        profile,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert len(report.images) == count - 1
    assert "truncated" in problem(report, "img_017.png")
    assert seen and seen[-1] == (count, count)


def _check_in_daemon(root: str, items, queue) -> None:
    queue.put(check_files(root, items))


def test_every_way_of_checking_gives_the_same_verdicts(tmp_path):
    """Inline, worker processes (fork; forkserver once threads run) and the thread fallback
    used inside a daemonic process (e.g. a Celery prefork child) agree file by file."""
    ds = make_dataset(tmp_path / "ds", INLINE_LIMIT + 4, size=(40, 40))
    write_truncated(ds / "img_003.png")
    items = [(p.name, p.suffix == ".txt") for p in sorted(ds.iterdir())]
    inline = check_files(str(ds), items, workers=1)
    assert [c.relpath for c in inline if c.error] == ["img_003.png"]
    assert check_files(str(ds), items) == inline

    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert check_files(str(ds), items) == inline
    finally:
        stop.set()
        other.join()

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_check_in_daemon, args=(str(ds), items, queue), daemon=True)
    child.start()
    assert queue.get(timeout=60) == inline
    child.join(10)


def test_dataset_name_must_be_safe(tmp_path, settings, profile):
    ds = make_dataset(tmp_path / "ds", 1)
    with pytest.raises(AutotrainError, match=r"Invalid dataset name '\.\./x'"):
        JobSpec.for_dataset(ds, "Tiny", name="../x")
    sneaky = JobSpec.model_construct(dataset_path=ds, name="../x", profile="Tiny", skip_copy=False)
    with pytest.raises(ValidationError, match=r"\.\./x"):
        validate_dataset(sneaky, settings, profile)


def test_missing_or_non_folder_path_is_an_error_naming_it(tmp_path, settings, profile):
    with pytest.raises(ValidationError, match="does not exist") as info:
        validate(tmp_path / "nope", settings, profile)
    assert str(tmp_path / "nope") in str(info.value)
    a_file = write_image(tmp_path / "single.png")
    with pytest.raises(ValidationError, match="not a folder"):
        validate(a_file, settings, profile)


def test_no_images_is_fatal_and_says_why(tmp_path, settings, profile):
    ds = tmp_path / "empty"
    (ds / "__MACOSX").mkdir(parents=True)
    (ds / ".DS_Store").write_text("x")
    (ds / "readme.md").write_text("x")
    report = validate(ds, settings, profile)
    assert not report.ok
    with pytest.raises(ValidationError) as info:
        report.raise_for_errors()
    message = str(info.value)
    assert f"No image files found in {ds}" in message
    assert "2 OS/hidden junk" in message and ".png" in message and "readme.md" in message


def test_all_images_broken_is_fatal_naming_them(tmp_path, settings, profile):
    ds = tmp_path / "ds"
    write_truncated(ds / "a.png")
    write_not_image(ds / "b.jpg")
    report = validate(ds, settings, profile)
    with pytest.raises(ValidationError, match="No usable images") as info:
        report.raise_for_errors()
    assert "a.png" in str(info.value) and "b.jpg" in str(info.value)


def test_insufficient_disk_space_is_fatal_with_numbers_and_fix(tmp_path, profile):
    ds = make_dataset(tmp_path / "ds", 1)
    report = validate(ds, test_settings(tmp_path / "ws", min_free_disk_gb=10**9), profile)
    assert not report.ok
    (reason,) = [f for f in report.fatal if "Insufficient disk space" in f]
    assert "need 1000000000" in reason and "free" in reason and "min_free_disk_gb" in reason


def test_trainer_backend_problems_are_fatal(tmp_path):
    ds = make_dataset(tmp_path / "ds", 1)
    profile = load_profile("FluxLORA")
    report = validate(ds, test_settings(tmp_path / "ws", sd_scripts_dir=None), profile)
    assert any("sd_scripts_dir" in f for f in report.fatal), report.fatal


def test_report_table_shows_files_with_brackets_verbatim(tmp_path, settings, profile):
    ds = make_dataset(tmp_path / "ds", 1)
    write_truncated(ds / "[red] bad.png")
    console = Console(record=True, width=200)
    console.print(report_table(validate(ds, settings, profile)))
    text = console.export_text()
    assert "[red] bad.png" in text and "1 usable of 2 found" in text


def test_scan_only_lists(tmp_path):
    ds = make_dataset(tmp_path / "ds", 2)
    scan = scan_dataset(ds)
    assert [i.relpath for i in scan.images] == ["img_000.png", "img_001.png"]
    assert scan.captions == ["img_000.txt", "img_001.txt"]


def test_find_datasets_in_a_batch_folder(tmp_path):
    batch = tmp_path / "batch"
    make_dataset(batch / "b_plain", 1)
    make_dataset(batch / "a_kohya" / "5_thing", 1)
    (batch / "c_empty").mkdir()
    make_dataset(batch / "__MACOSX", 1)
    make_dataset(batch / ".cache", 1)
    assert find_datasets(batch) == [batch / "a_kohya", batch / "b_plain"]
    with pytest.raises(ValidationError, match="No image files found in .*c_empty"):
        find_datasets(batch / "c_empty")


def test_parse_dataset_paths(tmp_path):
    assert parse_dataset_paths(" a, b ,,a") == [Path("a"), Path("b")]
    with pytest.raises(ValidationError, match="No dataset paths"):
        parse_dataset_paths(" , ")


def test_kohya_folder_conventions_zero_repeats_mistyped_and_passed_directly(
    tmp_path, settings, profile
):
    ds = make_dataset(tmp_path / "ds", 1)
    make_dataset(ds / "0_ohwx cat", 2, prefix="skipped")
    make_dataset(ds / "10-ohwx dog", 2, prefix="dog")
    make_dataset(ds / "2024 trip", 1, prefix="trip")
    report = validate(ds, settings, profile)
    assert not [p for p in report.problems if p.path == "2024 trip/"]
    assert not [i for i in report.images if i.relpath.startswith("0_")]
    assert "0 repeats, so kohya skips it" in problem(report, "0_ohwx cat/")
    assert [s.relpath for s in report.subsets] == [".", "10-ohwx dog", "2024 trip"]
    hint = problem(report, "10-ohwx dog/")
    assert "is not spelled <n>_<name>" in hint and "Rename it to 10_ohwx dog" in hint

    direct = make_dataset(tmp_path / "20_ohwx_woman", 2, prefix="w")
    report = validate(direct, settings, profile, name="woman")
    (root,) = report.subsets
    assert (root.relpath, root.repeats, root.class_tokens) == (".", 20, "ohwx_woman")
    assert "train with 20 repeats and class tokens 'ohwx_woman'" in problem(report, ".")
