"""The outcome of phase 3: everything phase 4 needs to start the trainer, JSON-safe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

__all__ = ["TrainPlan"]


class TrainPlan(BaseModel):
    """Files written (or, in a dry run, that would be) and what they imply."""

    name: str
    profile: str
    backend: str
    config_path: Path
    dataset_config_path: Path | None = None
    sample_prompts_path: Path
    model_dir: Path
    log_dir: Path
    total_steps: int
    save_every_n_steps: int | None = None
    host_memory_gb: float | None = Field(
        None, description="the profile's host RAM need, quoted when the trainer is SIGKILLed"
    )
    config: dict[str, Any] = Field(
        default_factory=dict, description="the trainer config as written"
    )
    dataset_config: dict[str, Any] | None = None
    sample_prompts: str = ""
    trainer_check_deferred: str | None = Field(
        None,
        description="why sd-scripts could not check the dataset at configure time; the "
        "train phase checks it before the trainer starts",
    )
    trainer_warnings: list[str] = Field(
        default_factory=list, description="what sd-scripts will train differently, per file"
    )

    @property
    def output_name(self) -> str:
        """The name the trainer gives its files; sd-scripts' own default is "last"."""
        return self.config.get("output_name") or "last"
