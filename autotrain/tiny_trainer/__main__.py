"""`python -m autotrain.tiny_trainer --config_file job.toml [--resume STATE_DIR]`.

Exit status: 0 trained, 2 bad config, dataset or state (the message names it), 143 (130) stopped by
SIGTERM (Ctrl-C), 1 anything unexpected (with its traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from autotrain.errors import AutotrainError
from autotrain.tiny_trainer.config import load_config

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m autotrain.tiny_trainer",
        description="Train a LoRA on autotrain's tiny Flux transformer (CPU or one GPU).",
        epilog="example: python -m autotrain.tiny_trainer --config_file BatchConfig/Tiny/demo.toml",
    )
    parser.add_argument("--config_file", type=Path, required=True, help="the trainer TOML")
    parser.add_argument("--resume", type=Path, help="a *-stepNNNNNNNN-state directory")
    args = parser.parse_args(argv)
    try:
        # The config is checked before torch is imported, so a typo fails in milliseconds.
        config = load_config(args.config_file)
        if args.resume is not None and not args.resume.is_dir():
            raise AutotrainError(f"--resume {args.resume}: no such state directory")
        from autotrain.tiny_trainer.loop import train

        return train(config, args.resume)
    except AutotrainError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
