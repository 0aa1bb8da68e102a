"""STAND-IN for sd-scripts' `library/train_util.py` (tests only): the dataset part that autotrain's
dataset check (autotrain/trainers/sd_scripts_probe.py) calls, nothing else.

Each behaviour is copied from kohya-ss/sd-scripts 48d368fa, file library/train_util.py unless
another file is named, awkward parts included: captions read as strict UTF-8 (a UnicodeDecodeError
escapes), an assert on an empty caption file, only the first line kept; image sizes read from
the file header without EXIF orientation; subsets with num_repeats < 1 skipped; the
bucket_no_upscale bucketing that divides by zero (:319) or makes a bucket 0 px wide.
Left out: metadata (fine-tuning) datasets, validation splits, the balancing of regularisation
images, wildcards and face-crop caption names beyond read_caption's own lookup.
"""

from __future__ import annotations

import argparse
import glob
import logging
import math
import os
import tomllib
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

# :104
IMAGE_EXTENSIONS = [
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
]


def glob_images(directory: str, base: str = "*") -> list[str]:
    """:2847-2856: one glob per extension, duplicates removed, sorted."""
    paths: list[str] = []
    for ext in IMAGE_EXTENSIONS:
        paths.extend(glob.glob(os.path.join(glob.escape(directory), base + ext)))
    return sorted(set(paths))


def read_config_from_file(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """:4700-4770 without --output_config: the TOML, one level of tables merged, becomes the
    namespace that parse_args fills (so the command line wins)."""
    if not args.config_file:
        return args
    path = args.config_file if args.config_file.endswith(".toml") else args.config_file + ".toml"
    if not os.path.exists(path):
        logger.info(f"{path} not found.")
        exit(1)
    with open(path, "rb") as f:
        config = tomllib.load(f)
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    args = parser.parse_args(namespace=argparse.Namespace(**flat))
    args.config_file = os.path.splitext(args.config_file)[0]
    return args


def verify_training_args(args: argparse.Namespace) -> None:
    """:4414: its checks concern precision, v-parameterisation and the like, none the dataset."""


def prepare_dataset_args(args: argparse.Namespace, support_metadata: bool) -> None:
    """:5402-5416: the old spelling caption_extention, and resolution "W,H" or "S" as a tuple."""
    if getattr(args, "caption_extention", None) is not None:
        args.caption_extension = args.caption_extention
        args.caption_extention = None
    if args.resolution is not None:
        args.resolution = tuple(int(r) for r in str(args.resolution).split(","))
        if len(args.resolution) == 1:
            args.resolution = (args.resolution[0], args.resolution[0])
        assert len(args.resolution) == 2, (
            f"resolution must be 'size' or 'width,height': {args.resolution}"
        )


def make_bucket_resolutions(max_reso, min_size=256, max_size=1024, divisible=64):
    """library/model_util.py:1316-1344."""
    max_width, max_height = max_reso
    max_area = max_width * max_height
    resos = {(int(math.sqrt(max_area) // divisible) * divisible,) * 2}
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


class ImageInfo:
    """:181-213, the fields the dataset fills before training."""

    def __init__(
        self, image_key, num_repeats, caption, is_reg, absolute_path, caption_dropout_rate=0.0
    ):
        self.image_key, self.num_repeats, self.caption = image_key, num_repeats, caption
        self.is_reg, self.absolute_path = is_reg, absolute_path
        self.caption_dropout_rate = caption_dropout_rate
        self.image_size = self.resized_size = self.bucket_reso = None


class BucketManager:
    """:216-346, the parts make_buckets uses."""

    def __init__(self, no_upscale, max_reso, min_size, max_size, reso_steps) -> None:
        self.no_upscale, self.max_reso = no_upscale, max_reso
        self.max_area = None if max_reso is None else max_reso[0] * max_reso[1]
        self.min_size, self.max_size, self.reso_steps = min_size, max_size, reso_steps
        self.resos, self.reso_to_id, self.buckets = [], {}, []

    def add_image(self, reso, image_or_info):
        self.buckets[self.reso_to_id[reso]].append(image_or_info)

    def make_buckets(self):
        self.set_predefined_resos(
            make_bucket_resolutions(self.max_reso, self.min_size, self.max_size, self.reso_steps)
        )

    def set_predefined_resos(self, resos):
        self.predefined_resos = resos.copy()
        self.predefined_resos_set = set(resos)
        self.predefined_aspect_ratios = np.array([w / h for w, h in resos])

    def add_if_new_reso(self, reso):
        if reso not in self.reso_to_id:
            self.reso_to_id[reso] = len(self.resos)
            self.resos.append(reso)
            self.buckets.append([])

    def round_to_steps(self, x):
        x = int(x + 0.5)
        return x - x % self.reso_steps

    def select_bucket(self, image_width, image_height):
        """:286-346. With no_upscale, a side that rounds below the step gives a 0 px bucket side
        and, past the area limit, a division by zero at :319."""
        aspect_ratio = image_width / image_height
        if not self.no_upscale:
            reso = (image_width, image_height)
            if reso not in self.predefined_resos_set:
                ar_errors = self.predefined_aspect_ratios - aspect_ratio
                reso = self.predefined_resos[np.abs(ar_errors).argmin()]
            ar_reso = reso[0] / reso[1]
            scale = reso[1] / image_height if aspect_ratio > ar_reso else reso[0] / image_width
            resized_size = (int(image_width * scale + 0.5), int(image_height * scale + 0.5))
        else:
            if image_width * image_height > self.max_area:
                resized_width = math.sqrt(self.max_area * aspect_ratio)
                resized_height = self.max_area / resized_width
                b_width_rounded = self.round_to_steps(resized_width)
                b_height_in_wr = self.round_to_steps(b_width_rounded / aspect_ratio)
                ar_width_rounded = b_width_rounded / b_height_in_wr  # :319
                b_height_rounded = self.round_to_steps(resized_height)
                b_width_in_hr = self.round_to_steps(b_height_rounded * aspect_ratio)
                ar_height_rounded = b_width_in_hr / b_height_rounded
                if abs(ar_width_rounded - aspect_ratio) < abs(ar_height_rounded - aspect_ratio):
                    resized_size = (b_width_rounded, int(b_width_rounded / aspect_ratio + 0.5))
                else:
                    resized_size = (int(b_height_rounded * aspect_ratio + 0.5), b_height_rounded)
            else:
                resized_size = (image_width, image_height)
            reso = (resized_size[0] - resized_size[0] % self.reso_steps,
                    resized_size[1] - resized_size[1] % self.reso_steps)  # fmt: skip
        self.add_if_new_reso(reso)
        return reso, resized_size, (reso[0] / reso[1]) - aspect_ratio


class DreamBoothSubset:
    """:412-545: the subset's settings as given; a caption extension gains its dot (:497-498)."""

    def __init__(self, **params: Any) -> None:
        self.__dict__.update(params)
        if self.caption_extension and not self.caption_extension.startswith("."):
            self.caption_extension = "." + self.caption_extension
        self.img_count = 0

    def __eq__(self, other) -> bool:  # :540-543
        return isinstance(other, DreamBoothSubset) and self.image_dir == other.image_dir


class BaseDataset:
    """:683-1100, the parts a dataset's construction and make_buckets use."""

    def __init__(self, resolution, network_multiplier, debug_dataset, resize_interpolation=None):
        self.width, self.height = (None, None) if resolution is None else resolution
        self.subsets: list[DreamBoothSubset] = []
        self.image_data: dict[str, ImageInfo] = {}
        self.image_to_subset: dict[str, DreamBoothSubset] = {}
        self.enable_bucket, self.bucket_manager, self.bucket_reso_steps = False, None, None

    def register_image(self, info, subset):
        self.image_data[info.image_key] = info
        self.image_to_subset[info.image_key] = subset

    def get_image_size(self, image_path):
        """:1478-1491: imagesize reads the header; the stored size, EXIF orientation ignored.
        PIL's size is the same stored size; a file it cannot read is (0, 0) with a warning."""
        try:
            with Image.open(image_path) as img:
                return img.size
        except Exception as e:
            logger.warning(f"failed to get image size: {image_path}, error: {e}")
            return (0, 0)

    def make_buckets(self):
        """:987-1084."""
        for info in self.image_data.values():
            if info.image_size is None:
                info.image_size = self.get_image_size(info.absolute_path)
        if self.enable_bucket:
            self.bucket_manager = BucketManager(self.bucket_no_upscale, (self.width, self.height),
                                                self.min_bucket_reso, self.max_bucket_reso,
                                                self.bucket_reso_steps)  # fmt: skip
            if not self.bucket_no_upscale:
                self.bucket_manager.make_buckets()
        else:
            self.bucket_manager = BucketManager(False, (self.width, self.height), None, None, None)
            self.bucket_manager.set_predefined_resos([(self.width, self.height)])
        for info in self.image_data.values():
            info.bucket_reso, info.resized_size, _ = self.bucket_manager.select_bucket(
                *info.image_size
            )
        for info in self.image_data.values():
            for _ in range(info.num_repeats):
                self.bucket_manager.add_image(info.bucket_reso, info.image_key)
        self._length = sum(math.ceil(len(b) / self.batch_size) for b in self.bucket_manager.buckets)

    def __len__(self):
        return self._length

    def verify_bucket_reso_steps(self, min_steps: int):  # :1093-1097
        assert self.bucket_reso_steps is None or self.bucket_reso_steps % min_steps == 0, (
            f"bucket_reso_steps is {self.bucket_reso_steps}. it must be divisible by {min_steps}.\n"
        )

    def is_latent_cacheable(self):  # :1099-1100
        return all(not s.color_aug and not s.random_crop for s in self.subsets)


class DreamBoothDataset(BaseDataset):
    """:1895-2184 without validation splits and regularisation balancing."""

    def __init__(self, subsets, is_training_dataset, batch_size, resolution, network_multiplier,
                 enable_bucket, min_bucket_reso, max_bucket_reso, bucket_reso_steps,
                 bucket_no_upscale, prior_loss_weight, debug_dataset, validation_split,
                 validation_seed, resize_interpolation) -> None:  # fmt: skip
        super().__init__(resolution, network_multiplier, debug_dataset, resize_interpolation)
        assert resolution is not None, "resolution is required"
        self.batch_size, self.enable_bucket = batch_size, enable_bucket
        if enable_bucket:
            assert min(resolution) >= min_bucket_reso, (
                "min_bucket_reso must be equal or less than resolution"
            )  # :763-768
            assert max(resolution) <= max_bucket_reso, (
                "max_bucket_reso must be equal or greater than resolution"
            )
            self.min_bucket_reso, self.max_bucket_reso = min_bucket_reso, max_bucket_reso
            self.bucket_reso_steps, self.bucket_no_upscale = bucket_reso_steps, bucket_no_upscale
        else:
            self.bucket_no_upscale = False
        for subset in subsets:  # :2128-2166
            if subset.num_repeats < 1:
                logger.warning(
                    f"ignore subset with image_dir='{subset.image_dir}': num_repeats is less than 1"
                )
                continue
            if subset in self.subsets:
                logger.warning(
                    f"ignore duplicated subset with image_dir='{subset.image_dir}': use the first one"
                )
                continue
            img_paths, captions, sizes = self._load_dir(subset)
            if not img_paths:
                logger.warning(
                    f"ignore subset with image_dir='{subset.image_dir}': no images found"
                )
                continue
            for path, caption, size in zip(img_paths, captions, sizes, strict=True):
                info = ImageInfo(path, subset.num_repeats, caption, subset.is_reg, path)
                info.image_size = size
                self.register_image(info, subset)
            subset.img_count = len(img_paths)
            self.subsets.append(subset)

    def _load_dir(self, subset):
        """load_dreambooth_dir, :1972-2116: sizes from latent cache names when a strategy is set."""
        from library.strategy_base import LatentsCachingStrategy

        if not os.path.isdir(subset.image_dir):
            logger.warning(f"not directory: {subset.image_dir}")
            return [], [], []
        img_paths = glob_images(subset.image_dir, "*")
        sizes = [None] * len(img_paths)
        strategy = LatentsCachingStrategy.get_strategy()
        if strategy is not None:  # :2020-2049, matched by stem prefix as the real loop does
            npz_paths = glob.glob(os.path.join(subset.image_dir, "*" + strategy.cache_suffix))
            for i, img_path in enumerate(img_paths):
                stem = os.path.splitext(img_path)[0]
                for npz in sorted(npz_paths):
                    if npz[: len(stem)] == stem:
                        sizes[i] = strategy.get_image_size_from_disk_cache_path(img_path, npz)
                        break
        captions = []
        for img_path in img_paths:
            caption = read_caption(img_path, subset.caption_extension)
            captions.append(
                subset.class_tokens if caption is None and subset.class_tokens else caption or ""
            )
        return img_paths, captions, sizes


def read_caption(img_path: str, caption_extension: str) -> str | None:
    """:1946-1970: `<stem><ext>`, or with 5+ underscore tokens the face-crop name; strict UTF-8,
    an assert on an empty file, the first line stripped."""
    base_name = os.path.splitext(img_path)[0]
    tokens = base_name.split("_")
    face = "_".join(tokens[:-4]) if len(tokens) >= 5 else base_name
    for cap_path in (base_name + caption_extension, face + caption_extension):
        if os.path.isfile(cap_path):
            with open(cap_path, encoding="utf-8") as f:
                try:
                    lines = f.readlines()
                except UnicodeDecodeError:
                    logger.error(f"illegal char in file (not UTF-8): {cap_path}")
                    raise
            assert len(lines) > 0, f"caption file is empty: {cap_path}"
            return lines[0].strip()
    return None


class DatasetGroup:
    """:2583-2670, what the dataset check asks of it."""

    def __init__(self, datasets) -> None:
        self.datasets = list(datasets)

    def __len__(self):
        return sum(len(d) for d in self.datasets)

    def verify_bucket_reso_steps(self, min_steps: int):
        for dataset in self.datasets:
            dataset.verify_bucket_reso_steps(min_steps)

    def is_latent_cacheable(self) -> bool:
        return all(d.is_latent_cacheable() for d in self.datasets)
