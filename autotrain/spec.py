"""What a user asks for, per dataset: the input every phase reads. JSON-safe, so it travels in tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from autotrain.workspace import check_dataset_name, slugify_name

__all__ = ["JobSpec", "parse_gpu_ids"]


class JobSpec(BaseModel):
    """One dataset to train with one profile, and how to treat it."""

    model_config = ConfigDict(extra="forbid")

    dataset_path: Path
    name: str
    profile: str
    min_images: int = Field(1, ge=0)
    skip_copy: bool = False
    force: bool = False
    gpu_ids: list[int] = Field(default_factory=list, description="pin to these GPUs of one host")
    host: str | None = Field(None, description="the host whose GPUs gpu_ids names")
    batch_id: str | None = None
    notify_urls: list[str] = Field(default_factory=list, description="Apprise URLs for its end")
    priority: Literal["high", "normal", "low"] = "normal"

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_dataset_name(value)

    @classmethod
    def for_dataset(
        cls, dataset_path: Path | str, profile: str, name: str | None = None, **options
    ):
        """A spec whose name defaults to the slugified folder name, as the CLI does."""
        path = Path(dataset_path).expanduser()
        resolved = path.resolve() if path.exists() else path.absolute()
        return cls(
            dataset_path=resolved,
            name=name or slugify_name(resolved.name),
            profile=profile,
            **options,
        )


def parse_gpu_ids(value: str | None) -> list[int]:
    """`"0,1"` -> [0, 1]; refuses anything but distinct non-negative integers."""
    if not value:
        return []
    ids: list[int] = []
    for part in value.split(","):
        part = part.strip()
        if not part.isdigit():
            raise ValueError(
                f'Invalid GPU id {part!r} in --gpu-ids {value!r}: use e.g. "0" or "0,1".'
            )
        if int(part) in ids:
            raise ValueError(f"GPU id {part} appears twice in --gpu-ids {value!r}.")
        ids.append(int(part))
    return ids
