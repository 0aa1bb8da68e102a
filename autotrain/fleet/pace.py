"""How fast a profile trains on a GPU model, measured from the runs that finished there.

After each successful run the training task records three numbers per profile and GPU model:
the trainer's seconds per step, its startup (train task start to first step: imports, model
loading, latent caching) and its tail (last step to exit: the final save). They are running
means in one Redis hash (`autotrain:pace`), so every host's forecast uses every host's runs.
The queue ETA (autotrain.fleet.eta) reads them; until a profile ran on a GPU model, the same profile
on other models stands in, and before any run the profile's own `seconds_per_step` and
`startup_seconds`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import redis

from autotrain.fleet.registry import WorkerRecord
from autotrain.jobs import keys
from autotrain.profile import Profile
from autotrain.trainers.training import TrainerRun

__all__ = ["Pace", "record_pace", "read_paces", "pace_for", "own_gpu_model"]

# Later runs weigh this much: the pace follows a driver upgrade or a slower dataset within a few
# runs, and one odd run moves it little.
_NEW_RUN_WEIGHT = 0.3


@dataclass(frozen=True)
class Pace:
    seconds_per_step: float
    startup_seconds: float
    tail_seconds: float
    runs: int  # finished runs measured; 0 = the profile's defaults
    source: str  # in words, for `train show`
    typical_steps: int = 0  # a run's steps, for a job not yet configured (0: unknown)

    def seconds(self, steps: int) -> float:
        """A whole run of `steps` steps, from its train task's start to the trainer's exit."""
        return self.startup_seconds + steps * self.seconds_per_step + self.tail_seconds


def own_gpu_model() -> str:
    """The model of this worker's GPU, as its supervisor discovered it (paces are kept by the
    model, autotrain.fleet.registry.WorkerRecord.model)."""
    own = WorkerRecord(name="", gpu=os.environ.get("AUTOTRAIN_GPU_INDEX", ""),
                       gpu_name=os.environ.get("AUTOTRAIN_GPU_NAME", ""))  # fmt: skip
    return own.model


def record_pace(client: redis.Redis, profile: str, model: str, run: TrainerRun,
                attempt_started_at: float) -> Pace | None:  # fmt: skip
    """Fold a successful run into the pace of `profile` on `model`; None when the run says
    too little (failed, or fewer than two steps seen)."""
    steps = run.last_step - run.first_step
    if not run.succeeded or steps < 1 or run.first_step_at is None or run.last_step_at is None:
        return None
    per_step = (run.last_step_at - run.first_step_at) / steps
    measured = {
        "seconds_per_step": per_step,
        # the first step's own time is a step, not startup
        "startup_seconds": max(0.0, run.first_step_at - attempt_started_at - per_step),
        "tail_seconds": max(0.0, run.finished_at - run.last_step_at),
        "steps": float(run.total or run.last_step),  # for jobs whose total is not known yet
    }
    field = f"{profile}\t{model}"

    def fold(pipe: redis.client.Pipeline) -> dict:
        raw = pipe.hget(keys.PACE, field)
        old = json.loads(raw) if raw else None
        runs = (old or {}).get("runs", 0) + 1
        weight = max(_NEW_RUN_WEIGHT, 1 / runs)  # a plain mean over the first few runs
        new = {k: v if k not in (old or {}) else old[k] + weight * (v - old[k])
               for k, v in measured.items()}  # fmt: skip
        pipe.multi()
        pipe.hset(keys.PACE, field, json.dumps({**new, "runs": runs}))
        return {**new, "runs": runs}

    folded = client.transaction(fold, keys.PACE, value_from_callable=True)
    return _pace(folded, f"measured on {model} over {folded['runs']} run(s)")


def read_paces(client: redis.Redis) -> dict[tuple[str, str], dict]:
    """Every measured pace by (profile, GPU model), in one round trip."""
    paces = {}
    for field, raw in client.hgetall(keys.PACE).items():
        profile, _, model = field.partition("\t")
        try:
            paces[(profile, model)] = json.loads(raw)
        except ValueError:
            continue
    return paces


def pace_for(paces: dict[tuple[str, str], dict], profile: Profile, model: str,
             live: dict[tuple[str, str], list[tuple[float, float]]] | None = None) -> Pace:  # fmt: skip
    """The pace of `profile` on `model`: measured there; else the live rate of its jobs training
    there now (`live`: (seconds per step, startup) of each); else the mean over the other models
    it ran on; else the profile's defaults."""
    if (measured := paces.get((profile.name, model))) is not None:
        return _pace(measured, f"measured on {model} over {measured['runs']} run(s)")
    if observed := (live or {}).get((profile.name, model)):
        per_step = sum(o[0] for o in observed) / len(observed)
        startup = max(o[1] for o in observed)
        return Pace(per_step, startup, 0.0, 0,
                    f"the live rate of {len(observed)} job(s) training on {model} now")  # fmt: skip
    elsewhere = [p for (name, _), p in paces.items() if name == profile.name]
    if elsewhere:
        mean = {k: sum(p.get(k, 0) for p in elsewhere) / len(elsewhere)
                for k in ("seconds_per_step", "startup_seconds", "tail_seconds", "steps")}  # fmt: skip
        runs = sum(p["runs"] for p in elsewhere)
        return _pace({**mean, "runs": runs}, f"measured on other GPU models, not yet on {model}")
    return Pace(profile.seconds_per_step, profile.startup_seconds, 0.0, 0,
                f"profile {profile.name}'s default; no run of it has finished yet")  # fmt: skip


def _pace(values: dict, source: str) -> Pace:
    return Pace(values["seconds_per_step"], values["startup_seconds"], values["tail_seconds"],
                values["runs"], source, round(values.get("steps", 0)))  # fmt: skip
