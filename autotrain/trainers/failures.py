"""Tell a trainer's failure from the rest of its output: the line that says why, a hint, a cause.

A known error (CUDA out of memory, NCCL, a GPU fault, a broken model file, a missing module or
model file, a process SIGKILLed under `accelerate launch`) is recognised on any line. Any other exception counts only as the last line of a
traceback, so the trainer's harmless mentions of "Error" are not failures. The cause decides what
a failed run leads to (`autotrain.worker.recovery`): "oom" steps down the profile's ladder,
"nccl" and "hardware" queue the job again away from that GPU, the others fail it at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Failure", "FailureReader", "killed_by_sigkill", "sigkill_message"]


@dataclass(frozen=True, slots=True)
class Failure:
    """What a failure line means: `hint` tells the user what to do; `cause` is None for "other"."""

    hint: str
    cause: str | None = None  # oom, nccl, hardware, bad file, setup, killed


class FailureReader:
    """Reads a trainer's output one logical line at a time (a traceback spans several)."""

    def __init__(self) -> None:
        self._in_traceback = False

    def read(self, text: str) -> Failure | None:
        """The failure this line reports, or None."""
        if _TRACEBACK.match(text):
            self._in_traceback = True
            return None
        for pattern, hint, cause in _ERRORS:
            if pattern.search(text):
                self._in_traceback = False
                return Failure(hint, cause)
        missing = _MISSING_PATH.search(text)
        if missing and ("FileNotFoundError" in text or _MODEL_FILE.search(missing["path"])):
            self._in_traceback = False
            return Failure(
                f"a file the trainer needs is missing: {missing['path']} (check the model paths "
                "in autotrain.toml and that the file exists on this host)"
            )
        if self._in_traceback and _EXCEPTION.match(text):
            self._in_traceback = False
            return Failure("the trainer failed")
        return None


def killed_by_sigkill(returncode: int, cause: str | None = None) -> bool:
    """The trainer died of SIGKILL: its guard reports 128 + 9, a trainer run bare -9, and a
    training script under `accelerate launch` says so in a line the reader marks "killed"."""
    return returncode in (-9, 137) or cause == "killed"


def sigkill_message(returncode: int, profile: str, host_memory_gb: float | None) -> str:
    """What a SIGKILLed trainer usually means, and what to do: nothing in its output says why,
    since SIGKILL cannot be caught; the kernel's out-of-memory killer (host RAM, not the GPU's)
    is the usual sender (`dmesg | grep -i 'killed process'` names it)."""
    need = (f"the {profile} profile peaks at about {host_memory_gb:g} GiB of host memory"
            if host_memory_gb else f"the {profile} profile's host memory need is not measured")  # fmt: skip
    return (
        f"The trainer was killed by SIGKILL (exit code {returncode}): usually the kernel's "
        f"out-of-memory killer, for lack of host RAM ({need}; `dmesg | grep -i 'killed process'` "
        "says whether it was). Use fewer dataloader workers (max_data_loader_n_workers), add RAM "
        "or swap, run fewer jobs on this host at once, or choose a leaner variant."
    )


_TRACEBACK = re.compile(r"^Traceback \(most recent call last\):")
_EXCEPTION = re.compile(r"^(?P<name>[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit))(?::.*)?$")
_MISSING_PATH = re.compile(r"No such file or directory:?\s*['\"]?(?P<path>[^'\"]+?)['\"]?\s*$")
_MODEL_FILE = re.compile(r"\.(?:safetensors|sft|ckpt|pt|pth|bin|gguf)\b", re.IGNORECASE)

_OOM_HINT = (
    "CUDA out of memory: lower train_batch_size or resolution, enable gradient_checkpointing / "
    "fp8_base (or blocks_to_swap for Flux), or use a GPU with more memory"
)
_NCCL_HINT = (
    "NCCL (multi-GPU communication) failed: check that every id in --gpu-ids exists and is free, "
    "run with NCCL_DEBUG=INFO for details, or train on a single GPU"
)
_HARDWARE_HINT = (
    "the GPU failed (a hardware, driver or memory fault, an Xid in the kernel log): the job goes "
    "on on another GPU; if this GPU fails again, check `nvidia-smi -q -d ECC` and `dmesg | grep "
    "Xid` there"
)
_HEADER_HINT = (
    "a model file is not a valid .safetensors file (an unfinished download or a Git LFS "
    "pointer?): download it again and check the model paths in autotrain.toml"
)
_MODULE_HINT = (
    "the trainer's Python lacks a module: point sd_scripts_python at the sd-scripts venv, or "
    "install its requirements there"
)
# (pattern, hint, cause)
_ERRORS: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (
        re.compile(
            r"OutOfMemoryError:|CUDA out of memory|CUDA error: out of memory|"
            r"CUBLAS_STATUS_ALLOC_FAILED"
        ),
        _OOM_HINT,
        "oom",
    ),
    (
        re.compile(
            r"NCCL error|nccl(?:Internal|System|Unhandled\w*|Invalid\w*|Remote)Error|"
            r"DistBackendError|Watchdog caught collective operation timeout"
        ),
        _NCCL_HINT,
        "nccl",
    ),
    # ProcessGroupNCCL also signs a harmless warning printed at every multi-GPU exit.
    (
        re.compile(
            r"^(?!.*\bWarning\b).*ProcessGroupNCCL.*(?:[Ee]rror|timed out|[Tt]imeout|abort)"
        ),
        _NCCL_HINT,
        "nccl",
    ),
    # CUDA runtime errors that mean the device, not the program (cudaError_t strings from the
    # CUDA Runtime API's error types, as torch's CUDA check prints them), and the driver's Xid.
    (
        re.compile(
            r"CUDA error: (?:uncorrectable ECC error encountered|unspecified launch failure|"
            r"an illegal memory access was encountered|hardware stack error|"
            r"all CUDA-capable devices are busy or unavailable|"
            r"CUDA-capable device\(s\) is/are busy or unavailable)|"
            r"NVRM: Xid|GPU has fallen off the bus"
        ),
        _HARDWARE_HINT,
        "hardware",
    ),
    (
        re.compile(r"Error while deserializing header|HeaderTooLarge|HeaderTooSmall"),
        _HEADER_HINT,
        "bad file",
    ),
    (re.compile(r"ModuleNotFoundError: No module named"), _MODULE_HINT, "setup"),
    # `accelerate launch` (torch's elastic agent too) reports a rank SIGKILLed under it so.
    (
        re.compile(r"died with <Signals\.SIGKILL: 9>|exitcode\s*:\s*-9\b|Signal 9 \(SIGKILL\)"),
        "the trainer was killed by SIGKILL",
        "killed",
    ),
)
