"""STAND-IN for sd-scripts' `library/strategy_flux.py` (tests only), 48d368fa :197-205."""

from library.strategy_base import LatentsCachingStrategy


class FluxLatentsCachingStrategy(LatentsCachingStrategy):
    FLUX_LATENTS_NPZ_SUFFIX = "_flux.npz"

    @property
    def cache_suffix(self) -> str:
        return self.FLUX_LATENTS_NPZ_SUFFIX
