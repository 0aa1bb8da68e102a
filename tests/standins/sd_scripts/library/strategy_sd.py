"""STAND-IN for sd-scripts' `library/strategy_sd.py` (tests only), 48d368fa :133-150."""

from library.strategy_base import LatentsCachingStrategy


class SdSdxlLatentsCachingStrategy(LatentsCachingStrategy):
    def __init__(
        self, sd: bool, cache_to_disk: bool, batch_size: int, skip_disk_cache_validity_check: bool
    ) -> None:
        super().__init__(cache_to_disk, batch_size, skip_disk_cache_validity_check)
        self.suffix = "_sd.npz" if sd else "_sdxl.npz"

    @property
    def cache_suffix(self) -> str:
        return self.suffix
