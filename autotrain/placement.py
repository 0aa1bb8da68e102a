"""Where a job may train: on a GPU whose memory covers what its profile (and variant) needs.

Every GPU worker reports its GPU's total and free memory in its heartbeat (NVML, measured at
each beat). A job's need is its profile's `vram_gb`, or that of the leaner variant it runs
(the profile's ladder), plus the `vram_margin_gb` setting. At submit, a job that fits no GPU of
the fleet as is starts at the first variant that fits, or is refused, naming the GPUs. A
training task that finds its own GPU too small sends the job to the queue of one that fits,
instead of failing.
"""

from __future__ import annotations

import redis

from autotrain.errors import ValidationError
from autotrain.profile import Profile
from autotrain.registry import live_workers

__all__ = ["GIB", "need_bytes", "fleet_gpus", "best_fit", "first_fitting_variant", "no_fit_message"]

GIB = 1 << 30


def need_bytes(profile: Profile, variant: int, margin_gb: float = 0.0) -> int:
    """What a job needs on each of its GPUs, margin included; 0 when the profile says nothing."""
    leaner = profile.variant(variant)
    gb = leaner.vram_gb if leaner else profile.vram_gb
    return int((gb + margin_gb) * GIB) if gb else 0


def fleet_gpus(client: redis.Redis) -> list[dict]:
    """The live GPU workers that reported their GPU's memory, largest first."""
    gpus = [w for w in live_workers(client) if w.get("gpu") != "" and w.get("memory_total")]
    return sorted(gpus, key=lambda w: (-w["memory_total"], w["name"]))


def best_fit(gpus: list[dict], need: int) -> dict | None:
    """The GPU to send a job to: one large enough, the one with the most memory free."""
    fitting = [g for g in gpus if g["memory_total"] >= need]
    if not fitting:
        return None
    return max(fitting, key=lambda g: (g.get("memory_free") or g["memory_total"], g["name"]))


def first_fitting_variant(profile: Profile, gpus: list[dict], margin_gb: float, start: int = 0,
                          ) -> int | None:  # fmt: skip
    """The first variant from `start` on (0 = as is) that some GPU of `gpus` can hold."""
    for variant in range(start, len(profile.ladder) + 1):
        if best_fit(gpus, need_bytes(profile, variant, margin_gb)) is not None:
            return variant
    return None


def no_fit_message(profile: Profile, gpus: list[dict], margin_gb: float) -> str:
    listing = ", ".join(f"{g['name']} ({g['memory_total'] / GIB:.0f} GiB)" for g in gpus)
    leanest = profile.ladder[-1] if profile.ladder else None
    lean = (f"; its leanest variant, {leanest.name}, needs {leanest.vram_gb:g} GiB"
            if leanest else "")  # fmt: skip
    return (
        f"Profile {profile.name} needs {profile.vram_gb:g} GiB of GPU memory (+{margin_gb:g} "
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
        f"profile {profile.name} as is needs {profile.vram_gb:g} GiB and the largest GPU has "
        f"{gpus[0]['memory_total'] / GIB:.0f} GiB: it starts with {chosen.name} "
        f"({chosen.vram_gb:g} GiB)"
    )
