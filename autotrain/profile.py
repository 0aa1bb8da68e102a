"""Profiles are data: `templates/<Profile>/{profile.toml,base.toml}`, built in or in the workspace.

`profile.toml` describes the profile to autotrain (backend, script, needs, defaults); `base.toml` is
the trainer's own config template, copied into each job's config with the per-dataset keys filled in.
A workspace `templates/<Profile>/` adds a profile or replaces the built-in one of the same name.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from autotrain.errors import ConfigError

if TYPE_CHECKING:
    from autotrain.settings import Settings
    from autotrain.spec import JobSpec

__all__ = [
    "Profile",
    "SampleSettings",
    "Variant",
    "VramScaling",
    "load_profile",
    "profile_for",
    "list_profiles",
    "builtin_templates_dir",
    "DESCRIPTOR_FILE",
    "TEMPLATE_FILE",
]

DESCRIPTOR_FILE = "profile.toml"
TEMPLATE_FILE = "base.toml"


class SampleSettings(BaseModel):
    """One line of kohya's sample prompt file (`--w --h --s --d --l/--g --n` options)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = "{class_tokens}"
    negative: str = ""
    width: int = 512
    height: int = 512
    steps: int = 20
    guidance: float = 3.5
    guidance_option: Literal["l", "g"] = Field(
        "l",
        description="kohya prompt option carrying `guidance`: l = CFG scale, g = Flux embedded guidance",
    )
    seed: int = 42


class Variant(BaseModel):
    """A leaner way to run a profile, tried when the one before ran out of GPU memory."""

    model_config = ConfigDict(extra="forbid")

    name: str
    vram_gb: float = Field(ge=0, description="what this variant needs, from published figures")
    source: str = Field("", description="where the figure comes from")
    overrides: dict[str, Any] = Field(description="trainer config keys this variant changes")


class VramScaling(BaseModel):
    """How a profile's VRAM figures move with the knobs that matter. The figures (`vram_gb` of
    the profile and of each variant) hold at these settings; a config that trains larger images,
    bigger batches or a higher network rank needs more, a leaner one less."""

    model_config = ConfigDict(extra="forbid")

    resolution: int = Field(ge=16, description="the figures' training resolution (square)")
    train_batch_size: int = Field(
        1, ge=1, description="their batch size (a variant may set its own)"
    )
    network_dim: int | None = Field(None, ge=1, description="their LoRA rank")
    per_sample_gb: float = Field(
        0.0, ge=0, description="activations of one sample at `resolution`; scale with its pixels"
    )
    per_dim_gb: float = Field(0.0, ge=0, description="weights, gradients and optimizer per rank")
    source: str = Field("", description="where the coefficients come from")


class Profile(BaseModel):
    """What autotrain needs to know about a profile besides the trainer template itself."""

    model_config = ConfigDict(extra="forbid")

    name: str
    directory: Path
    source: Literal["builtin", "workspace"] = "builtin"
    description: str = ""
    backend: Literal["kohya", "tiny"]
    script: str | None = Field(None, description="sd-scripts script, for the kohya backend")
    mixed_precision: Literal["no", "fp16", "bf16"] = "bf16"
    repeats: int = Field(1, ge=1, description="kohya num_repeats unless the folder says N_name")
    resolution: int = Field(512, ge=16)
    min_resolution: int = Field(256, ge=1, description="smaller images get a warning")
    disk_gb: float = Field(1.0, ge=0, description="space for weights and checkpoints")
    vram_gb: float = Field(0.0, ge=0)
    host_memory_gb: float | None = Field(
        None,
        ge=0,
        description="host RAM one run peaks at (None: not measured); the message "
        "for a trainer the kernel's out-of-memory killer ended quotes it",
    )
    seconds_per_step: float = Field(
        1.0, gt=0, description="the queue ETA's pace until a run of this profile was measured"
    )
    startup_seconds: float = Field(
        60.0, ge=0, description="... and its time from start to the first step (loading, caching)"
    )
    models: dict[str, str] = Field(
        default_factory=dict, description="trainer config key -> setting naming a model file"
    )
    dataset_config: bool = Field(False, description="the trainer reads a separate dataset TOML")
    class_tokens: str = "{name}"
    sample: SampleSettings = Field(default_factory=SampleSettings)
    ladder: list[Variant] = Field(
        default_factory=list, description="leaner variants, tried in order after an out-of-memory"
    )
    vram_scaling: VramScaling | None = None

    def variant(self, index: int) -> Variant | None:
        """The `index`-th leaner variant of the ladder (1-based); None for 0, the profile as is."""
        return self.ladder[index - 1] if index else None

    def variant_name(self, index: int) -> str:
        variant = self.variant(index)
        return variant.name if variant else "as is"

    @property
    def template_path(self) -> Path:
        return self.directory / TEMPLATE_FILE

    def load_template(self) -> dict[str, Any]:
        """The trainer config template; a missing one is the searchable 'Configuration file not found'."""
        if not self.template_path.is_file():
            raise ConfigError(
                f"Configuration file not found: {self.template_path} (profile {self.name!r} needs "
                f"its trainer template {TEMPLATE_FILE}; restore it or remove the profile folder)."
            )
        try:
            return tomllib.loads(self.template_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"Profile template {self.template_path} is not valid TOML: {exc}"
            ) from exc


def builtin_templates_dir() -> Path:
    """Built-in profiles: packaged next to the code in a wheel, `templates/` in a source checkout."""
    packaged = Path(__file__).parent / "_builtin_templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "templates"


def list_profiles(workspace_templates: Path | None = None) -> dict[str, Profile]:
    """Every usable profile by name; workspace ones replace built-in ones of the same name."""
    found: dict[str, Profile] = {}
    roots = [(builtin_templates_dir(), "builtin")]
    if workspace_templates is not None:
        roots.append((workspace_templates, "workspace"))
    for root, source in roots:
        if not root.is_dir():
            continue
        for directory in sorted(p for p in root.iterdir() if (p / DESCRIPTOR_FILE).is_file()):
            found[directory.name] = _read_descriptor(directory, source)
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def load_profile(name: str, workspace_templates: Path | None = None) -> Profile:
    """The profile called `name`, or an error listing the ones that exist."""
    profiles = list_profiles(workspace_templates)
    if name not in profiles:
        available = ", ".join(profiles) or "none"
        hint = _did_you_mean(name, list(profiles))
        raise ConfigError(f"Invalid profile '{name}'.{hint} Available: {available}")
    return profiles[name]


def _did_you_mean(name: str, known: list[str]) -> str:
    """` Did you mean 'FluxLORA'?` for a near miss (case-insensitive), else ``."""
    import difflib

    by_lower = {k.lower(): k for k in known}
    if name.lower() in by_lower:
        return f" Did you mean '{by_lower[name.lower()]}'?"
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" Did you mean '{by_lower[close[0]]}'?" if close else ""


def _read_descriptor(directory: Path, source: str) -> Profile:
    descriptor = directory / DESCRIPTOR_FILE
    try:
        data = tomllib.loads(descriptor.read_text(encoding="utf-8"))
        return Profile(name=directory.name, directory=directory, source=source, **data)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Profile descriptor {descriptor} is not valid TOML: {exc}") from exc
    except ValidationError as exc:
        raise ConfigError(f"Profile descriptor {descriptor} is invalid:\n{exc}") from exc


def profile_for(spec: JobSpec, settings: Settings) -> Profile:
    """The profile a job asked for, from the workspace's templates or the built-in ones."""
    from autotrain.workspace import Workspace

    return load_profile(spec.profile, Workspace(settings.workspace).templates_dir)
