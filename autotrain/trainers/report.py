"""Phase 5: check the artifacts, write `output/<name>/run.json` and the loss curve.

run.json answers "what exactly produced these weights?" months later: the dataset manifest
(files, sizes, hashes), profile, resolved config, trainer command, host, GPU, timings and result.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from autotrain.errors import TrainingError
from autotrain.formatting import iso_time
from autotrain.settings import Settings
from autotrain.spec import JobSpec
from autotrain.trainers.contact_sheet import SHEET_NAME, write_contact_sheet
from autotrain.trainers.outputs import sample_images
from autotrain.trainers.plan import TrainPlan
from autotrain.workspace import MANIFEST_NAME, Workspace

__all__ = [
    "write_run_report",
    "write_loss_curve",
    "find_weights",
    "finished_weights",
    "safetensors_complete",
    "find_samples",
]


def write_run_report(
    spec: JobSpec, plan: TrainPlan, settings: Settings, run_info: dict[str, Any]
) -> dict[str, Any]:
    """Verify the final weights exist, then write run.json, loss.png and samples.png."""
    workspace = Workspace(settings.workspace)
    weights = find_weights(plan)
    if not weights:
        raise TrainingError(
            f"The trainer finished but no weights were found in {plan.model_dir} "
            f"(expected {plan.output_name}.safetensors); see "
            f"{plan.log_dir / 'trainer.log'}."
        )
    losses = [tuple(p) for p in run_info.get("loss_history", []) if p[1] is not None]
    curve = write_loss_curve(
        losses, plan.log_dir / "loss.png", title=f"{spec.name} ({spec.profile})"
    )
    manifest = {
        "name": spec.name,
        "profile": spec.profile,
        "result": run_info.get("result", "succeeded"),
        "dataset": {
            "source": str(spec.dataset_path),
            "staged": str(workspace.input_dir(spec.name)),
            "files": _dataset_manifest(workspace.input_dir(spec.name)),
        },
        "config": {
            "path": str(plan.config_path),
            "values": plan.config,
            "dataset_config_path": str(plan.dataset_config_path)
            if plan.dataset_config_path
            else None,
            "dataset_config": plan.dataset_config,
        },
        "trainer": {
            "backend": plan.backend,
            "command": run_info.get("command"),
            "version": run_info.get("trainer_version"),
            "resumed_from": run_info.get("resumed_from"),
            "attempts": run_info.get("attempts", 1),
            "attempts_log": [_iso_times(a) for a in run_info.get("attempts_log", [])],
        },
        "host": run_info.get("host") or platform.node(),
        "gpu": run_info.get("gpu"),
        "timings": _iso_times(run_info.get("timings", {})),
        "steps": {"done": run_info.get("last_step"), "total": plan.total_steps},
        "final_loss": losses[-1][1] if losses else run_info.get("last_loss"),
        "weights": [_file_entry(p) for p in weights],
        "samples": [str(p) for p in find_samples(plan)],
        "samples_sheet": _str_or_none(
            write_contact_sheet(
                plan.model_dir / "sample",
                plan.output_name,
                workspace.output_dir(spec.name) / SHEET_NAME,
            )
        ),
        "loss_curve": str(curve) if curve else None,
        "written_at": iso_time(time.time()),
    }
    if run_info.get("storage"):  # the store's traffic and time (autotrain.storage), by phase
        manifest["storage"] = run_info["storage"]
    target = workspace.run_manifest_file(spec.name)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, target)
    return manifest


def _iso_times(values: dict[str, Any]) -> dict[str, Any]:
    """Every `*_at` timestamp as ISO 8601 (UTC), for people and for other tools alike."""
    return {k: iso_time(v) if k.endswith("_at") and isinstance(v, int | float) else v
            for k, v in values.items()}  # fmt: skip


def find_weights(plan: TrainPlan) -> list[Path]:
    """The final weights first, then any step checkpoints."""
    final = plan.model_dir / f"{plan.output_name}.safetensors"
    others = sorted(p for p in plan.model_dir.glob("*.safetensors") if p != final)
    return [final, *others] if final.is_file() else []


def finished_weights(plan: TrainPlan, since: float) -> Path | None:
    """The final weights, if a trainer of this job (since `since`) wrote them completely.

    Trainers write the final model last (after the final state), so complete final weights
    mean the training finished even if its worker died before recording it.
    """
    weights = find_weights(plan)
    if not weights or weights[0].stat().st_mtime < since:
        return None
    return weights[0] if safetensors_complete(weights[0]) else None


def safetensors_complete(path: Path) -> bool:
    """Whether a .safetensors file holds its whole header and every tensor it declares."""
    try:
        with open(path, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            if header_size <= 0 or header_size > 100 << 20:
                return False
            header = json.loads(handle.read(header_size))
        ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
        return path.stat().st_size == 8 + header_size + max(ends, default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def find_samples(plan: TrainPlan, newest: int = 8) -> list[Path]:
    """The newest sample images the trainer wrote under `<model_dir>/sample/`."""
    return sample_images(plan.model_dir / "sample")[-newest:]


def write_loss_curve(losses: list[tuple[int, float]], target: Path, title: str) -> Path | None:
    """A PNG of loss against step (raw and smoothed); None when there is nothing to plot."""
    if not losses:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s for s, _ in losses]
    values = [v for _, v in losses]
    window = max(1, len(values) // 20)
    smooth = [_mean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(steps, values, alpha=0.35, label="loss")
    ax.plot(steps, smooth, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target)
    plt.close(fig)
    return target


def _str_or_none(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _dataset_manifest(staged_dir: Path) -> list[dict[str, Any]]:
    manifest = staged_dir / MANIFEST_NAME
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return data.get("files", data) if isinstance(data, dict) else data


def _file_entry(path: Path) -> dict[str, Any]:
    return {"path": str(path), "size": path.stat().st_size}
