"""Support for the sd-scripts STAND-IN (tests only): argument and dataset checks, output, files.

See standin_trainer.py for what the stand-in imitates. Line references are to kohya-ss/sd-scripts
at commit 48d368fa (and accelerate 1.6.0, which its requirements.txt pins, where marked acc:).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import struct
import sys
import tomllib
import zlib
from pathlib import Path
from typing import Any

ARGS_DIR = Path(__file__).resolve().parents[2] / "data" / "sd_scripts_args"
IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".webp",
    ".bmp",
    ".PNG",
    ".JPG",
    ".JPEG",
    ".WEBP",
    ".BMP",
)
NETWORK_SCRIPTS = {"flux_train_network"}
RANK = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
WORLD_SIZE = int(os.environ.get("WORLD_SIZE", "1") or 1)

logger = logging.getLogger("standin")


def setup_logging(simple: bool = False) -> None:
    """library/utils.py:41-86: a RichHandler on stderr (library/utils.py:62-68), or with
    `console_log_simple` a plain handler on stdout (:74-76); message only, dates as
    %Y-%m-%d %H:%M:%S (:78-81). Called at import and again with the arguments, which replaces
    the handler (train_network.py:497, flux_train.py:60, sdxl_train.py:104).

    accelerate's loggers log on the main process only (acc: logging.py:33-36), and so does this.
    """
    from rich.console import Console
    from rich.logging import RichHandler

    for old in list(logger.handlers):
        logger.removeHandler(old)
    handler = (
        logging.StreamHandler(sys.stdout) if simple else RichHandler(console=Console(stderr=True))
    )
    handler.setFormatter(logging.Formatter(fmt="%(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if RANK == 0 else logging.WARNING)
    logger.propagate = False


def log(message: str) -> None:
    """`logger.info`: through rich, on stderr."""
    logger.info(message)


def say(message: str = "") -> None:
    """`accelerator.print`: builtin print to stdout on the local main process (acc: state.py:696-698)."""
    if RANK == 0:
        print(message, flush=True)


def load_argument_list(script: str) -> dict[str, tuple[str, list[str]]]:
    """`name -> (type, choices)` from the committed list extracted from sd-scripts' parser."""
    found: dict[str, tuple[str, list[str]]] = {}
    for line in (ARGS_DIR / f"{script}.txt").read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        found[parts[0]] = (parts[1], parts[2].split("|") if len(parts) > 2 else [])
    return found


def load_dataset_keys() -> dict[str, set[str]]:
    """Allowed keys per table of a dataset config: general, datasets, datasets.subsets."""
    tables: dict[str, set[str]] = {}
    current = None
    for line in (ARGS_DIR / "dataset_config.txt").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            tables[current] = set()
        elif current is not None:
            tables[current].add(line)
    return tables


def value_fits(kind: str, choices: list[str], value: Any) -> bool:
    """Whether a TOML value is what the argument would hold after argparse (no conversion)."""
    if isinstance(value, list) or kind.startswith("list["):
        inner = kind[5:-1] if kind.startswith("list[") else ""
        return isinstance(value, list) and all(value_fits(inner, [], item) for item in value)
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "int":
        ok = isinstance(value, int)
    elif kind in ("float", "int_or_float"):
        ok = isinstance(value, int | float)
    else:  # str, path and custom converters read strings
        ok = isinstance(value, str)
    return ok and (not choices or str(value) in choices)


def check_arguments(
    parser: argparse.ArgumentParser,
    config: dict[str, Any],
    known: dict[str, tuple[str, list[str]]],
    source: str,
) -> None:
    unknown = [key for key in config if key not in known]
    if unknown:
        parser.error(
            "unrecognized arguments in " + source + ": " + " ".join(f"--{key}" for key in unknown)
        )
    for key, value in config.items():
        kind, choices = known[key]
        if not value_fits(kind, choices, value):
            allowed = f" (choose from {', '.join(choices)})" if choices else ""
            parser.error(f"argument --{key}: invalid {kind} value: {value!r}{allowed}")


def flatten(data: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def read_dataset(
    parser: argparse.ArgumentParser, config: dict[str, Any], script: str
) -> list[tuple[str, int, int]]:
    """(image_dir, images, repeats) per subset of the dataset config."""
    if not config.get("dataset_config"):
        parser.error("this stand-in needs --dataset_config (autotrain's kohya profiles use one)")
    path = config["dataset_config"]
    log(
        (
            "Loading dataset config from "
            if script in NETWORK_SCRIPTS
            else "Load dataset config from "
        )
        + str(path)
    )
    data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    allowed = load_dataset_keys()
    general = data.get("general", {})
    _check_table(parser, general, allowed["general"], f"{path} [general]")
    extra = set(data) - {"general", "datasets"}
    if extra:
        parser.error(f"invalid dataset config {path}: unknown tables {sorted(extra)}")
    subsets = []
    for dataset in data.get("datasets", []):
        _check_table(
            parser,
            {k: v for k, v in dataset.items() if k != "subsets"},
            allowed["datasets"],
            f"{path} [[datasets]]",
        )
        for subset in dataset.get("subsets", []):
            _check_table(
                parser, subset, allowed["datasets.subsets"], f"{path} [[datasets.subsets]]"
            )
            if "image_dir" not in subset:
                parser.error(f"invalid dataset config {path}: a subset needs image_dir")
            repeats = subset.get(
                "num_repeats", dataset.get("num_repeats", general.get("num_repeats", 1))
            )
            folder = Path(subset["image_dir"])
            count = (
                len([p for p in folder.iterdir() if p.suffix in IMAGE_EXTENSIONS])
                if folder.is_dir()
                else 0
            )
            if not folder.is_dir():
                log(f"not directory: {folder}")
            subsets.append((str(folder), count, int(repeats)))
    return subsets


def _check_table(
    parser: argparse.ArgumentParser, table: dict[str, Any], allowed: set[str], where: str
) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        parser.error(f"invalid dataset config {where}: extra keys not allowed {unknown}")


def parse_prompt_line(line: str) -> dict[str, Any]:
    """The meaning kohya gives a prompt line: text before the first ` --`, then options."""
    parts = line.split(" --")
    found: dict[str, Any] = {"prompt": parts[0]}
    patterns = [
        ("width", r"w (\d+)", int),
        ("height", r"h (\d+)", int),
        ("seed", r"d (\d+)", int),
        ("sample_steps", r"s (\d+)", int),
        ("scale", r"l ([\d\.]+)", float),
        ("guidance_scale", r"g ([\d\.]+)", float),
        ("negative_prompt", r"n (.+)", str),
        ("sample_sampler", r"ss (.+)", str),
        ("controlnet_image", r"cn (.+)", str),
    ]
    for part in parts:  # kohya also applies the patterns to the prompt text itself
        for key, pattern, convert in patterns:
            match = re.match(pattern, part, re.IGNORECASE)
            if match:
                found[key] = convert(match.group(1))
                break
    return found


def _safetensors_bytes(step: int) -> bytes:
    """A valid safetensors file holding one float32 tensor; metadata records the step."""
    header = json.dumps(
        {
            "__metadata__": {"ss_steps": str(step), "standin": "true"},
            "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        }
    ).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + struct.pack("<f", float(step))


def tiny_png() -> bytes:
    """A valid 1x1 grey PNG, written without image libraries."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = zlib.compress(b"\x00\x80")
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", raw)
        + chunk(b"IEND", b"")
    )


# VRAM a flux_train_network.py run needs with --fp8_base, by --blocks_to_swap: sd-scripts' own
# table, docs/flux_train_network.md:286-290 (24GB basic settings; 16GB batch 1 and block swap;
# 12GB swap 16; 10GB swap 22; 8GB swap 28).
_FLUX_LORA_VRAM_GB = ((28, 8.0), (22, 10.0), (16, 12.0), (1, 16.0), (0, 24.0))


def vram_need_gb(script: str, config: dict[str, Any]) -> float:
    """What this run needs on the GPU, where the published figures say; 0 when they do not."""
    if script != "flux_train_network" or not config.get("fp8_base"):
        return 0.0
    swap = int(config.get("blocks_to_swap") or 0)
    return next(gb for least, gb in _FLUX_LORA_VRAM_GB if swap >= least)


# Where the training step's backward pass is, per script, at sd-scripts 48d368fa: the module
# line that calls train() and the line of accelerator.backward(loss). The LoRA script's train()
# is NetworkTrainer.train in train_network.py.
_BACKWARD_FRAMES = {
    "flux_train_network": (("flux_train_network.py", 547, "<module>", "trainer.train(args)"),
                           ("train_network.py", 1445, "train", "accelerator.backward(loss)")),
    "flux_train": (("flux_train.py", 851, "<module>", "train(args)"),
                   ("flux_train.py", 683, "train", "accelerator.backward(loss)")),
    "sdxl_train": (("sdxl_train.py", 952, "<module>", "train(args)"),
                   ("sdxl_train.py", 740, "train", "accelerator.backward(loss)")),
}  # fmt: skip


def _fail_in_backward(script: str, *frames_and_error: str) -> None:
    """A traceback through the script's backward pass on stderr, then exit status 1."""
    lines = ["Traceback (most recent call last):"]
    for file, line, function, code in _BACKWARD_FRAMES[script]:
        lines += [f'  File "{file}", line {line}, in {function}', f"    {code}"]
    sys.stdout.flush()
    sys.stderr.write("\n".join([*lines, *frames_and_error]) + "\n")
    sys.stderr.flush()
    os._exit(1)


def nccl_failure(script: str) -> None:
    """What a broken GPU or link looks like from a rank: torch.distributed's DistBackendError
    raised from accelerate's backward (accelerate 16cb6eb8, src/accelerate/accelerator.py:2850).
    The NCCL text is torch's C10D_NCCL_CHECK message (torch/csrc/distributed/c10d/NCCLUtils.cpp),
    as published reports of it read (file line and NCCL version vary by build)."""
    _fail_in_backward(
        script,
        '  File "accelerate/accelerator.py", line 2850, in backward',
        "    loss.backward(**kwargs)",
        "torch.distributed.DistBackendError: NCCL error in: "
        "/pytorch/torch/csrc/distributed/c10d/NCCLUtils.cpp:77, unhandled cuda error (run with "
        "NCCL_DEBUG=INFO for details), NCCL version 2.27.3",
        "ncclUnhandledCudaError: Call to CUDA function failed.",
        "Last error:",
        "Cuda failure 'an illegal memory access was encountered'",
    )


# Where each script reads the Flux checkpoint's safetensors header first (sd-scripts 48d368fa).
_LOAD_FRAMES = {
    "flux_train_network": (
        ("flux_train_network.py", 547, "<module>", "trainer.train(args)"),
        ("train_network.py", 602, "train",
         "model_version, text_encoder, vae, unet = self.load_target_model(args, weight_dtype, accelerator)"),
        ("flux_train_network.py", 106, "load_target_model", "_, model = flux_utils.load_flow_model("),
    ),
    "flux_train": (
        ("flux_train.py", 851, "<module>", "train(args)"),
        ("flux_train.py", 273, "train", "_, flux = flux_utils.load_flow_model("),
    ),
}  # fmt: skip


def check_checkpoint_header(script: str, path: str) -> None:
    """The Flux scripts open the checkpoint with safetensors' `safe_open` before anything else
    (library/flux_utils.py:103 -> analyze_checkpoint_state, :55); a file that is no safetensors
    (a Git LFS pointer, a cut-off download) fails there with the safetensors error, whose kinds
    follow the format: an 8-byte little-endian header length, then that much JSON."""
    if script not in _LOAD_FRAMES:
        return  # sdxl_train.py loads through other code, not imitated here
    data = Path(path).read_bytes()
    problem = None
    if len(data) < 8:
        problem = "HeaderTooSmall"
    else:
        length = int.from_bytes(data[:8], "little")
        if length > 100_000_000:
            problem = "HeaderTooLarge"
        elif 8 + length > len(data):
            problem = "InvalidHeaderLength"
        else:
            try:
                json.loads(data[8 : 8 + length])
            except ValueError:
                problem = "InvalidHeaderDeserialization"
    if problem is None:
        return
    lines = ["Traceback (most recent call last):"]
    frames = (*_LOAD_FRAMES[script],
              ("library/flux_utils.py", 103, "load_flow_model",
               "is_diffusers, is_schnell, (num_double_blocks, num_single_blocks), ckpt_paths = "
               "analyze_checkpoint_state(ckpt_path)"),
              ("library/flux_utils.py", 55, "analyze_checkpoint_state",
               'with safe_open(ckpt_path, framework="pt") as f:'))  # fmt: skip
    for file, line, function, code in frames:
        lines += [f'  File "{file}", line {line}, in {function}', f"    {code}"]
    lines.append(f"safetensors_rust.SafetensorError: Error while deserializing header: {problem}")
    sys.stdout.flush()
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()
    os._exit(1)


def ecc_failure(script: str) -> None:
    """What a GPU with a double-bit memory error (an Xid 48) looks like from the trainer: torch's
    CUDA error check (c10/cuda/CUDAException.cpp) raising AcceleratorError in the backward pass,
    worded as published reports of torch 2.8+ read it."""
    _fail_in_backward(
        script,
        '  File "accelerate/accelerator.py", line 2850, in backward',
        "    loss.backward(**kwargs)",
        '  File "torch/autograd/graph.py", line 825, in _engine_run_backward',
        "    return Variable._execution_engine.run_backward(  # Calls into the C++ engine",
        "torch.AcceleratorError: CUDA error: uncorrectable ECC error encountered",
        "Search for `cudaErrorECCUncorrectable' in "
        "https://docs.nvidia.com/cuda/cuda-runtime-api/group__CUDART__TYPES.html for more "
        "information.",
        "CUDA kernel errors might be asynchronously reported at some other API call, so the "
        "stacktrace below might be incorrect.",
        "For debugging consider passing CUDA_LAUNCH_BLOCKING=1",
        "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.",
    )


def out_of_memory(script: str) -> None:
    """What a CUDA OOM in the training step looks like on stderr; exit status 1."""
    _fail_in_backward(
        script,
        '  File "torch/autograd/graph.py", line 825, in _engine_run_backward',
        "    return Variable._execution_engine.run_backward(  # Calls into the C++ engine",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 216.00 MiB. GPU 0 has a "
        "total capacity of 23.55 GiB of which 180.62 MiB is free. Including non-PyTorch memory, "
        "this process has 23.36 GiB memory in use. Of the allocated memory 22.71 GiB is allocated "
        "by PyTorch, and 198.40 MiB is reserved by PyTorch but unallocated. If reserved but "
        "unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "
        "to avoid fragmentation.  See documentation for Memory Management  "
        "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)",
    )


def record_environment() -> None:
    target = os.environ.get("STANDIN_ENV_FILE")
    if target and RANK == 0:
        Path(target).write_text(
            json.dumps(
                {
                    "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                    "WORLD_SIZE": WORLD_SIZE,
                    "ACCELERATE_MIXED_PRECISION": os.environ.get("ACCELERATE_MIXED_PRECISION"),
                    "argv": sys.argv,
                }
            ),
            encoding="utf-8",
        )


def write_safetensors(path: Path, step: int) -> None:
    path.write_bytes(_safetensors_bytes(step))
