"""STAND-IN for sd-scripts' `library/config_util.py` (tests only): dataset configs to datasets.

Copied from kohya-ss/sd-scripts 48d368fa, library/config_util.py: each setting of a subset falls
back to its dataset, then [general], then the trainer's arguments, then the default of the
parameter class (:454-470); the sanitizer turns a scalar resolution into (W, H) (:164-170).
DreamBooth datasets only (no metadata files, no ControlNet); the voluptuous schema is not
repeated (standin_support.py checks the keys).
"""

from __future__ import annotations

import argparse
import logging
import tomllib
from dataclasses import asdict, dataclass, field
from typing import Any

from library.train_util import DatasetGroup, DreamBoothDataset, DreamBoothSubset

logger = logging.getLogger(__name__)


@dataclass
class DreamBoothSubsetParams:  # :56-99, BaseSubsetParams and DreamBoothSubsetParams
    image_dir: str | None = None
    num_repeats: int = 1
    shuffle_caption: bool = False
    color_aug: bool = False
    flip_aug: bool = False
    random_crop: bool = False
    caption_dropout_rate: float = 0.0
    token_warmup_step: float = 0
    caption_tag_dropout_rate: float = 0.0
    is_reg: bool = False
    class_tokens: str | None = None
    caption_extension: str = ".caption"


@dataclass
class DreamBoothDatasetParams:  # :111-132, BaseDatasetParams and DreamBoothDatasetParams
    resolution: tuple[int, int] | None = None
    network_multiplier: float = 1.0
    debug_dataset: bool = False
    validation_seed: int | None = None
    validation_split: float = 0.0
    resize_interpolation: str | None = None
    batch_size: int = 1
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    prior_loss_weight: float = 1.0


@dataclass
class SubsetBlueprint:
    params: DreamBoothSubsetParams


@dataclass
class DatasetBlueprint:
    is_dreambooth: bool
    is_controlnet: bool
    params: DreamBoothDatasetParams
    subsets: list[SubsetBlueprint] = field(default_factory=list)


@dataclass
class DatasetGroupBlueprint:
    datasets: list[DatasetBlueprint]


@dataclass
class Blueprint:
    dataset_group: DatasetGroupBlueprint


def _twodim(value):
    """:164-170: a scalar resolution means a square."""
    return tuple(value) if isinstance(value, list | tuple) else (value, value)


class ConfigSanitizer:
    ARGPARSE_OPTNAME_TO_CONFIG_OPTNAME = {
        "train_batch_size": "batch_size",
        "dataset_repeats": "num_repeats",
    }  # :286-289

    def __init__(self, support_dreambooth, support_finetuning, support_controlnet, support_dropout):
        assert support_dreambooth or support_finetuning or support_controlnet

    def sanitize_user_config(self, user_config: dict) -> dict:
        config = {**user_config}
        tables = [config.get("general", {})]
        for dataset in config.get("datasets", []):
            tables.append(dataset)
            tables += dataset.get("subsets", [])
        for table in tables:
            if table.get("resolution") is not None:
                table["resolution"] = _twodim(table["resolution"])
        return config


class BlueprintGenerator:
    def __init__(self, sanitizer: ConfigSanitizer) -> None:
        self.sanitizer = sanitizer

    def generate(
        self, user_config: dict, argparse_namespace: argparse.Namespace, **runtime_params
    ) -> Blueprint:
        """:386-451."""
        config = self.sanitizer.sanitize_user_config(user_config)
        names = self.sanitizer.ARGPARSE_OPTNAME_TO_CONFIG_OPTNAME
        argparse_config = {names.get(k, k): v for k, v in vars(argparse_namespace).items()}
        general = config.get("general", {})
        datasets = []
        for dataset in config.get("datasets", []):
            subsets = [
                SubsetBlueprint(
                    self._params(
                        DreamBoothSubsetParams,
                        [s, dataset, general, argparse_config, runtime_params],
                    )
                )
                for s in dataset.get("subsets", [])
            ]
            params = self._params(
                DreamBoothDatasetParams, [dataset, general, argparse_config, runtime_params]
            )
            datasets.append(DatasetBlueprint(True, False, params, subsets))
        return Blueprint(DatasetGroupBlueprint(datasets))

    @staticmethod
    def _params(klass, fallbacks: list[dict[str, Any]]):
        """:453-470: the first non-None value along the fallbacks, else the class default."""
        defaults = asdict(klass())
        found = {}
        for name, default in defaults.items():
            found[name] = next((c[name] for c in fallbacks if c.get(name) is not None), default)
        return klass(**found)


def generate_dataset_group_by_blueprint(dataset_group_blueprint: DatasetGroupBlueprint):
    """:473-603: datasets built (captions read), then buckets made."""
    datasets = []
    for blueprint in dataset_group_blueprint.datasets:
        subsets = [DreamBoothSubset(**asdict(s.params)) for s in blueprint.subsets]
        datasets.append(
            DreamBoothDataset(subsets=subsets, is_training_dataset=True, **asdict(blueprint.params))
        )
    for dataset in datasets:
        dataset.make_buckets()
    return DatasetGroup(datasets), None


def load_user_config(file: str) -> dict:
    """:675-700, TOML only."""
    with open(file, "rb") as f:
        return tomllib.load(f)


def generate_dreambooth_subsets_config_by_subdirs(train_data_dir=None, reg_data_dir=None):
    """:607-660 is not imitated: autotrain's kohya profiles always write a dataset config."""
    raise NotImplementedError("the stand-in reads datasets from a --dataset_config only")
