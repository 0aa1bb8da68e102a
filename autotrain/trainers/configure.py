"""Phase 3: a profile's trainer template plus one dataset become the files the trainer reads.

`render_plan` is pure (a dry run prints its result); `write_plan` writes the files atomically.
The trainer config follows kohya sd-scripts' `--config_file` rules, which the built-in Tiny trainer
shares: a flat TOML table whose keys are the trainer's argument names. sd-scripts merges one level
of tables into that flat namespace, so a template may group keys in tables; the written config
is flattened the same way, so it shows exactly what the trainer will see.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import tomli_w

from autotrain.errors import ConfigError
from autotrain.profile import Profile
from autotrain.settings import Settings
from autotrain.spec import JobSpec
from autotrain.trainers.plan import TrainPlan
from autotrain.workspace import Workspace

__all__ = [
    "render_plan",
    "write_plan",
    "configure_job",
    "flatten_template",
    "sample_prompt_line",
    "clean_prompt_text",
    "estimate_total_steps",
    "TrainSubset",
    "CAPTION_EXTENSION",
    "KOHYA_DEFAULT_MAX_TRAIN_STEPS",
]

CAPTION_EXTENSION = ".txt"
# sd-scripts' own default when a config sets neither max_train_steps nor max_train_epochs.
KOHYA_DEFAULT_MAX_TRAIN_STEPS = 1600


class TrainSubset(NamedTuple):
    """One staged folder as the trainer sees it: repeats defaulted, class tokens chosen."""

    relpath: str
    repeats: int
    image_count: int
    class_tokens: str


class SubsetLike(Protocol):
    relpath: str
    repeats: int | None
    image_count: int


class ReportLike(Protocol):
    """What phase 3 reads from phase 1's ValidationReport."""

    name: str
    subsets: list[SubsetLike]
    images: list[Any]


def configure_job(
    spec: JobSpec, profile: Profile, settings: Settings, report: ReportLike, variant: int = 0
) -> TrainPlan:
    """Render and write one dataset's trainer files; returns what was written."""
    plan = render_plan(spec, profile, settings, report, variant)
    write_plan(plan)
    return plan


def render_plan(
    spec: JobSpec, profile: Profile, settings: Settings, report: ReportLike, variant: int = 0
) -> TrainPlan:
    """Everything phase 3 would write, computed without touching the disk.

    `variant` N > 0 applies the overrides of the profile's N-th leaner variant (its ladder).
    """
    workspace = Workspace(settings.workspace)
    name = spec.name
    config = flatten_template(profile.load_template(), profile.template_path)
    config.update(
        output_dir=str(workspace.model_dir(name)),
        output_name=name,
        logging_dir=str(workspace.log_dir(name)),
        sample_prompts=str(workspace.sample_prompts_file(name)),
    )
    if profile.backend == "kohya":
        # accelerate launch gets the same value; sd-scripts asserts full_bf16 etc. against it.
        config["mixed_precision"] = profile.mixed_precision
    config.update(_model_paths(profile, settings))
    if leaner := profile.variant(variant):
        config.update(leaner.overrides)
    _keep_a_state_to_fall_back_to(config)

    class_tokens = profile.class_tokens.replace("{name}", name)
    subsets = _effective_subsets(report, profile, class_tokens)
    dataset_config: dict[str, Any] | None = None
    dataset_config_path: Path | None = None
    if profile.dataset_config:
        dataset_config_path = workspace.dataset_config_file(profile.name, name)
        dataset_config = _dataset_config(workspace.input_dir(name), profile, subsets)
        config["dataset_config"] = str(dataset_config_path)
    else:
        config["train_data_dir"] = str(workspace.input_dir(name))
        config["num_repeats"] = _single_repeats(subsets, profile)

    total = estimate_total_steps(config, subsets, num_processes=max(1, len(spec.gpu_ids)))
    return TrainPlan(
        name=name,
        profile=profile.name,
        backend=profile.backend,
        config_path=workspace.config_file(profile.name, name),
        dataset_config_path=dataset_config_path,
        sample_prompts_path=workspace.sample_prompts_file(name),
        model_dir=workspace.model_dir(name),
        log_dir=workspace.log_dir(name),
        total_steps=total,
        save_every_n_steps=_save_interval(config, subsets, max(1, len(spec.gpu_ids))),
        host_memory_gb=profile.host_memory_gb,
        config=config,
        dataset_config=dataset_config,
        sample_prompts=sample_prompt_line(profile, name, class_tokens) + "\n",
    )


def write_plan(plan: TrainPlan) -> None:
    """Write the trainer config, dataset config and sample prompts, each atomically."""
    _write_atomic(plan.config_path, tomli_w.dumps(plan.config))
    if plan.dataset_config_path is not None and plan.dataset_config is not None:
        _write_atomic(plan.dataset_config_path, tomli_w.dumps(plan.dataset_config))
    _write_atomic(plan.sample_prompts_path, plan.sample_prompts)


def flatten_template(template: dict[str, Any], source: Path) -> dict[str, Any]:
    """sd-scripts' view of a config file: one level of tables merged into one table, later wins."""
    flat: dict[str, Any] = {}
    for key, value in template.items():
        if not isinstance(value, dict):
            flat[key] = value
            continue
        for inner_key, inner_value in value.items():
            if isinstance(inner_value, dict):
                raise ConfigError(
                    f"Profile template {source}: [{key}.{inner_key}] is nested two levels deep; "
                    "the trainer reads keys at the top level or in one level of tables only."
                )
            flat[inner_key] = inner_value
    return flat


def estimate_total_steps(
    config: dict[str, Any], subsets: list[TrainSubset], num_processes: int = 1
) -> int:
    """Optimisation steps the trainer will run, by kohya's arithmetic.

    With `max_train_epochs` set, kohya runs epochs * ceil(batches / processes / accumulation)
    steps, where batches = ceil(images * repeats / train_batch_size). Aspect-ratio buckets can add
    a few partial batches when train_batch_size > 1, so this is exact for batch size 1 and a close
    estimate otherwise; the trainer's own count (parsed from its output) wins at run time.
    """
    epochs = config.get("max_train_epochs")
    if not epochs:
        return int(config.get("max_train_steps") or KOHYA_DEFAULT_MAX_TRAIN_STEPS)
    return int(epochs) * _steps_per_epoch(config, subsets, num_processes)


def sample_prompt_line(profile: Profile, name: str, class_tokens: str) -> str:
    """One line of kohya's prompt file: `<prompt> --n <negative> --w W --h H --s S --d SEED --l G`.

    kohya splits the line on " --" and then also matches option letters at the start of the
    prompt itself, so user text is cleaned and a prompt that would read as an option is guarded.
    """
    sample = profile.sample
    prompt = clean_prompt_text(
        sample.prompt.replace("{class_tokens}", class_tokens).replace("{name}", name)
    )
    prompt = prompt or clean_prompt_text(class_tokens) or name
    if _OPTION_LIKE.match(prompt):
        prompt = ", " + prompt  # a leading comma is neutral to the text encoders
    parts = [prompt]
    negative = clean_prompt_text(sample.negative.replace("{name}", name))
    if negative:
        parts.append(f"--n {negative}")
    parts += [
        f"--w {sample.width}",
        f"--h {sample.height}",
        f"--s {sample.steps}",
        f"--d {sample.seed}",
        f"--{sample.guidance_option} {_decimal(sample.guidance)}",
    ]
    return " ".join(parts)


def clean_prompt_text(text: str) -> str:
    """Text safe inside one prompt line: no line breaks or control characters, no ` --`."""
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = re.sub(r"-{2,}", "-", text)  # "--" after a space would start an option
    return " ".join(text.split())


# kohya's line parser applies these option patterns to the prompt part too; '#' starts a comment.
_OPTION_LIKE = re.compile(r"(?i)(?:#|(?:[whdslgn]|ss|cn|ctr|rcfg|fs) )")


def _decimal(value: float) -> str:
    """kohya reads `[\\d.]+`, so no exponent: 3.5 -> "3.5", 7.0 -> "7", 1e-5 -> "0.00001"."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def _model_paths(profile: Profile, settings: Settings) -> dict[str, str]:
    """Trainer keys naming model files, from the settings the profile maps them to."""
    paths: dict[str, str] = {}
    for key, field in profile.models.items():
        if field not in Settings.model_fields:
            raise ConfigError(
                f"Profile {profile.name} ({profile.directory / 'profile.toml'}) maps {key!r} to "
                f"unknown setting {field!r}; use one of: "
                + ", ".join(f for f in Settings.model_fields if f not in ("workspace",))
            )
        value = getattr(settings, field)
        if value is not None:
            paths[key] = str(value)
    return paths


def _effective_subsets(
    report: ReportLike, profile: Profile, class_tokens: str
) -> list[TrainSubset]:
    """Subsets holding images; a kohya `N_tokens/` folder's own repeats and tokens win."""
    found = []
    for subset in report.subsets:
        if subset.image_count <= 0:
            continue
        repeats = subset.repeats if subset.repeats is not None else profile.repeats
        tokens = getattr(subset, "class_tokens", None) or class_tokens
        found.append(TrainSubset(subset.relpath, int(repeats), int(subset.image_count), tokens))
    if not found:
        raise ConfigError(
            f"Dataset {report.name!r} has no images to train on ({len(report.images)} passed "
            "validation); add captioned images and run it again."
        )
    return found


def _dataset_config(
    input_dir: Path, profile: Profile, subsets: list[TrainSubset]
) -> dict[str, Any]:
    """kohya's `--dataset_config`: one DreamBooth-style dataset, one subset per staged folder.

    Bucketing, batch size and caption options fall back to the trainer config's own keys.
    """
    entries = [
        {
            "image_dir": str(_inside(input_dir, subset.relpath)),
            "num_repeats": subset.repeats,
            "class_tokens": subset.class_tokens,
        }
        for subset in subsets
    ]
    return {
        "general": {"caption_extension": CAPTION_EXTENSION, "resolution": profile.resolution},
        "datasets": [{"subsets": entries}],
    }


def _inside(root: Path, relpath: str) -> Path:
    path = (root / relpath).resolve() if relpath not in ("", ".") else root
    if not path.is_relative_to(root):
        raise ConfigError(f"Subset folder {relpath!r} would leave the staged dataset {root}.")
    return path


def _single_repeats(subsets: list[TrainSubset], profile: Profile) -> int:
    """Trainers without a dataset config take one repeat count: the subsets' if they agree."""
    counts = {subset.repeats for subset in subsets}
    return counts.pop() if len(counts) == 1 else profile.repeats


def _steps_per_epoch(config: dict[str, Any], subsets: list[TrainSubset], processes: int) -> int:
    batch = max(1, int(config.get("train_batch_size") or 1))
    accumulation = max(1, int(config.get("gradient_accumulation_steps") or 1))
    samples = sum(subset.repeats * subset.image_count for subset in subsets)
    return math.ceil(math.ceil(samples / batch) / processes / accumulation)


def _save_interval(
    config: dict[str, Any], subsets: list[TrainSubset], processes: int
) -> int | None:
    """Steps between checkpoints; epoch-based saving is converted for the progress display."""
    if config.get("save_every_n_steps"):
        return int(config["save_every_n_steps"])
    if config.get("save_every_n_epochs"):
        return int(config["save_every_n_epochs"]) * _steps_per_epoch(config, subsets, processes)
    return None


def _keep_a_state_to_fall_back_to(config: dict[str, Any]) -> None:
    """Keep at least the two newest step states, so one bad save costs one interval, not all.

    sd-scripts removes the state `save_last_n_steps_state` steps behind the one it just saved
    (library/train_util.py:5973-5983); below one interval that leaves a single state.
    """
    every = config.get("save_every_n_steps")
    keep = config.get("save_last_n_steps_state") or config.get("save_last_n_steps")
    if config.get("save_state") and every and keep and int(keep) < int(every):
        config["save_last_n_steps_state"] = int(every)


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder, so readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
