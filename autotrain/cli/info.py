"""`autotrain profiles list|show` and `autotrain config show`."""

from __future__ import annotations

import click

from autotrain.cli.common import console, literal, settings_of

__all__ = ["COMMANDS"]


@click.group("profiles")
def profiles_group() -> None:
    """Training profiles: built-in ones and the workspace's templates/<Profile>/."""


@profiles_group.command("list")
@click.pass_context
def profiles_list(ctx) -> None:
    """All profiles, with where each comes from.

    \b
    Example:
      autotrain profiles list
    """
    from rich.table import Table

    from autotrain.profile import list_profiles
    from autotrain.workspace import Workspace

    settings = settings_of(ctx)
    table = Table("profile", "backend", "script", "VRAM GB", "disk GB", "source", "description")
    for profile in list_profiles(Workspace(settings.workspace).templates_dir).values():
        cells = (profile.name, profile.backend, profile.script or "-", f"{profile.vram_gb:g}",
                 f"{profile.disk_gb:g}", profile.source, profile.description)  # fmt: skip
        table.add_row(*map(literal, cells))
    console.print(table)


@profiles_group.command("show")
@click.argument("name")
@click.pass_context
def profiles_show(ctx, name) -> None:
    """A profile's descriptor and its trainer template.

    \b
    Example:
      autotrain profiles show FluxLORA
    """
    import tomli_w

    from autotrain.profile import load_profile
    from autotrain.workspace import Workspace

    settings = settings_of(ctx)
    profile = load_profile(name, Workspace(settings.workspace).templates_dir)
    console.print(
        f"[bold]{literal(profile.name)}[/] ({profile.source}: {literal(profile.directory)})"
    )
    console.print(
        tomli_w.dumps(
            profile.model_dump(
                mode="json", exclude={"name", "directory", "source"}, exclude_none=True
            )
        ),
        markup=False,
    )
    console.rule("base.toml")
    console.print(tomli_w.dumps(profile.load_template()), markup=False)


@click.group("config")
def config_group() -> None:
    """Settings: defaults < autotrain.toml in the workspace < AUTOTRAIN_* env vars < options."""


@config_group.command("show")
@click.pass_context
def config_show(ctx) -> None:
    """The effective settings and where each value came from.

    \b
    Example:
      AUTOTRAIN_MIN_FREE_DISK_GB=20 autotrain config show
    """
    from rich.table import Table

    from autotrain.hosts import shown_url
    from autotrain.settings import setting_sources

    settings = settings_of(ctx)
    sources = setting_sources(settings)
    table = Table("setting", "value", "source", "env var")
    for name, _field in type(settings).model_fields.items():
        value = getattr(settings, name)
        if name == "redis_url" and value:
            value = shown_url(value)  # its password masked, like the SecretStr settings
        shown = "-" if value is None else value
        table.add_row(name, literal(shown), literal(sources[name]), f"AUTOTRAIN_{name.upper()}")
    console.print(table)


COMMANDS = [profiles_group, config_group]
