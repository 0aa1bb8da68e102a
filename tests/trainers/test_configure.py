"""Phase 3: configs rendered from the built-in kohya profiles are what sd-scripts accepts.

The key lists in tests/data/sd_scripts_args/ were extracted from sd-scripts' own argument parsers
(docs/sd-scripts-keys.md says from which commit and how).
"""

from __future__ import annotations

import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomli_w

from autotrain.errors import ConfigError
from autotrain.profile import builtin_templates_dir, load_profile
from autotrain.settings import load_settings
from autotrain.spec import JobSpec
from autotrain.trainers.configure import (
    TrainSubset,
    clean_prompt_text,
    configure_job,
    estimate_total_steps,
    render_plan,
    sample_prompt_line,
    write_plan,
)
from autotrain.workspace import Workspace
from tests.standins.sd_scripts.standin_support import (
    load_argument_list,
    load_dataset_keys,
    value_fits,
)

KOHYA_PROFILES = ["Flux", "FluxLORA", "SDXL"]
PER_DATASET_KEYS = {"output_dir", "output_name", "logging_dir", "sample_prompts", "dataset_config"}


@dataclass
class FakeSubset:
    """The shape of autotrain.datasets.discovery.Subset that phase 3 reads."""

    relpath: str
    repeats: int | None
    image_count: int
    class_tokens: str | None = None


@dataclass
class Report:
    """The part of phase 1's ValidationReport that phase 3 reads."""

    name: str
    subsets: list[FakeSubset]
    images: list[object] = field(default_factory=list)


def report_for(name: str, *subsets: FakeSubset) -> Report:
    total = sum(s.image_count for s in subsets)
    return Report(name=name, subsets=list(subsets), images=[object()] * total)


# The stand-in enforces the same lists at run time; one reading of them serves both.
argument_list = load_argument_list
dataset_keys = load_dataset_keys
type_ok = value_fits


@pytest.fixture
def settings(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    paths = {}
    for field_name in ("flux_model", "clip_l", "t5xxl", "ae", "sdxl_model"):
        paths[field_name] = models / f"{field_name}.safetensors"
        paths[field_name].write_bytes(b"x")
    return load_settings(tmp_path / "ws", **paths)


def spec_for(name: str, profile: str, gpu_ids: list[int] | None = None) -> JobSpec:
    return JobSpec(
        dataset_path=Path("/data") / name, name=name, profile=profile, gpu_ids=gpu_ids or []
    )


@pytest.mark.parametrize("profile_name", KOHYA_PROFILES)
def test_every_written_key_is_an_sd_scripts_argument(profile_name, settings):
    profile = load_profile(profile_name)
    script = Path(profile.script).stem
    known = argument_list(script)
    report = report_for("char_a", FakeSubset(".", None, 12), FakeSubset("5_style", 5, 3, "style"))
    plan = render_plan(spec_for("char_a", profile_name), profile, settings, report)

    unknown = sorted(set(plan.config) - set(known))
    assert not unknown, f"{profile_name} writes keys {script}.py does not define: {unknown}"
    wrong = {k: v for k, v in plan.config.items() if not type_ok(*known[k], v)}
    assert not wrong, f"{profile_name} writes values of the wrong type or choice: {wrong}"

    allowed = dataset_keys()
    assert set(plan.dataset_config) == {"general", "datasets"}
    assert set(plan.dataset_config["general"]) <= allowed["general"]
    for dataset in plan.dataset_config["datasets"]:
        assert set(dataset) - {"subsets"} <= allowed["datasets"]
        for subset in dataset["subsets"]:
            assert set(subset) <= allowed["datasets.subsets"]


@pytest.mark.parametrize("profile_name", KOHYA_PROFILES)
def test_templates_save_resumable_state(profile_name):
    """A crash must cost at most one save interval: state saved every N steps, old ones pruned."""
    template = load_profile(profile_name).load_template()
    assert template["save_state"] is True
    assert template["save_every_n_steps"] > 0
    assert template["save_last_n_steps_state"] >= template["save_every_n_steps"]
    assert template["save_model_as"] == "safetensors"
    assert template.get("max_train_epochs") or template.get("max_train_steps")
    assert template["train_batch_size"] >= 1


def test_per_dataset_keys_and_files(settings):
    profile = load_profile("FluxLORA")
    ws = Workspace(settings.workspace)
    report = report_for(
        "char_a", FakeSubset(".", None, 4), FakeSubset("3_ohwx dog", 3, 2, "ohwx dog")
    )
    plan = configure_job(spec_for("char_a", "FluxLORA"), profile, settings, report)

    config = plan.config
    assert config["output_dir"] == str(ws.model_dir("char_a"))
    assert config["output_name"] == "char_a"
    assert config["logging_dir"] == str(ws.log_dir("char_a"))
    assert config["sample_prompts"] == str(ws.sample_prompts_file("char_a"))
    assert config["dataset_config"] == str(ws.dataset_config_file("FluxLORA", "char_a"))
    assert config["pretrained_model_name_or_path"] == str(settings.flux_model)
    assert config["clip_l"] == str(settings.clip_l)
    assert config["t5xxl"] == str(settings.t5xxl)
    assert config["ae"] == str(settings.ae)
    assert config["network_module"] == "networks.lora_flux"  # from the template

    subsets = plan.dataset_config["datasets"][0]["subsets"]
    assert subsets == [
        {"image_dir": str(ws.input_dir("char_a")), "num_repeats": 10, "class_tokens": "char_a"},
        {
            "image_dir": str(ws.input_dir("char_a") / "3_ohwx dog"),
            "num_repeats": 3,
            "class_tokens": "ohwx dog",
        },
    ]
    assert plan.dataset_config["general"] == {"caption_extension": ".txt", "resolution": 1024}

    # files on disk are exactly the plan, and survive a TOML round trip
    assert plan.config_path == ws.root / "BatchConfig" / "FluxLORA" / "char_a.toml"
    written = tomllib.loads(plan.config_path.read_text(encoding="utf-8"))
    assert written == config == tomllib.loads(tomli_w.dumps(config))
    assert (
        tomllib.loads(plan.dataset_config_path.read_text(encoding="utf-8")) == plan.dataset_config
    )
    assert ws.sample_prompts_file("char_a").read_text(encoding="utf-8") == plan.sample_prompts
    leftovers = [p.name for p in plan.config_path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_render_plan_writes_nothing(settings):
    report = report_for("dry", FakeSubset(".", None, 2))
    render_plan(spec_for("dry", "SDXL"), load_profile("SDXL"), settings, report)
    assert not settings.workspace.exists()


def test_unset_model_setting_is_left_out(tmp_path):
    settings = load_settings(tmp_path / "ws")
    plan = render_plan(
        spec_for("x", "SDXL"),
        load_profile("SDXL"),
        settings,
        report_for("x", FakeSubset(".", 2, 1)),
    )
    assert "pretrained_model_name_or_path" not in plan.config


def test_sample_prompt_format_per_profile(settings):
    flux = render_plan(
        spec_for("cat", "Flux"),
        load_profile("Flux"),
        settings,
        report_for("cat", FakeSubset(".", 1, 1)),
    )
    assert flux.sample_prompts == "photo of cat --w 1024 --h 1024 --s 20 --d 42 --g 3.5\n"
    sdxl = render_plan(
        spec_for("cat", "SDXL"),
        load_profile("SDXL"),
        settings,
        report_for("cat", FakeSubset(".", 1, 1)),
    )
    assert sdxl.sample_prompts == (
        "photo of cat --n lowres, bad anatomy, blurry, worst quality "
        "--w 1024 --h 1024 --s 28 --d 42 --l 7\n"
    )


NASTY = [
    "cat --w 4096 --h 4096",
    "line one\nline two --n evil\r\n--s 999",
    "tab\there\x00nul\u2028sep",
    "---triple -- double",
    "cn tower at night",
    "# a comment",
    "n girl",
    "   ",
]


@pytest.mark.parametrize("text", NASTY)
def test_prompt_text_cannot_inject_options(text, tmp_path):
    profile = load_profile("SDXL").model_copy(deep=True)
    profile.sample.prompt = text + " {class_tokens}"
    profile.sample.negative = text
    line = sample_prompt_line(profile, "ds", "ds")

    assert "\n" not in line and "\r" not in line and "\x00" not in line
    options = line.split(" --")[1:]
    letters = [opt.split(" ", 1)[0] for opt in options]
    assert letters == ["n", "w", "h", "s", "d", "l"] or letters == ["w", "h", "s", "d", "l"]
    assert " --w 1024 --h 1024 --s 28 --d 42 --l 7" in line
    assert not line.startswith("#")
    # kohya also matches option letters at the very start of the prompt
    head = line.split(" --")[0]
    assert not head.lower().startswith(("cn ", "n ", "w ", "s ", "ss ", "fs "))


def test_clean_prompt_text():
    assert clean_prompt_text("a\nb --c\t d") == "a b -c d"
    assert clean_prompt_text("") == ""


def test_guidance_written_without_exponent(tmp_path):
    profile = load_profile("SDXL").model_copy(deep=True)
    profile.sample.guidance = 0.00001
    assert sample_prompt_line(profile, "x", "x").endswith("--l 0.00001")


def test_total_steps_follow_kohya_arithmetic():
    subsets = [TrainSubset(".", 10, 7, "a"), TrainSubset("2_b", 2, 3, "b")]  # 70 + 6 = 76 samples
    assert estimate_total_steps({"max_train_epochs": 4, "train_batch_size": 1}, subsets) == 304
    # ceil(76 / 4) = 19 batches per epoch
    assert estimate_total_steps({"max_train_epochs": 2, "train_batch_size": 4}, subsets) == 38
    # accumulation and processes divide the batches (ceil): ceil(19 / 2 / 2) = 5
    config = {"max_train_epochs": 3, "train_batch_size": 4, "gradient_accumulation_steps": 2}
    assert estimate_total_steps(config, subsets, num_processes=2) == 15
    assert estimate_total_steps({"max_train_steps": 123}, subsets) == 123
    assert estimate_total_steps({}, subsets) == 1600  # sd-scripts' default


def test_plan_total_and_save_interval(settings):
    report = report_for("s", FakeSubset(".", None, 5))  # 5 images * 10 repeats, epochs 8
    plan = render_plan(spec_for("s", "FluxLORA"), load_profile("FluxLORA"), settings, report)
    assert plan.total_steps == 400
    assert plan.save_every_n_steps == 100
    two_gpus = render_plan(
        spec_for("s", "FluxLORA", [0, 1]), load_profile("FluxLORA"), settings, report
    )
    assert two_gpus.total_steps == 200


def test_workspace_profile_overrides_builtin(settings):
    ws = Workspace(settings.workspace)
    override = ws.templates_dir / "FluxLORA"
    shutil.copytree(builtin_templates_dir() / "FluxLORA", override)
    template = tomllib.loads((override / "base.toml").read_text(encoding="utf-8"))
    template["network_dim"] = 64
    template["learning_rate"] = 5e-5
    (override / "base.toml").write_text(tomli_w.dumps(template), encoding="utf-8")

    profile = load_profile("FluxLORA", ws.templates_dir)
    assert profile.source == "workspace"
    plan = render_plan(
        spec_for("o", "FluxLORA"), profile, settings, report_for("o", FakeSubset(".", 1, 1))
    )
    assert plan.config["network_dim"] == 64
    assert plan.config["learning_rate"] == 5e-5


def test_template_tables_are_flattened_like_sd_scripts(settings):
    ws = Workspace(settings.workspace)
    custom = ws.templates_dir / "Sectioned"
    shutil.copytree(builtin_templates_dir() / "FluxLORA", custom)
    (custom / "base.toml").write_text(
        tomli_w.dumps(
            {
                "max_train_steps": 10,
                "model": {"network_dim": 8, "output_dir": "/elsewhere"},
                "training": {"learning_rate": 1e-3},
            }
        ),
        encoding="utf-8",
    )
    profile = load_profile("Sectioned", ws.templates_dir)
    plan = render_plan(
        spec_for("t", "Sectioned"), profile, settings, report_for("t", FakeSubset(".", 1, 1))
    )
    assert plan.config["network_dim"] == 8
    assert plan.config["learning_rate"] == 1e-3
    assert plan.config["output_dir"] == str(ws.model_dir("t"))  # per-dataset keys always win
    assert not any(isinstance(v, dict) for v in plan.config.values())


def test_missing_template_is_configuration_file_not_found(settings):
    ws = Workspace(settings.workspace)
    broken = ws.templates_dir / "NoBase"
    broken.mkdir(parents=True)
    shutil.copy(builtin_templates_dir() / "FluxLORA" / "profile.toml", broken / "profile.toml")
    profile = load_profile("NoBase", ws.templates_dir)
    with pytest.raises(ConfigError, match="Configuration file not found") as info:
        render_plan(
            spec_for("n", "NoBase"), profile, settings, report_for("n", FakeSubset(".", 1, 1))
        )
    assert str(broken / "base.toml") in str(info.value)


def test_rewrite_replaces_files_atomically(settings):
    profile = load_profile("SDXL")
    plan = configure_job(
        spec_for("r", "SDXL"), profile, settings, report_for("r", FakeSubset(".", 1, 2))
    )
    plan2 = plan.model_copy(update={"config": {**plan.config, "learning_rate": 2e-5}})
    write_plan(plan2)
    assert tomllib.loads(plan.config_path.read_text(encoding="utf-8"))["learning_rate"] == 2e-5
    assert sorted(p.name for p in plan.config_path.parent.iterdir()) == ["r.toml", "r_dataset.toml"]


def test_no_images_is_a_clear_error(settings):
    with pytest.raises(ConfigError, match="no images"):
        render_plan(
            spec_for("e", "SDXL"),
            load_profile("SDXL"),
            settings,
            report_for("e", FakeSubset(".", 1, 0)),
        )
