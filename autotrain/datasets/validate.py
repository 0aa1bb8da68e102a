"""Phase 1: is this dataset, with this profile, trainable on this host?

Every image is read once and decoded in full (in worker processes for larger datasets); the same
bytes give its sha256 for duplicate detection and the staging manifest. A bad image is an
`error`-level problem of that file: it is named, excluded and never staged, but does not fail the
dataset by itself. What fails the dataset is `fatal`: no usable images, a bad path, too little
disk, or a trainer that cannot run here. `raise_for_errors()` turns those into a ValidationError.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field

from autotrain.datasets.discovery import (
    IMAGE_EXTENSIONS,
    DatasetImage,
    Problem,
    Subset,
    scan_dataset,
)
from autotrain.datasets.diskspace import allocated_bytes, free_bytes, human_size, mount_point
from autotrain.datasets.imagecheck import FileCheck, check_files
from autotrain.datasets.readings import (
    blank_captions_reason,
    bucket_settings,
    caption_reason,
    high_depth_reason,
    placement_problem,
    small_image_reason,
    stem_clash_reason,
    stem_of,
    upright_reason,
)
from autotrain.errors import AutotrainError, ValidationError
from autotrain.profile import Profile
from autotrain.settings import Settings
from autotrain.spec import JobSpec
from autotrain.workspace import Workspace, check_dataset_name

__all__ = [
    "FileRecord",
    "ValidImage",
    "ValidationReport",
    "validate_dataset",
    "dataset_root",
    "name_list",
    "GB",
]

GB = 10**9
_LIST_LIMIT = 10  # files named in one message before "and N more"


class ValidImage(DatasetImage):
    """An image that decoded in full; width/height as displayed (after EXIF orientation)."""

    width: int
    height: int
    sha256: str
    orientation: int = Field(1, description="EXIF orientation; not 1: staged upright")


class FileRecord(BaseModel):
    """One staged file as the manifest records it (size and sha256 of the source's bytes)."""

    relpath: str
    size: int
    sha256: str
    orientation: int = Field(1, description="images: EXIF orientation staging turns upright")


class ValidationReport(BaseModel):
    """Everything phase 1 learned; JSON-safe so the next phase can run on another host."""

    dataset_path: Path
    name: str
    profile: str
    images: list[ValidImage] = Field(default_factory=list, description="decoded fine, to stage")
    captions: list[FileRecord] = Field(default_factory=list, description="of the valid images")
    subsets: list[Subset] = Field(default_factory=list, description="counting valid images only")
    problems: list[Problem] = Field(default_factory=list, description="per file")
    fatal: list[str] = Field(default_factory=list, description="why the dataset cannot be used")
    setup_problems: list[str] = Field(
        default_factory=list, description="of `fatal`: the trainer's host setup (model files...)"
    )
    junk_skipped: list[str] = Field(default_factory=list)
    ignored_files: list[str] = Field(default_factory=list, description="not images or captions")
    missing_captions: list[str] = Field(default_factory=list, description="image relpaths")
    excluded_captions: list[str] = Field(default_factory=list, description="of unusable images")
    empty_captions: list[str] = Field(default_factory=list, description="caption relpaths")
    images_found: int = 0
    total_bytes: int = Field(0, description="valid images plus their captions")

    @property
    def errors(self) -> list[Problem]:
        """Files excluded from staging (undecodable images)."""
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    @property
    def ok(self) -> bool:
        """True when the dataset can be staged; excluded files alone do not make it False."""
        return not self.fatal

    def raise_for_errors(self) -> None:
        """ValidationError listing every fatal problem, plus the files that were excluded."""
        if self.ok:
            return
        lines = [f"Dataset {self.dataset_path} (name {self.name!r}, profile {self.profile}):"]
        lines += [f"  - {reason}" for reason in self.fatal]
        if self.errors:
            lines.append(f"  Unusable files ({len(self.errors)}):")
            lines += [f"    {p.path}: {p.reason}" for p in self.errors[:_LIST_LIMIT]]
            if len(self.errors) > _LIST_LIMIT:
                lines.append(f"    ... and {len(self.errors) - _LIST_LIMIT} more")
        raise ValidationError("\n".join(lines))

    def manifest_files(self) -> list[FileRecord]:
        """The files staging copies (valid images and their captions), sorted by path."""
        records = [
            FileRecord(relpath=i.relpath, size=i.size, sha256=i.sha256, orientation=i.orientation)
            for i in self.images
        ]
        return sorted(records + self.captions, key=lambda r: r.relpath)


def validate_dataset(
    spec: JobSpec,
    settings: Settings,
    profile: Profile,
    *,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> ValidationReport:
    """Check a dataset; a bad path or name raises at once, everything else lands in the report.

    `progress(done, total)` is called as files are checked; `workers` overrides the core count.
    """
    try:
        check_dataset_name(spec.name)
    except AutotrainError as exc:
        raise ValidationError(str(exc)) from None
    root = dataset_root(spec)

    scan = scan_dataset(root)
    report = ValidationReport(
        dataset_path=root,
        name=spec.name,
        profile=profile.name,
        problems=list(scan.problems),
        junk_skipped=scan.junk,
        ignored_files=scan.ignored,
        images_found=len(scan.images),
    )
    items = [(i.relpath, False) for i in scan.images] + [(c, True) for c in scan.captions]
    checks = {
        c.relpath: c for c in check_files(str(root), items, progress=progress, workers=workers)
    }
    _judge_images(report, scan.images, checks, profile)
    _judge_captions(report, checks, profile.backend)
    _find_duplicates(report)
    report.subsets = _valid_subsets(scan.subsets, report.images)
    staged_captions = {c.relpath for c in report.captions}
    report.excluded_captions = [c for c in scan.captions if c not in staged_captions]
    report.total_bytes = sum(i.size for i in report.images) + sum(c.size for c in report.captions)
    report.problems.sort(key=lambda p: (p.level != "error", p.path))

    if not scan.images:
        report.fatal.append(_no_images_message(root, scan.junk, scan.ignored))
    elif not report.images:
        report.fatal.append(
            f"No usable images in {root}: all {len(scan.images)} failed to decode "
            f"({name_list([p.path for p in report.errors])}). Replace or remove them."
        )
    report.fatal += _disk_problems(settings, profile, report, spec)
    report.setup_problems = _backend_problems(profile, settings)
    report.fatal += report.setup_problems
    return report


def dataset_root(spec: JobSpec) -> Path:
    """The dataset folder, resolved; a ValidationError when it is missing or not a folder."""
    root = Path(spec.dataset_path).expanduser()
    if not root.exists():
        raise ValidationError(f"Dataset folder {root} does not exist: check the path.")
    if not root.is_dir():
        raise ValidationError(f"Dataset path {root} is not a folder: pass the folder of images.")
    return root.resolve()


# What sd-scripts' dataset loader globs for: one case or the other, never mixed, and no GIF/TIFF.
KOHYA_IMAGE_EXTENSIONS = frozenset(
    e for ext in (".png", ".jpg", ".jpeg", ".webp", ".bmp") for e in (ext, ext.upper())
)


def _judge_images(
    report: ValidationReport,
    images: list[DatasetImage],
    checks: dict[str, FileCheck],
    profile: Profile,
) -> None:
    buckets = bucket_settings(profile)
    stems: dict[str, str] = {}  # stem -> the first image with it
    for image in images:
        check = checks[image.relpath]
        reason = check.error or _unreadable_by_trainer(image.relpath, check, profile, stems)
        placement = None if reason else placement_problem(
            image.relpath, check.width, check.height, profile, buckets
        )  # fmt: skip
        if placement and placement.level == "error":
            reason = placement.reason
        if reason:
            report.problems.append(Problem(path=image.relpath, reason=reason, level="error"))
            continue
        stems[stem_of(image.relpath)] = image.relpath
        # the bytes read are the bytes staged, so their size wins over the folder listing's
        fields = {**image.model_dump(), "size": check.size}
        report.images.append(
            ValidImage(
                **fields,
                width=check.width,
                height=check.height,
                sha256=check.sha256,
                orientation=check.orientation,
            )
        )
        notes = [placement.reason] if placement else []
        if check.orientation != 1:
            notes.append(upright_reason(check.orientation))
        if min(check.width, check.height) < profile.min_resolution:
            notes.append(small_image_reason(check.width, check.height, profile, buckets))
        report.problems += [Problem(path=image.relpath, reason=note) for note in notes]
        if image.caption_relpath is None:
            report.missing_captions.append(image.relpath)


def _unreadable_by_trainer(
    relpath: str, check: FileCheck, profile: Profile, stems: dict[str, str]
) -> str | None:
    """Why the trainer would not read this decodable image as it is, or None."""
    suffix = Path(relpath).suffix
    if profile.backend == "kohya" and suffix not in KOHYA_IMAGE_EXTENSIONS:
        return (
            f"sd-scripts does not read '{suffix}' files (only "
            f"{', '.join(sorted(set(KOHYA_IMAGE_EXTENSIONS)))}, in lower or upper case): "
            "convert it to PNG or rename it"
        )
    if first := stems.get(stem_of(relpath)):
        return stem_clash_reason(first)
    return high_depth_reason(check.mode)


def _judge_captions(report: ValidationReport, checks: dict[str, FileCheck], backend: str) -> None:
    """Each caption as the trainer will read it; for kohya profiles the trainer check
    (trainers/trainer_check.py) then refuses what sd-scripts would stop on."""
    wanted = sorted({i.caption_relpath for i in report.images if i.caption_relpath})
    blank: list[str] = []
    for relpath in wanted:
        check = checks[relpath]
        if check.error:  # unreadable caption: stage the image without it
            report.problems.append(Problem(path=relpath, reason=check.error))
            _unpair(report, relpath)
            continue
        report.captions.append(FileRecord(relpath=relpath, size=check.size, sha256=check.sha256))
        reason = caption_reason(check, backend)
        if check.empty:
            report.empty_captions.append(relpath)
            if not reason:
                blank.append(relpath)
        if reason:
            report.problems.append(Problem(path=relpath, reason=reason))
    report.missing_captions.sort()
    if report.missing_captions:
        report.problems.append(
            Problem(
                path=".",
                reason=f"{len(report.missing_captions)} images have no .txt caption "
                f"({name_list(report.missing_captions)}); the trainer uses the class tokens",
            )
        )
    if blank:
        report.problems.append(Problem(path=".", reason=blank_captions_reason(blank, name_list)))


def _unpair(report: ValidationReport, caption: str) -> None:
    """Stage the images of `caption` without it."""
    for image in report.images:
        if image.caption_relpath == caption:
            image.caption_relpath = None
            report.missing_captions.append(image.relpath)


def _find_duplicates(report: ValidationReport) -> None:
    first: dict[str, str] = {}
    for image in report.images:
        if image.sha256 in first:
            report.problems.append(
                Problem(
                    path=image.relpath,
                    reason=f"duplicate of {first[image.sha256]} (identical bytes); "
                    "it will be trained twice as often",
                )
            )
        else:
            first[image.sha256] = image.relpath


def _valid_subsets(subsets: list[Subset], images: list[ValidImage]) -> list[Subset]:
    counts: dict[str, int] = {}
    for image in images:
        counts[image.subset] = counts.get(image.subset, 0) + 1
    return [
        s.model_copy(update={"image_count": counts[s.relpath]})
        for s in subsets
        if s.relpath in counts
    ]


def _no_images_message(root: Path, junk: list[str], ignored: list[str]) -> str:
    extras = []
    if junk:
        extras.append(f"skipped {len(junk)} OS/hidden junk entries")
    if ignored:
        extras.append(f"ignored {len(ignored)} other files ({name_list(ignored)})")
    detail = f" ({'; '.join(extras)})" if extras else ""
    return (
        f"No image files found in {root}{detail}. Supported extensions: "
        f"{', '.join(IMAGE_EXTENSIONS)} (any case), in the folder or its subfolders."
    )


def _disk_problems(
    settings: Settings, profile: Profile, report: ValidationReport, spec: JobSpec
) -> list[str]:
    """Room on the workspace filesystem for the staged copy as that filesystem counts it (whole
    blocks per file and folder), the profile's weights and the configured reserve."""
    staged = Workspace(settings.workspace).input_dir(spec.name)
    copies = _staging_copies(Path(report.dataset_path), staged, spec.force)
    files = report.manifest_files() if copies else []
    dataset_bytes = allocated_bytes(((f.relpath, f.size) for f in files), staged) if copies else 0
    need = dataset_bytes + (profile.disk_gb + settings.min_free_disk_gb) * GB
    free = free_bytes(staged)
    if free >= need:
        return []
    return [
        f"Insufficient disk space on the workspace filesystem {mount_point(staged)}: need "
        f"{human_size(need)} (staged copy {human_size(dataset_bytes)} + profile {profile.name} "
        f"disk_gb {profile.disk_gb:g} + min_free_disk_gb {settings.min_free_disk_gb:g}), free "
        f"{human_size(free)}. Free some space there, put the workspace on a larger disk "
        "(AUTOTRAIN_WORKSPACE), or lower min_free_disk_gb (AUTOTRAIN_MIN_FREE_DISK_GB)."
    ]


def _staging_copies(source: Path, staged: Path, force: bool) -> bool:
    """Whether phase 2 will write a copy: not for a dataset staged in place, and not when a
    staged copy exists and is reused (or refused) rather than replaced. `--skip-copy` with
    nothing staged yet still copies."""
    if source.resolve() == staged.resolve():
        return False
    return force or not staged.exists()


def _backend_problems(profile: Profile, settings: Settings) -> list[str]:
    """The trainer backend's own host checks (scripts, model files, Python packages)."""
    from autotrain.trainers import get_backend

    try:
        backend = get_backend(profile)
    except ImportError as exc:
        return [f"Trainer backend {profile.backend!r} of profile {profile.name} cannot load: {exc}"]
    return list(backend.check(profile, settings))


def name_list(paths: list[str]) -> str:
    """The first few paths, then "and N more": a message stays readable for any dataset size."""
    shown = ", ".join(paths[:_LIST_LIMIT])
    return shown + (f" and {len(paths) - _LIST_LIMIT} more" if len(paths) > _LIST_LIMIT else "")
