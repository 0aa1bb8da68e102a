"""Resume that continues: which saved state a retry starts from, and how each kohya script is told.

sd-scripts (reference commit 48d368fa) resumes each script differently, and none of them keeps
the true global step across a resume:

- `train_network.py` (so `flux_train_network.py`) reads `current_step` from the state's
  `train_state.json` (train_network.py:964-969). Without `--skip_until_initial_step` it restarts
  at the first batch of the epoch holding that step, with `global_step = 0` (:1270-1275). With the
  flag it skips the batches already trained, but sets `global_step` to the step within the epoch
  (:1340-1344) and, with gradient accumulation > 1, mixes batch and step units (:1266-1269).
  Its bar counts from 0 (:1357-1359).
- `flux_train.py` and `sdxl_train.py` restore weights, optimizer, scheduler and RNG
  (`accelerator.load_state`, library/train_util.py:4776-4779) and then run the whole schedule
  again from step 0 (flux_train.py:552-553, sdxl_train.py:595-596): no train state, no initial step.
- Every script names checkpoints and states after its own `global_step`
  (library/train_util.py:90-100, 5776-5778), so a resumed run would overwrite the first run's
  files and write a `train_state.json` counted from the restart (train_network.py:944-948).

autotrain therefore runs a resumed attempt under an output name of its own (`<name>.r<step>`;
sd-scripts lets the command line override the config file, library/train_util.py:4760-4761),
tells the script how much is left, and afterwards *folds* that attempt's files back: renamed to
true step numbers, `train_state.json` rewritten with the true step. The job record and the bar
show the true step (`ResumeLaunch.step_offset`). What each script then does is in
docs/sd-scripts-keys.md ("Resume").
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ResumeLaunch",
    "ResumeRecord",
    "plan_resume",
    "choose_state",
    "state_step",
    "state_is_complete",
    "fold_resumed_attempts",
    "final_path",
    "RECORD_FILE",
]

RECORD_FILE = ".autotrain-resume.json"

# Files `accelerator.save_state` writes that `load_state` cannot do without (accelerate
# checkpointing.py save_accelerator_state / load_accelerator_state: model weights, optimizer and
# scheduler are loaded with no existence check). train_state.json is written first, by the save
# hook (accelerator.py save_state runs pre-hooks before save_accelerator_state), so it proves
# nothing. The Tiny trainer writes its states atomically (tiny_trainer/state.py).
_KOHYA_REQUIRED = (
    ("model.safetensors", "pytorch_model.bin"),
    ("optimizer.bin",),
    ("scheduler.bin",),
)
_TINY_REQUIRED = (("train_state.json",), ("lora.safetensors",), ("optimizer.pt",))


@dataclass
class ResumeLaunch:
    """How one resumed attempt is started and how its numbers map back to the true step."""

    state: Path
    saved_step: int
    extra_args: list[str] = field(default_factory=list)
    output_name: str | None = None  # the attempt's own output name (kohya), folded afterwards
    step_offset: int = 0  # true step = the bar's step + step_offset
    name_offset: int = 0  # true step = the step in a file name + name_offset
    epoch_offset: int = 0  # the same for epoch numbers in file names
    retrained_steps: int = 0  # steps trained a second time, where the script allows no better
    end_step: int | None = None  # the true step the resumed run ends at
    note: str = ""


@dataclass
class ResumeRecord:
    """`model/.autotrain-resume.json`: what autotrain learned and the attempts still to fold."""

    batches_per_epoch: int | None = None  # as the first attempt printed it
    total_steps: int | None = None  # the first attempt's total optimization steps
    trainer: dict[str, str | None] = field(default_factory=dict)  # what wrote the states
    attempts: dict[str, dict[str, int]] = field(default_factory=dict)  # output name -> offsets

    @classmethod
    def load(cls, model_dir: Path) -> ResumeRecord:
        try:
            data = json.loads((model_dir / RECORD_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        return cls(
            data.get("batches_per_epoch"),
            data.get("total_steps"),
            data.get("trainer") or {},
            data.get("attempts", {}),
        )

    def save(self, model_dir: Path) -> None:
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = model_dir / f"{RECORD_FILE}.tmp"
        data = {
            "batches_per_epoch": self.batches_per_epoch,
            "total_steps": self.total_steps,
            "trainer": self.trainer,
            "attempts": self.attempts,
        }
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, model_dir / RECORD_FILE)


def state_is_complete(state: Path) -> bool:
    """Whether a state directory holds everything its trainer's load needs."""
    if not state.is_dir():
        return False
    required = _TINY_REQUIRED if (state / "lora.safetensors").exists() else _KOHYA_REQUIRED
    return all(any((state / name).is_file() for name in names) for names in required)


def state_step(state: Path, batches_per_epoch: int | None = None) -> int | None:
    """The true step a state was saved at: train_state.json, else its step or epoch in the name."""
    for key in ("current_step", "step"):  # kohya's network trainer / the Tiny trainer
        try:
            value = json.loads((state / "train_state.json").read_text(encoding="utf-8"))[key]
            return int(value)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if m := re.search(r"-step(\d{8})-state$", state.name):
        return int(m[1])
    if (m := re.search(r"-(\d{6})-state$", state.name)) and batches_per_epoch:
        return int(m[1]) * batches_per_epoch
    return None


def choose_state(
    model_dir: Path, output_name: str, since: float | None = None, total: int | None = None
) -> Path | None:
    """The newest complete intermediate state saved since `since` (the job's first attempt).

    Never the final `<output_name>-state` (saved before the final model, library/train_util.py
    save_state_on_train_end then the model: a crash in between would resume at the last step and
    fail every retry with "max_train_steps should be greater than initial step"), never one an
    attempt has not folded back yet, never an incomplete one: a crash while saving falls back to
    the state before it. Nor one at the `total` step or past it, for the same assertion.
    """
    if not model_dir.is_dir():
        return None
    pattern = re.compile(rf"^{re.escape(output_name)}-(?:step\d{{8}}|\d{{6}})-state$")
    record = ResumeRecord.load(model_dir)
    candidates = []
    for path in model_dir.iterdir():
        if not (path.is_dir() and pattern.match(path.name) and state_is_complete(path)):
            continue
        if since is not None and path.stat().st_mtime < since:
            continue
        step = state_step(path, record.batches_per_epoch)
        if total and step is not None and step >= total:
            continue
        candidates.append((step if step is not None else -1, path.stat().st_mtime_ns, path))
    return max(candidates, default=(0, 0, None))[2]


def plan_resume(
    script: str, state: Path, config: dict[str, Any], record: ResumeRecord, attempt: int
) -> ResumeLaunch:
    """The arguments and step mapping that make `script` continue from `state`.

    `record` holds what the first attempt printed: batches per epoch and total steps.
    """
    name = config.get("output_name") or "last"
    per_epoch = _steps_per_epoch(config, record.batches_per_epoch)
    if per_epoch is None and record.total_steps and config.get("max_train_epochs"):
        per_epoch = record.total_steps // int(config["max_train_epochs"])
    saved = state_step(state, per_epoch) or 0
    launch = ResumeLaunch(state=state, saved_step=saved, output_name=f"{name}.r{attempt}")
    launch.extra_args = ["--resume", str(state), "--output_name", launch.output_name]
    epoch_start = (saved // per_epoch) * per_epoch if per_epoch else 0
    total = record.total_steps or _total_steps(config, per_epoch)
    if _is_network_script(script):
        # It stops at global_step >= max_train_steps (train_network.py:1605-1606), but global_step
        # lags the true step after an epoch: from the second epoch on it runs out its epochs.
        launch.end_step = total
        if epoch_start and per_epoch and total and total % per_epoch:
            launch.end_step = math.ceil(total / per_epoch) * per_epoch
            launch.note = (
                f"; max_train_steps {total} is not a whole number of epochs of {per_epoch} steps, "
                f"so sd-scripts trains on to the end of its last epoch (step {launch.end_step}); "
                "use max_train_epochs to avoid this"
            )
        if int(config.get("gradient_accumulation_steps") or 1) == 1:
            # skip the batches already trained; global_step restarts inside the epoch
            launch.extra_args.append("--skip_until_initial_step")
            launch.step_offset = saved
            launch.note = (
                f"continues at step {saved} (skips the batches already trained)" + launch.note
            )
        else:
            # the skip arithmetic is wrong with accumulation: restart at the epoch's first batch
            launch.step_offset = epoch_start
            launch.retrained_steps = saved - epoch_start
            launch.note = (
                f"restarts at step {epoch_start}, the start of the epoch holding step {saved}"
                + launch.note
            )
        launch.name_offset = epoch_start
        return launch
    # Full fine-tune scripts start at step 0: give them only what is left of the schedule.
    launch.end_step = total
    if config.get("max_train_epochs") and per_epoch:
        done_epochs = saved // per_epoch
        left = max(1, int(config["max_train_epochs"]) - done_epochs)
        launch.extra_args += ["--max_train_epochs", str(left)]
        launch.step_offset = launch.name_offset = done_epochs * per_epoch
        launch.epoch_offset = done_epochs
        launch.retrained_steps = saved - done_epochs * per_epoch
        launch.note = (
            f"weights and optimizer from step {saved}; trains the {left} epoch(s) left, from "
            f"step {done_epochs * per_epoch}"
        )
    else:
        left = max(1, (total or saved + 1) - saved)
        launch.extra_args += ["--max_train_steps", str(left)]
        launch.step_offset = launch.name_offset = saved
        launch.note = f"weights and optimizer from step {saved}; trains the {left} steps left"
    return launch


def fold_resumed_attempts(model_dir: Path, output_name: str) -> list[tuple[Path, Path]]:
    """Rename every resumed attempt's files to true step numbers; returns (old, new) pairs.

    Safe to run again after a crash halfway: each rename is atomic, and an attempt leaves the
    record only once all its files are folded.
    """
    record = ResumeRecord.load(model_dir)
    moved: list[tuple[Path, Path]] = []
    for attempt_name, offsets in list(record.attempts.items()):
        for path in sorted(_attempt_files(model_dir, attempt_name)):
            target = path.with_name(_true_name(path.name, attempt_name, output_name, offsets))
            if path.is_dir() and target.is_dir():
                shutil.rmtree(target)
            os.replace(path, target)
            moved.append((path, target))
            if target.is_dir() and target.name.endswith("-state"):
                _rewrite_train_state(target, offsets.get("name", 0))
        del record.attempts[attempt_name]
        record.save(model_dir)
    return moved


def final_path(path: str, model_dir: Path) -> str:
    """The name a file of a resumed attempt (`<name>.r<attempt>...`) has once folded, for what
    monitors and run.json show while the attempt still writes under its own name; any other
    path as it is."""
    name = Path(path).name
    for attempt_name, offsets in ResumeRecord.load(model_dir).attempts.items():
        if (
            name.startswith(attempt_name)
            and name[len(attempt_name) : len(attempt_name) + 1] in "-_."
        ):
            output_name = attempt_name.rpartition(".r")[0]
            return str(Path(path).with_name(_true_name(name, attempt_name, output_name, offsets)))
    return path


def _attempt_files(model_dir: Path, attempt_name: str) -> list[Path]:
    found = [p for p in model_dir.iterdir() if p.name.startswith(attempt_name)]
    sample_dir = model_dir / "sample"
    if sample_dir.is_dir():
        found += [p for p in sample_dir.iterdir() if p.name.startswith(attempt_name + "_")]
    return found


def _true_name(filename: str, attempt_name: str, output_name: str, offsets: dict[str, int]) -> str:
    rest = filename[len(attempt_name) :]
    name_offset, epoch_offset = offsets.get("name", 0), offsets.get("epoch", 0)
    if m := re.match(r"^-step(\d{8})(.*)$", rest):  # step checkpoint or state
        return f"{output_name}-step{int(m[1]) + name_offset:08d}{m[2]}"
    if m := re.match(r"^-(\d{6})(.*)$", rest):  # epoch checkpoint or state
        return f"{output_name}-{int(m[1]) + epoch_offset:06d}{m[2]}"
    if m := re.match(r"^_(\d{6})_(.*)$", rest):  # sample image: <name>_<step>_<index>_...
        return f"{output_name}_{int(m[1]) + name_offset:06d}_{m[2]}"
    return output_name + rest  # the final model and state


def _rewrite_train_state(state: Path, name_offset: int) -> None:
    """A folded state's train_state.json counted the restarted steps: make it the true step."""
    file = state / "train_state.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if "current_step" in data and name_offset:
        data["current_step"] = int(data["current_step"]) + name_offset
        file.write_text(json.dumps(data), encoding="utf-8")


def _is_network_script(script: str) -> bool:
    return Path(script).name.endswith("train_network.py")


def _steps_per_epoch(config: dict[str, Any], batches_per_epoch: int | None) -> int | None:
    """Optimizer steps per epoch as sd-scripts counts them (train_network.py:1269)."""
    if not batches_per_epoch:
        return None
    return math.ceil(batches_per_epoch / int(config.get("gradient_accumulation_steps") or 1))


def _total_steps(config: dict[str, Any], per_epoch: int | None) -> int | None:
    if config.get("max_train_epochs") and per_epoch:
        return int(config["max_train_epochs"]) * per_epoch
    value = config.get("max_train_steps")
    return int(value) if value else None
