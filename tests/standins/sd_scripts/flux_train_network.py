"""STAND-IN for kohya-ss sd-scripts' `flux_train_network.py`, used only by autotrain's tests.

No GPU, no weights: it trains nothing. See standin_trainer.py for what it imitates and its cues.
`FluxNetworkTrainer` and `setup_parser` are what autotrain's dataset check imports.
"""

import sys

import train_network
from library import strategy_flux
from standin_parser import parser_for
from standin_trainer import main


class FluxNetworkTrainer(train_network.NetworkTrainer):
    def assert_extra_args(self, args, train_dataset_group, val_dataset_group):
        super().assert_extra_args(args, train_dataset_group, val_dataset_group)  # :46
        train_dataset_group.verify_bucket_reso_steps(32)  # :95
        if val_dataset_group is not None:
            val_dataset_group.verify_bucket_reso_steps(32)

    def get_latents_caching_strategy(self, args):  # :185-187
        return strategy_flux.FluxLatentsCachingStrategy(
            args.cache_latents_to_disk, args.vae_batch_size, False
        )


def setup_parser():  # :523-537
    return parser_for("flux_train_network")


if __name__ == "__main__":
    sys.exit(main("flux_train_network"))
