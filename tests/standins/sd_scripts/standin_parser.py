"""The STAND-IN scripts' `setup_parser()` (tests only), for autotrain's dataset check.

sd-scripts' parsers are built by many `add_*_arguments` calls; this one is built from the
argument list extracted from them (tests/data/sd_scripts_args/<script>.txt: names and types),
with the real defaults of the arguments the dataset reads (library/train_util.py at 48d368fa,
line of each below). Every other argument defaults to None, or False for a flag, as there.
"""

from __future__ import annotations

import argparse

from standin_support import load_argument_list

DEFAULTS = {
    "train_batch_size": 1,  # :3900
    "max_data_loader_n_workers": 8,  # :3962
    "prior_loss_weight": 1.0,  # :4233
    "caption_separator": ",",  # :4491
    "caption_extension": ".caption",  # :4493
    "keep_tokens": 0,  # :4504
    "keep_tokens_separator": "",  # :4510
    "vae_batch_size": 1,  # :4572
    "min_bucket_reso": 256,  # :4593
    "max_bucket_reso": 1024,  # :4600
    "bucket_reso_steps": 64,  # :4607
    "token_warmup_min": 1,  # :4625
    "token_warmup_step": 0,  # :4631
    "caption_dropout_rate": 0.0,  # :4651
    "caption_dropout_every_n_epochs": 0,  # :4656
    "caption_tag_dropout_rate": 0.0,  # :4662
    "dataset_repeats": 1,  # :4680
}
_TYPES = {"int": int, "float": float, "int_or_float": float}


def parser_for(script: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{script}.py")
    for name, (kind, choices) in load_argument_list(script).items():
        default = DEFAULTS.get(name)
        if kind == "bool":
            parser.add_argument(f"--{name}", action="store_true")
        elif kind.startswith("list["):
            parser.add_argument(f"--{name}", nargs="*", default=default)
        else:
            parser.add_argument(f"--{name}", type=_TYPES.get(kind, str), default=default,
                                choices=choices or None)  # fmt: skip
    return parser
