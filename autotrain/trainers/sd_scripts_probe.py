"""Ask kohya-ss sd-scripts itself what it makes of a dataset, without loading any model.

Run by autotrain (autotrain/trainers/trainer_check.py) in the TRAINER's Python, with sd-scripts'
checkout as the working directory:

    python sd_scripts_probe.py --script flux_train_network.py --config-file job.toml

This file must not import autotrain: autotrain is not installed in the trainer's environment. It
repeats the first steps of the script's own `train()` with sd-scripts' own code (line numbers of
kohya-ss/sd-scripts 48d368fa, train_network.py `NetworkTrainer.train` :491-560; flux_train.py
:55-151 and sdxl_train.py :99-189 do the same inline):

1. the arguments: the script's `setup_parser()` and `train_util.read_config_from_file` (:4700),
   then `verify_training_args` and `prepare_dataset_args` (train_network.py:494-495);
2. the latents caching strategy (train_network.py:511-513), which the dataset needs: with one set,
   sd-scripts reads image sizes from the names of cache files beside the images
   (library/train_util.py:2050-2080);
3. the dataset: `BlueprintGenerator(ConfigSanitizer(True, True, args.masked_loss, True))` and
   `config_util.generate_dataset_group_by_blueprint` (train_network.py:515-545): captions read
   (`read_caption`, train_util.py:1946), image sizes read, buckets made (`make_buckets`);
4. what train() checks next: an empty dataset (:548-552, the trainer exits WITHOUT training),
   `is_latent_cacheable` (:554-557) and the script's `assert_extra_args` (:560), which holds the
   `verify_bucket_reso_steps` of its model (flux_train_network.py:95 after train_network.py:175).

It prints one JSON object on stdout (what sd-scripts prints goes to stderr): `ok`, `stage` (where
it failed), `error`, `images` (per image: the caption trained with, the size read, its bucket and
repeats), `subsets`, `files` (per file rejections), `trainer_warnings`. When building the dataset
fails, each image is tried again alone (a one-image folder of symbolic links, same subset
settings), so every file that breaks it is named, not only the first.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import inspect
import io
import json
import logging
import os
import re
import sys
import tempfile
import time
import traceback
from contextlib import redirect_stderr

# Full fine-tune scripts build their latents caching strategy inline in train(); the network
# scripts through their trainer's get_latents_caching_strategy (train_network.py:511).
_INLINE_STRATEGIES = {
    # flux_train.py:94-98
    "flux_train": ("library.strategy_flux", "FluxLatentsCachingStrategy",
                   lambda a: (a.cache_latents_to_disk, a.vae_batch_size, a.skip_cache_check)),
    # sdxl_train.py:132-136
    "sdxl_train": ("library.strategy_sd", "SdSdxlLatentsCachingStrategy",
                   lambda a: (False, a.cache_latents_to_disk, a.vae_batch_size, a.skip_cache_check)),
}  # fmt: skip
_STEP_CALL = re.compile(r"train_dataset_group\.verify_bucket_reso_steps\((\d+)\)")


class ProbeFailure(Exception):
    """A step of train() failed; `stage` says which."""

    def __init__(self, stage: str, error: dict) -> None:
        super().__init__(error.get("message", ""))
        self.stage, self.error = stage, error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--script", required=True, help="e.g. flux_train_network.py")
    parser.add_argument("--config-file", required=True, help="the job's trainer config TOML")
    options = parser.parse_args(argv)
    result_fd = os.dup(1)
    os.dup2(2, 1)  # what sd-scripts prints goes to stderr; stdout carries only the result
    started = time.monotonic()
    warnings = _WarningCollector.active
    # Handlers on the root logger before sd-scripts is imported keep its setup_logging() from
    # adding its own (library/utils.py:42-48): its INFO chatter is dropped, warnings kept.
    logging.getLogger().addHandler(warnings)
    logging.getLogger().addHandler(logging.StreamHandler(sys.stderr))
    try:
        result = probe(options.script, options.config_file)
    except ProbeFailure as failure:
        result = {"ok": False, "stage": failure.stage, "error": failure.error}
    except BaseException as exc:  # noqa: BLE001 - the caller must always get an answer
        result = {"ok": False, "stage": "probe", "error": _describe(exc)}
    result["trainer_warnings"] = warnings.messages[:200]
    result["seconds"] = round(time.monotonic() - started, 3)
    with os.fdopen(result_fd, "w", encoding="utf-8") as out:
        out.write(json.dumps(result) + "\n")
    return 0


def probe(script: str, config_file: str) -> dict:
    """The dataset as `script` would build it from `config_file`; raises ProbeFailure."""
    here = os.path.dirname(os.path.abspath(__file__))  # never shadow a module sd-scripts imports
    sys.path[:] = [os.getcwd()] + [p for p in sys.path if os.path.abspath(p or ".") != here]
    stem = os.path.splitext(os.path.basename(script))[0]
    module = _stage("import", lambda: importlib.import_module(stem))
    from library import config_util, strategy_base, train_util

    args = _stage("arguments", lambda: _read_arguments(module, script, config_file, train_util))
    trainer = _trainer_of(module)
    strategy = _stage("strategy", lambda: _latents_strategy(trainer, stem, args))
    if strategy is not None:
        strategy_base.LatentsCachingStrategy.set_strategy(strategy)
    user_config = _stage("config", lambda: _user_config(args, config_util))
    generator = config_util.BlueprintGenerator(
        config_util.ConfigSanitizer(True, True, args.masked_loss, True)
    )
    blueprint = _stage("config", lambda: generator.generate(user_config, args))
    _WarningCollector.active.messages.clear()  # from here on, warnings are about the dataset
    try:
        train_group, val_group = config_util.generate_dataset_group_by_blueprint(
            blueprint.dataset_group
        )
    except Exception as exc:  # noqa: BLE001 - whatever sd-scripts raises, name the files
        files = _isolate(user_config, blueprint, args, generator, config_util)
        raise ProbeFailure("dataset", {**_describe(exc), "files": files}) from None
    result = {"ok": True, "stage": None, "error": None, **_dataset_view(train_group, blueprint)}
    result["files"] = _unplaceable(result["images"])
    try:
        _checks(args, trainer, module, train_group, val_group)
    except ProbeFailure as failure:
        result.update(ok=False, stage=failure.stage, error=failure.error)
    if result["files"] and result["ok"]:
        result.update(ok=False, stage="buckets")
    return result


def _stage(stage: str, step):
    try:
        return step()
    except SystemExit as exc:  # argparse's error(), or sd-scripts' own exit(1)
        error = {"type": "SystemExit", "message": f"exit status {exc.code}"}
        raise ProbeFailure(stage, error) from None
    except Exception as exc:  # noqa: BLE001
        raise ProbeFailure(stage, _describe(exc)) from None


def _read_arguments(module, script: str, config_file: str, train_util):
    """As the script's `__main__` does (flux_train_network.py:540-545), then train()'s first two
    calls. argparse reads sys.argv inside read_config_from_file (train_util.py:4767)."""
    parser = module.setup_parser()
    sys.argv = [script, "--config_file", config_file]
    captured = io.StringIO()
    try:
        with redirect_stderr(captured):
            args = parser.parse_args()
            args = train_util.read_config_from_file(args, parser)
    except SystemExit as exc:
        sys.stderr.write(captured.getvalue())
        message = captured.getvalue().strip().splitlines()[-1:] or [f"exit status {exc.code}"]
        raise ProbeFailure("arguments", {"type": "SystemExit", "message": message[0]}) from None
    sys.stderr.write(captured.getvalue())
    train_util.verify_training_args(args)
    train_util.prepare_dataset_args(args, True)
    return args


def _trainer_of(module):
    """The NetworkTrainer subclass a network script defines (FluxNetworkTrainer, ...); None for
    the full fine-tune scripts, whose train() is a function."""
    found = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if cls.__module__ == module.__name__
        and callable(getattr(cls, "get_latents_caching_strategy", None))
        and callable(getattr(cls, "assert_extra_args", None))
    ]
    leaves = [c for c in found if not any(o is not c and issubclass(o, c) for o in found)]
    return leaves[0]() if leaves else None


def _latents_strategy(trainer, stem: str, args):
    if trainer is not None:
        return trainer.get_latents_caching_strategy(args)  # train_network.py:511
    if stem not in _INLINE_STRATEGIES or not args.cache_latents:
        return None
    module_name, class_name, arguments = _INLINE_STRATEGIES[stem]
    return getattr(importlib.import_module(module_name), class_name)(*arguments(args))


def _user_config(args, config_util) -> dict:
    """train_network.py:519-552: the dataset config file, else folders, else a metadata file."""
    if args.dataset_config is not None:
        return config_util.load_user_config(args.dataset_config)
    if args.in_json is None:
        subsets = config_util.generate_dreambooth_subsets_config_by_subdirs(
            args.train_data_dir, args.reg_data_dir
        )
        return {"datasets": [{"subsets": subsets}]}
    return {
        "datasets": [
            {"subsets": [{"image_dir": args.train_data_dir, "metadata_file": args.in_json}]}
        ]
    }


def _checks(args, trainer, module, train_group, val_group) -> None:
    """What train() checks once the dataset exists (train_network.py:548-560)."""
    if len(train_group) == 0:
        raise ProbeFailure("empty", {"type": "NoData", "message": "No data found"})
    if args.cache_latents and not train_group.is_latent_cacheable():
        message = "when caching latents, either color_aug or random_crop cannot be used"
        raise ProbeFailure("checks", {"type": "AssertionError", "message": message})
    if trainer is not None:
        _stage("checks", lambda: trainer.assert_extra_args(args, train_group, val_group))
        return
    source = inspect.getsource(module)
    for step in _STEP_CALL.findall(source):  # flux_train.py:151, sdxl_train.py:189
        _stage("checks", lambda s=int(step): train_group.verify_bucket_reso_steps(s))


def _dataset_view(group, blueprint) -> dict:
    """Per image what the trainer holds; per subset of the config, whether it was used."""
    images, subsets, used = [], [], set()
    for dataset in group.datasets:
        for info in dataset.image_data.values():
            subset = dataset.image_to_subset.get(info.image_key)
            images.append(
                {
                    "path": os.path.abspath(info.absolute_path),
                    "caption": info.caption,
                    "size": list(info.image_size) if info.image_size else None,
                    "bucket": list(info.bucket_reso) if info.bucket_reso else None,
                    "repeats": info.num_repeats,
                    "is_reg": bool(info.is_reg),
                    "subset": os.path.abspath(subset.image_dir) if subset else None,
                }
            )
        used |= {os.path.abspath(s.image_dir) for s in dataset.subsets if s.image_dir}
    for dataset in blueprint.dataset_group.datasets:
        for sub in dataset.subsets:
            folder = os.path.abspath(sub.params.image_dir) if sub.params.image_dir else None
            subsets.append({"image_dir": folder, "num_repeats": sub.params.num_repeats,
                            "used": folder in used})  # fmt: skip
    return {"images": images, "subsets": subsets}


def _unplaceable(images: list[dict]) -> list[dict]:
    """Images bucketed with a side of 0 px: no exception yet, but nothing can be cropped to it."""
    return [
        {"image": image["path"], "type": "ZeroBucket", "size": image["size"],
         "message": f"bucket {image['bucket'][0]}x{image['bucket'][1]} has a side of 0 px"}
        for image in images
        if image["bucket"] and min(image["bucket"]) <= 0
    ]  # fmt: skip


# Isolating the files that break the dataset


def _isolate(user_config: dict, blueprint, args, generator, config_util) -> list[dict]:
    """Build a one-image dataset per image of each used subset; the ones that fail are named.

    Each subset is first built from an empty folder: when that fails too, the fault is the
    subset's settings, not its files, and the subset is named instead of every file in it.
    """
    from library import train_util

    found: list[dict] = []
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # one-image datasets repeat what was said already
    try:
        for d, dataset in enumerate(user_config.get("datasets", [])):
            for s in range(len(dataset.get("subsets", []))):
                params = blueprint.dataset_group.datasets[d].subsets[s].params
                if not params.image_dir or params.num_repeats < 1:  # train_util.py:2130-2135
                    continue
                one = _one_subset_builder(user_config, d, s, args, generator, config_util)
                found += _isolate_subset(one, params, train_util)
    finally:
        logging.disable(previous)
    return found


def _one_subset_builder(user_config, d: int, s: int, args, generator, config_util):
    def build(folder: str) -> None:
        config = copy.deepcopy(user_config)
        dataset = config["datasets"][d]
        dataset["subsets"] = [{**dataset["subsets"][s], "image_dir": folder}]
        config["datasets"] = [dataset]
        blueprint = generator.generate(config, args)
        group, _ = config_util.generate_dataset_group_by_blueprint(blueprint.dataset_group)
        for built in group.datasets:
            for info in built.image_data.values():
                if info.bucket_reso and min(info.bucket_reso) <= 0:
                    raise ZeroDivisionError(f"bucket {info.bucket_reso} has a side of 0 px")

    return build


def _isolate_subset(build, params, train_util) -> list[dict]:
    folder = os.path.abspath(params.image_dir)
    with tempfile.TemporaryDirectory(prefix="autotrain-probe-") as empty:
        try:
            build(empty)
        except Exception as exc:  # noqa: BLE001
            return [{"subset": folder, **_describe(exc)}]
    found = []
    for image in train_util.glob_images(params.image_dir, "*"):  # the trainer's own listing
        with tempfile.TemporaryDirectory(prefix="autotrain-probe-") as alone:
            captions = _link_companions(image, alone, params.caption_extension)
            try:
                build(alone)
            except Exception as exc:  # noqa: BLE001
                error = _describe(exc)
                error["message"] = error["message"].replace(alone, folder)
                if isinstance(exc, UnicodeDecodeError) and captions:
                    error.update(_first_bad_byte(captions[0]))
                found.append({"image": os.path.abspath(image), "captions": captions,
                              "size": _size_of(image, train_util), **error})  # fmt: skip
    return found


def _link_companions(image: str, folder: str, caption_extension: str) -> list[str]:
    """Links to the image and what the trainer reads beside it: the caption candidates of
    read_caption (train_util.py:1948-1953) and latent cache files of the same stem."""
    base = os.path.splitext(image)[0]
    tokens = base.split("_")
    face = "_".join(tokens[:-4]) if len(tokens) >= 5 else base
    os.symlink(os.path.abspath(image), os.path.join(folder, os.path.basename(image)))
    captions = []
    for candidate in dict.fromkeys([base + caption_extension, face + caption_extension]):
        if os.path.isfile(candidate):
            captions.append(os.path.abspath(candidate))
            target = os.path.join(folder, os.path.basename(candidate))
            if not os.path.lexists(target):
                os.symlink(os.path.abspath(candidate), target)
    directory = os.path.dirname(image) or "."
    stem = os.path.basename(base)
    for name in os.listdir(directory):
        if name.startswith(stem + "_") and name.endswith(".npz"):
            target = os.path.join(folder, name)
            if not os.path.lexists(target):
                os.symlink(os.path.abspath(os.path.join(directory, name)), target)
    return captions


def _size_of(image: str, train_util) -> list[int] | None:
    """The size the trainer reads (BaseDataset.get_image_size, train_util.py:1478): the stored
    width and height, EXIF orientation never applied."""
    try:
        size = train_util.BaseDataset.get_image_size(None, image)
        return [int(size[0]), int(size[1])]
    except Exception:  # noqa: BLE001
        return None


def _first_bad_byte(caption: str) -> dict:
    """Where the file stops being UTF-8 (a decoding error's own offset counts from the chunk
    the reader was decoding, not from the start of the file)."""
    try:
        with open(caption, "rb") as f:
            f.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        return {"byte": exc.object[exc.start : exc.start + 1].hex(), "position": exc.start}
    except OSError:
        pass
    return {}


def _describe(exc: BaseException) -> dict:
    """The exception, and the innermost frame of sd-scripts' own code that raised it."""
    frames = traceback.extract_tb(exc.__traceback__)
    checkout = os.getcwd() + os.sep
    theirs = [f for f in frames if os.path.isfile(f.filename) and f.filename.startswith(checkout)]
    where = f"{os.path.relpath(theirs[-1].filename)}:{theirs[-1].lineno}" if theirs else None
    return {"type": type(exc).__name__, "message": str(exc), "where": where}


class _WarningCollector(logging.Handler):
    """What sd-scripts warns about while it builds the dataset (an ignored subset, ...)."""

    active: _WarningCollector

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.messages.append(record.getMessage())


_WarningCollector.active = _WarningCollector()

if __name__ == "__main__":
    sys.exit(main())
