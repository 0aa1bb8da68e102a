"""STAND-IN for sd-scripts' `train_network.py` (tests only): the NetworkTrainer methods that
autotrain's dataset check calls (sd-scripts 48d368fa). It is not a runnable script here."""

from library import strategy_sd


class NetworkTrainer:
    def assert_extra_args(self, args, train_dataset_group, val_dataset_group):  # :169-177
        train_dataset_group.verify_bucket_reso_steps(64)
        if val_dataset_group is not None:
            val_dataset_group.verify_bucket_reso_steps(64)

    def get_latents_caching_strategy(self, args):  # :198-202
        return strategy_sd.SdSdxlLatentsCachingStrategy(
            True, args.cache_latents_to_disk, args.vae_batch_size, args.skip_cache_check
        )
