"""Effective settings: defaults < `autotrain.toml` in the workspace < `AUTOTRAIN_*` env vars < options.

The workspace itself is chosen first (option, then `AUTOTRAIN_WORKSPACE`, then the current directory)
because it decides which config file is read.
"""

from __future__ import annotations

import os
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = [
    "StoreLocation",
    "parse_storage_url",
    "Settings",
    "load_settings",
    "setting_sources",
    "CONFIG_FILE_NAME",
    "ENV_PREFIX",
]

CONFIG_FILE_NAME = "autotrain.toml"
ENV_PREFIX = "AUTOTRAIN_"


@dataclass(frozen=True)
class StoreLocation:
    """Where `storage_url` points: a bucket, and a prefix ("" or ending in "/") inside it."""

    bucket: str
    prefix: str


def parse_storage_url(url: str) -> StoreLocation:
    """`s3://bucket/prefix` as a bucket and a prefix; a ValueError naming the value otherwise."""
    scheme, _, rest = url.partition("://")
    bucket, _, prefix = rest.partition("/")
    if scheme != "s3" or not bucket or any(c in bucket for c in " \\?#@:"):
        raise ValueError(
            f"storage_url {url!r} is not an S3 location: write it as s3://<bucket>/<prefix> "
            "(the endpoint of a service other than AWS goes in AWS_ENDPOINT_URL, not in the URL)"
        )
    prefix = prefix.strip("/")
    return StoreLocation(bucket, f"{prefix}/" if prefix else "")


class Settings(BaseSettings):
    """Everything a deployment can tune. Each field maps to `AUTOTRAIN_<FIELD>` and a config key."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    workspace: Path = Field(default_factory=Path.cwd, description="Workspace root")
    redis_url: str | None = Field(
        None, description="Shared Redis (redis:// or rediss://); unset = embedded local Redis"
    )
    storage_url: str | None = Field(
        None,
        description="S3 store the hosts share instead of a shared workspace (s3://bucket/prefix; "
        "endpoint and keys from the standard AWS variables); unset = a shared folder",
    )
    preempt_seconds: float = Field(
        120.0,
        description="On SIGTERM or --drain: time a worker takes to upload the newest state and "
        "give its running jobs back before it stops",
    )
    min_free_disk_gb: float = Field(
        5.0, description="Free space kept on the workspace disk, besides each profile's own need"
    )

    sd_scripts_dir: Path | None = Field(None, description="kohya-ss sd-scripts checkout")
    sd_scripts_python: str | None = Field(
        None, description="Python that runs sd-scripts (its venv); default: this Python"
    )
    flux_model: Path | None = Field(None, description="Flux transformer .safetensors")
    clip_l: Path | None = Field(None, description="CLIP-L text encoder .safetensors")
    t5xxl: Path | None = Field(None, description="T5-XXL text encoder .safetensors")
    ae: Path | None = Field(None, description="Flux autoencoder ae.safetensors")
    sdxl_model: Path | None = Field(None, description="SDXL base checkpoint .safetensors")

    lease_seconds: float = Field(30.0, description="A training job's lease; renewed every third")
    max_attempts: int = Field(
        3, description="Training attempts before a job that kills its worker fails"
    )
    cancel_grace_seconds: float = Field(5.0, description="SIGTERM to SIGKILL delay when cancelling")
    progress_stream_maxlen: int = Field(5000, description="Events kept per job progress stream")
    retention_days: float = Field(
        7.0,
        description="Days a finished job's progress events and reports stay in Redis (its record "
        "stays until `train prune`)",
    )

    max_jobs_per_gpu: int = Field(
        1, ge=1, description="Jobs a GPU worker may train at once, memory permitting"
    )
    suspect_gpu_failures: int = Field(
        2, ge=1, description="NCCL/hardware failures in a day that mark a GPU suspect"
    )
    vram_margin_gb: float = Field(
        0.5, ge=0, description="GiB kept free on a GPU beyond a job's need"
    )
    stall_factor: float = Field(
        6.0, description="A trainer silent this many times its slowest recent step is stalled"
    )
    stall_floor_seconds: float = Field(120.0, description="The stall budget never goes below this")
    stall_ceiling_seconds: float = Field(3600.0, description="... nor above this")
    stall_startup_seconds: float = Field(
        1800.0, description="Silence allowed before the first step and after a save or sample"
    )
    notify_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Apprise URLs told when each job and batch ends (json://, ntfy://, discord://...)",
    )
    flower_address: str = Field("127.0.0.1", description="Flower listen address")
    flower_port: int = Field(5555, description="Flower port")
    flower_user: str = Field("admin", description="Flower basic-auth user")
    flower_password: SecretStr | None = Field(
        None, description="Flower basic-auth password; unset = no auth (loopback only)"
    )
    flower_public_metrics: bool = Field(
        False, description="Serve Flower's /metrics (Prometheus) without its credential"
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names the dashboard and Flower answer to besides their address and "
        "loopback (a DNS name or proxy in front of them); others get 400",
    )
    dashboard_address: str = Field(
        "127.0.0.1", description="Dashboard listen address (beyond loopback needs a credential)"
    )
    dashboard_port: int = Field(8642, description="Dashboard port")
    dashboard_token: SecretStr | None = Field(
        None,
        description="Dashboard access token (`?token=`, then a cookie); the Flower password "
        "(basic auth) works too",
    )

    @field_validator("storage_url")
    @classmethod
    def _storage_location(cls, value: str | None) -> str | None:
        if value:
            parse_storage_url(value)  # raises with the value and the fix
        return value or None

    @field_validator("notify_urls", "allowed_hosts", mode="before")
    @classmethod
    def _list_from_text(cls, value: Any) -> Any:
        """AUTOTRAIN_NOTIFY_URLS and AUTOTRAIN_ALLOWED_HOSTS may be a JSON list or comma-separated."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [url.strip() for url in text.split(",") if url.strip()]
        return value

    def trusted_hosts(self, address: str) -> list[str]:
        """The Host header values a server on `address` answers to: loopback names, the address
        itself and `allowed_hosts`. A page of another origin that re-binds its DNS name to
        127.0.0.1 sends its own name, and is refused."""
        names = ["127.0.0.1", "localhost", "::1", "[::1]", *self.allowed_hosts]
        if address not in ("0.0.0.0", "::", ""):
            names.append(address)
        return names

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _config_file.get()
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @property
    def python_for_sd_scripts(self) -> str:
        return self.sd_scripts_python or sys.executable


# The config file is per workspace, so load_settings hands it to the source hook above.
_config_file: ContextVar[Path | None] = ContextVar("autotrain_config_file", default=None)


def resolve_workspace(workspace: Path | str | None = None) -> Path:
    """The workspace root: explicit value, then AUTOTRAIN_WORKSPACE, then the current directory."""
    chosen = workspace or os.environ.get(f"{ENV_PREFIX}WORKSPACE") or Path.cwd()
    return Path(chosen).expanduser().resolve()


def load_settings(workspace: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the effective settings for a workspace; `overrides` win over everything else."""
    root = resolve_workspace(workspace)
    config_file = root / CONFIG_FILE_NAME
    token = _config_file.set(config_file if config_file.is_file() else None)
    try:
        values = {k: v for k, v in overrides.items() if v is not None}
        return Settings(workspace=root, **values)
    finally:
        _config_file.reset(token)


def setting_sources(settings: Settings, **overrides: Any) -> dict[str, str]:
    """Where each effective value came from: option, env, config file or default."""
    import tomllib

    config_file = settings.workspace / CONFIG_FILE_NAME
    file_values: dict[str, Any] = {}
    if config_file.is_file():
        file_values = tomllib.loads(config_file.read_text(encoding="utf-8"))
    sources: dict[str, str] = {}
    for name in Settings.model_fields:
        if overrides.get(name) is not None:
            sources[name] = "option"
        elif f"{ENV_PREFIX}{name.upper()}" in os.environ:
            sources[name] = f"env {ENV_PREFIX}{name.upper()}"
        elif name in file_values:
            sources[name] = f"file {config_file}"
        elif name == "workspace":
            sources[name] = "current directory"
        else:
            sources[name] = "default"
    return sources
