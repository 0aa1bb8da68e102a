"""STAND-IN for sd-scripts' `library/strategy_base.py` (tests only), 48d368fa :380-415: the
latents caching strategy the dataset asks for cache file names and the sizes they hold."""

from __future__ import annotations

import os


class LatentsCachingStrategy:
    _strategy = None

    def __init__(
        self, cache_to_disk: bool, batch_size: int, skip_disk_cache_validity_check: bool
    ) -> None:
        self._cache_to_disk, self._batch_size = cache_to_disk, batch_size
        self.skip_disk_cache_validity_check = skip_disk_cache_validity_check

    @classmethod
    def set_strategy(cls, strategy):  # :390-394
        if cls._strategy is not None:
            raise RuntimeError(f"Internal error. {cls.__name__} strategy is already set")
        cls._strategy = strategy

    @classmethod
    def get_strategy(cls):
        return cls._strategy

    @property
    def cache_suffix(self):
        raise NotImplementedError

    def get_image_size_from_disk_cache_path(self, absolute_path: str, npz_path: str):  # :412-414
        w, h = os.path.splitext(npz_path)[0].split("_")[-2].split("x")
        return int(w), int(h)
