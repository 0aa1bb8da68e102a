"""Where a job may train: on a GPU whose memory covers what its profile (and variant) needs.

Every GPU worker reports its GPU's total and free memory in its heartbeat (NVML, measured at
each beat). A job's need is its profile's `vram_gb`, or that of the leaner variant it runs
(the profile's ladder), plus the `vram_margin_gb` setting. At submit, a job that fits no GPU of
the fleet as is starts at the first variant that fits, or is refused, naming the GPUs. A
training task that finds its own GPU too small sends the job to the queue of one that fits,
instead of failing.
"""

from __future__ import annotations

from typing import Any

import redis

from autotrain.errors import ValidationError
from autotrain.fleet.registry import WorkerRecord, live_workers
from autotrain.profile import Profile
from autotrain.trainers.configure import flatten_template

__all__ = [
    "GIB",
    "need_bytes",
    "need_gb",
    "describe_needs",
    "fleet_gpus",
    "best_fit",
    "first_fitting_variant",
    "no_fit_message",
]

GIB = 1 << 30


def need_bytes(profile: Profile, variant: int, margin_gb: float = 0.0,
               config: dict[str, Any] | None = None) -> int:  # fmt: skip
    """What a job needs on each of its GPUs, margin included; 0 when the profile says nothing.

    `config` is the job's trainer config (its plan's, once configured); without it, the
    profile's template with the variant's overrides."""
    gb = need_gb(profile, variant, config)
    return int((gb + margin_gb) * GIB) if gb else 0


def need_gb(profile: Profile, variant: int, config: dict[str, Any] | None = None) -> float:
    """The figure of the profile (or its variant), moved by its `vram_scaling` to the config's
    resolution, batch size and network rank."""
    leaner = profile.variant(variant)
    gb = leaner.vram_gb if leaner else profile.vram_gb
    scaling = profile.vram_scaling
    if not gb or scaling is None:
        return gb
    if config is None:
        config = {**flatten_template(profile.load_template(), profile.template_path),
                  **(leaner.overrides if leaner else {})}  # fmt: skip
    width, height = _resolution(config.get("resolution"), profile.resolution)
    pixels = width * height / scaling.resolution**2
    base_batch = (leaner.overrides if leaner else {}).get("train_batch_size",
                                                          scaling.train_batch_size)  # fmt: skip
    batch = int(config.get("train_batch_size") or base_batch)
    gb += scaling.per_sample_gb * (batch * pixels - base_batch)
    if scaling.network_dim and config.get("network_dim"):
        gb += scaling.per_dim_gb * (int(config["network_dim"]) - scaling.network_dim)
    return round(max(gb, 0.25 * (leaner.vram_gb if leaner else profile.vram_gb)), 2)


def describe_needs(profile: Profile, config: dict[str, Any] | None = None,
                   current: int = 0) -> list[str]:  # fmt: skip
    """The estimate and the ladder, a line each (`--dry-run`, `train show`); `current` marks the
    variant a job runs."""
    if not profile.vram_gb and not profile.ladder:
        return []
    scaling = profile.vram_scaling
    scaled = f"; scaled by {scaling.source}" if scaling and scaling.source else ""
    lines = [f"as is: about {need_gb(profile, 0, config):g} GiB (profile {profile.name}{scaled})"]
    for index, variant in enumerate(profile.ladder, start=1):
        leaner = None if config is None else {**config, **variant.overrides}
        lines.append(f"if out of memory, {index}: {variant.name}, about "
                     f"{need_gb(profile, index, leaner):g} GiB ({variant.source})")  # fmt: skip
    if 0 <= current < len(lines):
        lines[current] += "  <- now"
    return lines


def _resolution(value: Any, default: int) -> tuple[int, int]:
    """kohya's `resolution`: `1024`, `"1024"` or `"1024,768"` (width, height)."""
    if value in (None, ""):
        return default, default
    parts = [int(float(p)) for p in str(value).split(",") if p.strip()]
    return (parts[0], parts[-1]) if parts else (default, default)


def fleet_gpus(client: redis.Redis) -> list[WorkerRecord]:
    """The live GPU workers that reported their GPU's memory, largest first."""
    gpus = [w for w in live_workers(client) if w.is_gpu and w.memory_total]
    return sorted(gpus, key=lambda w: (-(w.memory_total or 0), w.name))


def best_fit(gpus: list[WorkerRecord], need: int) -> WorkerRecord | None:
    """The GPU to send a job to: one large enough, the one with the most memory free."""
    fitting = [g for g in gpus if (g.memory_total or 0) >= need]
    if not fitting:
        return None
    return max(fitting, key=lambda g: (g.memory_free or g.memory_total, g.name))


def first_fitting_variant(profile: Profile, gpus: list[WorkerRecord], margin_gb: float, start: int = 0,
                          ) -> int | None:  # fmt: skip
    """The first variant from `start` on (0 = as is) that some GPU of `gpus` can hold."""
    for variant in range(start, len(profile.ladder) + 1):
        if best_fit(gpus, need_bytes(profile, variant, margin_gb)) is not None:
            return variant
    return None


def no_fit_message(profile: Profile, gpus: list[WorkerRecord], margin_gb: float) -> str:
    listing = ", ".join(f"{g.name} ({(g.memory_total or 0) / GIB:.0f} GiB)" for g in gpus)
    leanest = profile.ladder[-1] if profile.ladder else None
    lean = (f"; its leanest variant, {leanest.name}, needs "
            f"{need_gb(profile, len(profile.ladder)):g} GiB" if leanest else "")  # fmt: skip
    return (
        f"Profile {profile.name} needs {need_gb(profile, 0):g} GiB of GPU memory (+{margin_gb:g} "
        f"margin){lean}, and no GPU of the fleet has that much: {listing}. Add a larger GPU, "
        "or use a leaner profile."
    )


def initial_variant(client: redis.Redis, profile: Profile, margin_gb: float) -> tuple[int, str]:
    """(variant, note) a new job should start with, judged on the live fleet; raises
    ValidationError when nothing fits. No GPU worker known: as is, no note."""
    gpus = fleet_gpus(client)
    if not gpus or not profile.vram_gb:
        return 0, ""
    variant = first_fitting_variant(profile, gpus, margin_gb)
    if variant is None:
        raise ValidationError(no_fit_message(profile, gpus, margin_gb))
    if variant == 0:
        return 0, ""
    chosen = profile.variant(variant)
    return variant, (
        f"profile {profile.name} as is needs {need_gb(profile, 0):g} GiB and the largest GPU has "
        f"{(gpus[0].memory_total or 0) / GIB:.0f} GiB: it starts with {chosen.name} "
        f"({need_gb(profile, variant):g} GiB)"
    )
