"""The `autotrain` command as a user runs it: exit codes, messages, and what it leaves on disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from autotrain.jobs import keys
from tests.conftest import copy_example
from tests.helpers_datasets import snapshot, write_not_image


def autotrain(workspace: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
    full_env = {
        **os.environ,
        "AUTOTRAIN_WORKSPACE": str(workspace),
        "AUTOTRAIN_MIN_FREE_DISK_GB": "0",
    }
    full_env.pop("AUTOTRAIN_REDIS_URL", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "autotrain.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=workspace,
        timeout=timeout,
    )


@pytest.fixture
def workspace(tmp_path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    return root


def test_prepare_dry_run_prints_the_plan_and_changes_nothing(workspace, tmp_path):
    dataset = copy_example(tmp_path)
    before = snapshot(workspace)
    result = autotrain(
        workspace,
        "pipeline",
        "prepare",
        "--dataset-path",
        str(dataset),
        "--profile",
        "Tiny",
        "--dry-run",
    )
    assert result.returncode == 0, result.stderr
    assert snapshot(workspace) == before
    assert "autotrain.tiny_trainer" in result.stdout and "--config_file" in result.stdout
    assert "Total training steps: 400" in result.stdout
    assert "would-copy" in result.stdout
    assert "train_data_dir" in result.stdout  # the config that would be written


def test_prepare_stages_configures_and_logs(workspace, tmp_path):
    dataset = copy_example(tmp_path)
    result = autotrain(
        workspace, "pipeline", "prepare", "--dataset-path", str(dataset), "--profile", "Tiny"
    )
    assert result.returncode == 0, result.stderr
    assert len(list((workspace / "input" / "tiny_shapes").glob("*.png"))) == 12
    config = tomllib.loads((workspace / "BatchConfig" / "Tiny" / "tiny_shapes.toml").read_text())
    assert config["train_data_dir"] == str(workspace / "input" / "tiny_shapes")
    assert (workspace / "output" / "tiny_shapes" / "sample_prompts.txt").is_file()
    assert "prepare tiny_shapes" in (workspace / "logs" / "autotrain_pipeline.log").read_text()
    # The same command again reuses the identical staged copy; a changed source needs a flag.
    assert (
        autotrain(
            workspace, "pipeline", "prepare", "--dataset-path", str(dataset), "--profile", "Tiny"
        ).returncode
        == 0
    )
    (dataset / "shape_00.txt").write_text("a different caption")
    changed = autotrain(
        workspace, "pipeline", "prepare", "--dataset-path", str(dataset), "--profile", "Tiny"
    )
    assert changed.returncode == 1
    assert "--skip-copy" in changed.stderr and "--force" in changed.stderr
    assert "--skip-copy" in (workspace / "logs" / "autotrain_errors.log").read_text()


def test_unknown_profile_lists_the_available_ones(workspace, tmp_path):
    dataset = copy_example(tmp_path)
    result = autotrain(
        workspace, "pipeline", "prepare", "--dataset-path", str(dataset), "--profile", "Fluxx"
    )
    assert result.returncode == 1
    assert (
        "Invalid profile 'Fluxx'. Did you mean 'Flux'? Available: Flux, FluxLORA, SDXL, Tiny"
        in result.stderr
    )
    assert not (workspace / "input").exists()


def test_unsafe_dataset_name_is_refused(workspace, tmp_path):
    dataset = copy_example(tmp_path)
    result = autotrain(
        workspace,
        "pipeline",
        "prepare",
        "--dataset-path",
        str(dataset),
        "--profile",
        "Tiny",
        "--dataset-name",
        "../x",
    )
    assert result.returncode != 0
    assert "'../x'" in result.stderr
    assert not (workspace.parent / "x").exists() and not (workspace / "input").exists()


def test_user_text_is_printed_as_written_never_as_markup(workspace, tmp_path):
    """A folder and --dataset-name holding rich markup (`[red]`, a bare closing `[/]`) are
    printed as the user wrote them, in tables, lines and error messages, with no traceback."""
    dataset = copy_example(tmp_path, "[red]x[/]")  # the folder `]` inside the folder `[red]x[`
    assert str(dataset).endswith("/[red]x[/]")
    prepare = ("pipeline", "prepare", "--dataset-path", str(dataset), "--profile", "Tiny")
    # wide enough that the table never folds the (long, temporary) path inside its cell
    planned = autotrain(workspace, *prepare, "--dry-run", "--dataset-name", "ok",
                        env={"COLUMNS": "1000"})  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    assert f"{dataset}" in planned.stdout  # the validation table's path
    for name in ("v2[/]", "[red]x[/]"):
        refused = autotrain(workspace, *prepare, "--dataset-name", name)
        assert refused.returncode == 1
        assert f"Error: Invalid dataset name '{name}'" in refused.stderr
        assert "Traceback" not in refused.stderr and "MarkupError" not in refused.stderr
    too_few = autotrain(workspace, *prepare, "--min-images", "100")
    assert too_few.returncode == 1
    assert f"Only 12 valid images in {dataset}, --min-images is 100" in too_few.stderr
    assert "Traceback" not in too_few.stderr


def test_min_images_failure_names_both_numbers(workspace, tmp_path):
    dataset = copy_example(tmp_path)
    result = autotrain(
        workspace,
        "pipeline",
        "prepare",
        "--dataset-path",
        str(dataset),
        "--profile",
        "Tiny",
        "--min-images",
        "50",
    )
    assert result.returncode == 1
    assert "12" in result.stderr and "50" in result.stderr
    assert not (workspace / "input" / "tiny_shapes").exists()


def test_batch_prepare_only_keeps_going_past_a_broken_dataset(workspace, tmp_path):
    root = tmp_path / "datasets"
    root.mkdir()
    copy_example(root, "good")
    (root / "bad").mkdir()
    write_not_image(root / "bad" / "photo.jpg")
    result = autotrain(
        workspace,
        "pipeline",
        "batch",
        "--datasets-dir",
        str(root),
        "--profile",
        "Tiny",
        "--prepare-only",
    )
    assert result.returncode == 1
    assert "photo.jpg" in result.stderr
    assert "1 prepared, 1 failed" in result.stdout
    assert (workspace / "BatchConfig" / "Tiny" / "good.toml").is_file()
    assert not (workspace / "input" / "bad").exists()


@pytest.mark.slow
def test_immediate_run_needs_no_redis(workspace, tmp_path):
    dataset = copy_example(tmp_path)
    # A Redis URL nobody listens on: --immediate must not touch it.
    env = {"AUTOTRAIN_REDIS_URL": "redis://127.0.0.1:9/0"}
    result = autotrain(
        workspace,
        "pipeline",
        "run",
        "--dataset-path",
        str(dataset),
        "--profile",
        "Tiny",
        "--immediate",
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "steps: 100%" in result.stdout  # the trainer's output, streamed
    assert (
        workspace / "output" / "tiny_shapes" / "model" / "tiny_shapes.safetensors"
    ).stat().st_size > 0
    assert (workspace / "output" / "tiny_shapes" / "run.json").is_file()
    assert not (workspace / ".autotrain").exists()


def test_queued_run_without_redis_says_how_to_fix(workspace, tmp_path):
    dataset = copy_example(tmp_path)
    env = {"AUTOTRAIN_REDIS_URL": "redis://127.0.0.1:9/0"}
    result = autotrain(
        workspace, "pipeline", "run", "--dataset-path", str(dataset), "--profile", "Tiny", env=env
    )
    assert result.returncode == 1
    assert "Cannot reach Redis" in result.stderr and "AUTOTRAIN_REDIS_URL" in result.stderr


def test_config_show_names_each_source(workspace):
    (workspace / "autotrain.toml").write_text(
        'min_free_disk_gb = 12.5\nsd_scripts_dir = "/opt/sd-scripts"\n'
    )
    result = autotrain(workspace, "config", "show", env={"AUTOTRAIN_LEASE_SECONDS": "45"})
    assert result.returncode == 0, result.stderr
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith("│")}
    assert "45" in lines["lease_seconds"] and "env" in lines["lease_seconds"]
    assert "/opt/sd-scripts" in lines["sd_scripts_dir"] and "file" in lines["sd_scripts_dir"]
    assert "default" in lines["max_attempts"]


def test_workspace_profile_overrides_builtin_and_is_listed(workspace):
    target = workspace / "templates" / "Tiny"
    target.mkdir(parents=True)
    (target / "profile.toml").write_text('description = "my tiny"\nbackend = "tiny"\n')
    (target / "base.toml").write_text("max_train_steps = 7\n")
    listing = autotrain(workspace, "profiles", "list")
    assert listing.returncode == 0
    tiny = next(line for line in listing.stdout.splitlines() if "Tiny" in line)
    assert "workspace" in tiny
    shown = autotrain(workspace, "profiles", "show", "Tiny")
    assert "max_train_steps = 7" in shown.stdout


def test_missing_template_is_configuration_file_not_found(workspace, tmp_path):
    dataset = copy_example(tmp_path)
    target = workspace / "templates" / "Broken"
    target.mkdir(parents=True)
    (target / "profile.toml").write_text('backend = "tiny"\n')
    result = autotrain(
        workspace, "pipeline", "prepare", "--dataset-path", str(dataset), "--profile", "Broken"
    )
    assert result.returncode == 1
    assert "Configuration file not found" in result.stderr and "base.toml" in result.stderr


def test_every_command_has_help_with_an_example(workspace):
    commands = [
        ["pipeline", "prepare"], ["pipeline", "run"], ["pipeline", "batch"], ["train", "list"],
        ["train", "monitor"], ["train", "cancel"], ["train", "logs"], ["up"], ["down"], ["status"],
        ["worker"], ["flower"], ["doctor"], ["profiles", "list"], ["profiles", "show"], ["config", "show"],
    ]  # fmt: skip
    for command in commands:
        result = autotrain(workspace, *command, "--help")
        assert result.returncode == 0, command
        assert "autotrain " in result.stdout.split("Options:")[0], f"no example in {command} --help"


# --- checks before queueing (no worker runs: a refused job must never reach the queue) ---------


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        ("typo", "Invalid profile 'Tinytest'. Did you mean 'TinyTest'?"),
        ("missing", "does not exist: check the path"),
        ("empty", "No image files found in"),
        ("corrupt", "none of the 3 image files opens as an image"),
    ],
)
def test_run_refuses_at_once_what_it_can_check(cluster, tmp_path, make, expected):
    dataset, profile = tmp_path / "ds", "TinyTest"
    if make == "typo":
        copy_example(tmp_path, "ds")
        profile = "Tinytest"
    elif make in ("empty", "corrupt"):
        dataset.mkdir()
        for i in range(3 if make == "corrupt" else 0):
            (dataset / f"img{i}.png").write_bytes(b"not an image at all")
    run = cluster.cli("pipeline", "run", "--dataset-path", str(dataset), "--profile", profile)
    assert run.returncode == 1
    assert expected in run.stderr
    assert cluster.redis.zcard(keys.JOBS) == 0, "nothing was queued"


def test_a_kohya_profile_without_sd_scripts_is_refused_before_queueing(cluster, tmp_path):
    dataset = copy_example(tmp_path)
    run = cluster.cli("pipeline", "run", "--dataset-path", str(dataset), "--profile", "FluxLORA")
    assert run.returncode == 1
    assert "cannot train here" in run.stderr and "sd_scripts_dir is not set" in run.stderr
    assert cluster.redis.zcard(keys.JOBS) == 0


def test_a_batch_with_a_bad_profile_queues_nothing(cluster, tmp_path):
    copy_example(tmp_path / "sets", "a")
    run = cluster.cli("pipeline", "batch", "--datasets-dir", str(tmp_path / "sets"),
                      "--profile", "Tnyi")  # fmt: skip
    assert run.returncode == 1 and "Invalid profile 'Tnyi'" in run.stderr
    assert cluster.redis.zcard(keys.JOBS) == 0


def test_a_batch_names_each_refused_dataset_in_full_and_queues_the_rest(cluster, tmp_path):
    sets = tmp_path / "sets"
    copy_example(sets, "good")
    broken = sets / "broken_set_with_a_long_name_that_must_not_be_cut_short"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not an image")
    run = cluster.cli("pipeline", "batch", "--datasets-dir", str(sets), "--profile", "TinyTest")
    assert run.returncode == 0, run.stderr
    assert "1 jobs" in run.stdout
    assert f"No usable images in {broken.resolve()}" in run.stderr.replace("\n", "")


def test_run_says_when_no_worker_will_take_the_job(cluster, tmp_path):
    run = cluster.cli("pipeline", "run", "--dataset-path", str(copy_example(tmp_path)),
                      "--profile", "TinyTest")  # fmt: skip
    assert run.returncode == 0
    assert "no live worker is connected" in run.stderr and "autotrain worker" in run.stderr
    listing = cluster.cli("train", "list")
    assert "no live worker is connected" in listing.stdout.replace("\n", " ")


def test_a_monitor_keeps_saying_that_no_worker_will_take_the_job(cluster, tmp_path):
    dataset = copy_example(tmp_path)
    monitor = subprocess.Popen(
        [sys.executable, "-m", "autotrain.cli", "pipeline", "run", "--dataset-path", str(dataset),
         "--profile", "TinyTest", "--monitor"],
        env=cluster.env, cwd=cluster.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = monitor.communicate(timeout=8)
    except subprocess.TimeoutExpired:
        monitor.send_signal(signal.SIGINT)
        out, err = monitor.communicate(timeout=20)
    assert "queued | no live worker is connected" in out, out + err
    assert monitor.returncode == 130 and "Detached; the job goes on" in out


# --- exit codes: each one the README documents (0, 1, 2 here; 130 in the monitor test above) ---


def test_the_readme_lists_the_exit_codes_these_tests_check():
    readme = (Path(__file__).parent.parent.parent / "README.md").read_text()
    table = readme.split("Exit codes, the same for every command:")[1].split("\n\n")[1]
    codes = [row.split("|")[1].strip() for row in table.splitlines()[2:]]
    assert codes == ["0", "1", "2", "130"]


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["config", "show"], 0, "workspace"),
        (
            ["pipeline", "prepare", "--dataset-path", "no/such", "--profile", "Tiny"],
            1,
            "does not exist",
        ),
        (["pipeline", "run", "--profile", "Tiny", "--no-such-option"], 2, "No such option"),
        (["train", "list", "--limit", "0"], 2, "Invalid value for '--limit'"),
        (["no-such-command"], 2, "No such command"),
    ],
)
def test_exit_codes(workspace, args, code, says):
    result = autotrain(workspace, *args)
    assert result.returncode == code, result.stdout + result.stderr
    assert says in result.stdout + result.stderr


def test_help_loads_none_of_the_heavy_libraries():
    """`autotrain --help` starts fast because it imports only click (bench/cli.py times it)."""
    probe = (
        "import sys\nfrom autotrain.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = ('celery', 'kombu', 'redis', 'pydantic', 'rich', 'torch', 'PIL')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr


def test_batch_refuses_only_the_datasets_whose_names_collide(workspace, tmp_path):
    """`My Cat` and `My_Cat` slugify to one name: both are named, the third is prepared."""
    root = tmp_path / "datasets"
    root.mkdir()
    for folder in ("My Cat", "My_Cat", "dogs"):
        copy_example(root, folder)
    result = autotrain(
        workspace,
        "pipeline",
        "batch",
        "--datasets-dir",
        str(root),
        "--profile",
        "Tiny",
        "--prepare-only",
    )
    assert result.returncode == 1
    stderr = " ".join(result.stderr.split())
    assert f"{root / 'My Cat'} and {root / 'My_Cat'} would both be named 'My_Cat'" in stderr
    assert f"{root / 'My_Cat'} and {root / 'My Cat'} would both be named" in stderr
    assert "1 prepared, 2 failed" in result.stdout
    assert (workspace / "BatchConfig" / "Tiny" / "dogs.toml").is_file()
    assert not (workspace / "input" / "My_Cat").exists()


def test_kohya_dry_run_without_model_files_prints_the_plan_and_lists_them(
    workspace, tmp_path, monkeypatch
):
    """A laptop with no sd-scripts and no weights still gets the whole plan, then exit 1."""
    for setting in ("SD_SCRIPTS_DIR", "SD_SCRIPTS_PYTHON", "FLUX_MODEL", "CLIP_L", "T5XXL", "AE"):
        monkeypatch.delenv(f"AUTOTRAIN_{setting}", raising=False)
    dataset = copy_example(tmp_path)
    before = snapshot(workspace)
    for command in ("prepare", "run"):
        result = autotrain(
            workspace, "pipeline", command, "--dataset-path", str(dataset),
            "--profile", "FluxLORA", "--dry-run",
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert snapshot(workspace) == before
        assert "would-copy" in result.stdout and "Total training steps" in result.stdout
        assert "<sd_scripts_dir>/flux_train_network.py" in result.stdout
        assert 'pretrained_model_name_or_path = "<flux_model>"' in result.stdout
        problems = " ".join(result.stderr.split())
        assert "Problems before this can train" in problems
        assert "Problems before this can train (5)" in problems
        assert "sd_scripts_dir is not set" in problems
        for setting in ("flux_model", "clip_l", "t5xxl", "ae"):
            assert f"{setting} (AUTOTRAIN_{setting.upper()}) is not set" in problems
