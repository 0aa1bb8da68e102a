"""autotrain against the REAL kohya-ss sd-scripts (opt-in: skipped unless prepared).

A machine prepared with `../shared/real-sd-scripts/run.sh GIT_DIR WORK` runs the real, unmodified
`flux_train_network.py` on the CPU with tiny random-weight models. Point these at it:

    AUTOTRAIN_TEST_SD_SCRIPTS_DIR=WORK/sd-scripts
    AUTOTRAIN_TEST_SD_SCRIPTS_PYTHON=WORK/venv/bin/python
    AUTOTRAIN_TEST_SD_MODELS=WORK/models            (flux_tiny, clip_l, t5xxl_fp8, ae .safetensors)
    AUTOTRAIN_TEST_SD_TOKENIZERS=WORK/tokenizers    (default: beside the models)
    AUTOTRAIN_TEST_SD_PROFILE=.../real-sd-scripts/profile/FluxLORACPU
                                                    (default: ../shared/real-sd-scripts/profile/FluxLORACPU)

Each training run takes about 3 minutes on 2 cores (12 steps of a 128 px Flux LoRA). Run the
module alone, under `nice -n 19`. Through autotrain: a real Redis, a real worker, the
`pipeline run` command; the odd-dataset corpus goes through phases 1-3 in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tomllib
from pathlib import Path

import pytest
import tomli_w
from PIL import Image

from autotrain.errors import ValidationError
from autotrain.jobs.job import JobState
from autotrain.pipeline import prepare_pipeline
from autotrain.profile import load_profile
from autotrain.settings import load_settings
from autotrain.storage.layout import job_prefix
from autotrain.trainers.trainer_check import ask_the_trainer
from autotrain.workspace import Workspace
from tests.conftest import REPO, Cluster, copy_example, job_id_in, pids_of, wait_for

PROFILE = "FluxLORACPU"
MODEL_FILES = {"flux_model": "flux_tiny", "clip_l": "clip_l", "t5xxl": "t5xxl_fp8", "ae": "ae"}


def _prepared() -> dict[str, Path] | None:
    names = ("SD_SCRIPTS_DIR", "SD_SCRIPTS_PYTHON", "SD_MODELS")
    values = [os.environ.get(f"AUTOTRAIN_TEST_{n}") for n in names]
    if not all(values):
        return None
    found = dict(zip(("dir", "python", "models"), map(Path, values), strict=True))
    found["tokenizers"] = Path(
        os.environ.get("AUTOTRAIN_TEST_SD_TOKENIZERS") or found["models"].parent / "tokenizers"
    )
    found["profile"] = Path(
        os.environ.get("AUTOTRAIN_TEST_SD_PROFILE")
        or REPO.parent / "shared" / "real-sd-scripts" / "profile" / PROFILE
    )
    return found


REAL = _prepared()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        REAL is None,
        reason="the real sd-scripts is not prepared: set AUTOTRAIN_TEST_SD_SCRIPTS_DIR, "
        "AUTOTRAIN_TEST_SD_SCRIPTS_PYTHON and AUTOTRAIN_TEST_SD_MODELS (see the module doc)",
    ),
]


def _missing() -> list[str]:
    assert REAL is not None
    wanted = [REAL["dir"] / "flux_train_network.py", REAL["python"], REAL["profile"] / "base.toml"]
    wanted += [REAL["models"] / f"{stem}.safetensors" for stem in MODEL_FILES.values()]
    return [str(p) for p in wanted if not p.exists()]


@pytest.fixture(scope="module", autouse=True)
def _complete():
    if missing := _missing():
        pytest.skip(f"the real sd-scripts is incomplete: missing {', '.join(missing)}")


def _install_profile(workspace: Path, **changes) -> None:
    """FluxLORACPU in the workspace's templates/, WORK_DIR replaced, `changes` applied."""
    assert REAL is not None
    target = workspace / "templates" / PROFILE
    shutil.copytree(REAL["profile"], target)
    text = (target / "base.toml").read_text(encoding="utf-8")
    base = tomllib.loads(text.replace("WORK_DIR/tokenizers", str(REAL["tokenizers"])))
    base.update(changes)
    (target / "base.toml").write_text(tomli_w.dumps(base), encoding="utf-8")


def _model_settings() -> dict[str, str]:
    assert REAL is not None
    found = {"sd_scripts_dir": str(REAL["dir"]), "sd_scripts_python": str(REAL["python"])}
    for field, stem in MODEL_FILES.items():
        found[field] = str(REAL["models"] / f"{stem}.safetensors")
    return found


@pytest.fixture
def real(cluster):
    """The cluster's workspace wired to the real sd-scripts."""
    # 4 images for 3 epochs: 12 steps, saves at 4 and 8. T5-XXL runs on the CPU: one batch of
    # 4 captions takes minutes, twelve batches of one would take a quarter of an hour.
    _install_profile(cluster.root, text_encoder_batch_size=4, max_train_epochs=3)
    for key, value in _model_settings().items():
        cluster.env[f"AUTOTRAIN_{key.upper()}"] = value
    cluster.env["HF_HUB_OFFLINE"] = "1"
    cluster.env["AUTOTRAIN_LEASE_SECONDS"] = "15"  # a busy 2-core host
    return cluster


def _submit(cluster, tmp_path) -> str:
    dataset = copy_example(tmp_path, "cat")
    for extra in sorted(dataset.glob("shape_*.png"))[4:]:
        extra.unlink()
        extra.with_suffix(".txt").unlink(missing_ok=True)
    run = cluster.cli("pipeline", "run", "--dataset-path", str(dataset), "--profile", PROFILE,
                      check=True)  # fmt: skip
    return job_id_in(run.stdout)


def _trainers(cluster) -> list[int]:
    assert REAL is not None
    return pids_of(str(REAL["dir"] / "flux_train_network.py"), cluster.root)


def test_a_job_trains_with_the_real_trainer(real, tmp_path):
    real.start_worker("h1")
    job_id = _submit(real, tmp_path)
    store = real.store()
    wait_for(lambda: store.get(job_id).is_final, 1200, "the job to end", interval=1)
    job = store.get(job_id)
    assert job.state == JobState.SUCCEEDED, job.error
    assert (job.step, job.total) == (12, 12)
    model = real.root / "output" / "cat" / "model"
    assert {"cat-step00000004.safetensors", "cat-step00000008.safetensors",
            "cat.safetensors"} <= {p.name for p in model.iterdir()}  # fmt: skip
    manifest = json.loads((real.root / "output" / "cat" / "run.json").read_text())
    assert manifest["result"] == "succeeded"
    assert (
        manifest["trainer"]["version"]["sd_scripts_commit"] is None
        or len(manifest["trainer"]["version"]["sd_scripts_commit"]) == 40
    )


def test_a_killed_worker_resumes_with_true_step_names_to_the_true_total(real, tmp_path):
    real.start_worker("h1")
    job_id = _submit(real, tmp_path)
    model = real.root / "output" / "cat" / "model"
    wait_for(lambda: list(model.glob("cat-step*-state")), 1200, "the first state", interval=1)
    for pid in real.worker_pids("cpu@h1"):
        os.kill(pid, signal.SIGKILL)
    store = real.store()
    wait_for(lambda: store.get(job_id).is_final, 1200, "the job to end after the crash",
             interval=1)  # fmt: skip
    job = store.get(job_id)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.attempt == 2 and (job.step, job.total) == (12, 12)
    log = (real.root / "output" / "cat" / "log" / "trainer.log").read_text(errors="replace")
    resumed = log.split("\n$ ")[-1].split("\n", 1)[0]
    assert "--resume" in resumed and "--skip_until_initial_step" in resumed
    names = {p.name for p in model.glob("cat*.safetensors")}
    assert {"cat-step00000004.safetensors", "cat-step00000008.safetensors",
            "cat.safetensors"} <= names  # fmt: skip
    assert not [p for p in model.iterdir() if ".r2" in p.name]
    events = [e for _id, e in store.read_events(job_id) if e.get("kind") == "step"]
    assert events[-1]["step"] == 12


def test_a_host_killed_mid_training_resumes_on_another_through_the_store(real, s3_server, tmp_path):
    """Two hosts with no folder in common, an S3 store between them: the real trainer saves a
    state on one, the host dies, and the job resumes on the other from the state in the store,
    with true step names to the true total."""
    url = s3_server.fresh_url()
    real.env.update(s3_server.env, AUTOTRAIN_STORAGE_URL=url)
    other_root = tmp_path / "other-host"
    other_root.mkdir()
    _install_profile(other_root, text_encoder_batch_size=4, max_train_epochs=3)
    other = Cluster(
        other_root, real.redis_url, {**real.env, "AUTOTRAIN_WORKSPACE": str(other_root)}
    )
    real.start_worker("h1")
    job_id = _submit(real, tmp_path)
    client, (bucket, _, prefix) = s3_server.client(), url[len("s3://") :].partition("/")

    def state_in_store() -> bool:
        listed = client.list_objects_v2(
            Bucket=bucket, Prefix=f"{prefix}/{job_prefix(job_id)}model/"
        )
        return any(o["Key"].endswith("-state/.complete") for o in listed.get("Contents", []))

    wait_for(state_in_store, 1200, "a complete state in the store", interval=1)
    for pid in pids_of("", real.root):  # the host vanishes: worker, trainer, everything
        os.kill(pid, signal.SIGKILL)
    other.start_worker("h2")
    real.workers += other.workers  # stopped with the cluster's own
    store = real.store()
    wait_for(lambda: store.get(job_id).is_final, 1500, "the job to end on the other host",
             interval=1)  # fmt: skip
    job = store.get(job_id)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.host == "h2" and job.attempt == 2 and (job.step, job.total) == (12, 12)
    output = other_root / "output" / "cat"
    log = (output / "log" / "trainer.log").read_text(errors="replace")
    resumed = log.split("\n$ ")[-1].split("\n", 1)[0]
    assert "--resume" in resumed and str(other_root) in resumed  # this host's own paths
    names = {p.name for p in (output / "model").glob("cat*.safetensors")}
    assert {"cat-step00000008.safetensors", "cat.safetensors"} <= names
    assert not [p for p in (output / "model").iterdir() if ".r2" in p.name]
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{job_prefix(job_id)}")
    in_store = {o["Key"].rsplit("/", 1)[-1] for o in listed.get("Contents", [])}
    assert {"cat.safetensors", "run.json"} <= in_store  # (this profile draws no samples)


def test_a_cancel_stops_the_real_trainer(real, tmp_path):
    real.start_worker("h1")
    job_id = _submit(real, tmp_path)
    store = real.store()
    wait_for(lambda: store.get(job_id).state == JobState.TRAINING and _trainers(real), 300,
             "the real trainer to run", interval=0.5)  # fmt: skip
    real.cli("train", "cancel", "--job", job_id, check=True)
    wait_for(lambda: store.get(job_id).is_final, 60, "the job to be cancelled", interval=0.5)
    assert store.get(job_id).state == JobState.CANCELLED
    wait_for(lambda: not _trainers(real), 30, "no trainer process left")


# The corpus: odd datasets. Whatever autotrain accepts, the real trainer's dataset code accepts.


def _save(path: Path, image: Image.Image, caption: bytes | None = b"a shape", **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    if caption is not None:
        path.with_suffix(".txt").write_bytes(caption)


def _rgb(size=(128, 96)) -> Image.Image:
    return Image.new("RGB", size, (40, 120, 200))


def _exif_rotated(folder: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    _save(folder / "phone.jpg", _rgb((128, 64)), exif=exif.tobytes())


def _sixteen_bit(folder: Path) -> None:
    _save(folder / "scan.png", Image.new("I;16", (96, 96), 40000))


def _one_stem(folder: Path) -> None:
    _save(folder / "a.jpg", _rgb())
    _save(folder / "a.png", Image.new("RGB", (64, 64), (200, 10, 10)), caption=None)


def _repeat_folders(folder: Path) -> None:
    for sub in ("0_skipped", "10-typo", "3_ohwx"):
        _save(folder / sub / "x.png", _rgb())


def _with(caption: bytes, name: str = "x.png", size=(128, 96)):
    return lambda folder: _save(folder / name, _rgb(size), caption=caption)


def _also(*makers):
    def make(folder: Path) -> None:
        _save(folder / "base.png", _rgb())
        for maker in makers:
            maker(folder)

    return make


CORPUS = {
    "zero_byte_caption": (_also(_with(b"")), "x.txt"),
    "cp1252_caption": (_also(_with("caf\u00e9 au lait".encode("cp1252"))), "x.txt"),
    "whitespace_caption": (_also(_with(b"  \n \n")), None),
    "multi_line_caption": (_also(_with(b"a photo\nof a shape\n")), None),
    "bom_caption": (_also(_with("\ufeffa shape".encode())), None),
    "tiny_for_bucket_no_upscale": (_also(_with(b"thin", size=(200, 40))), "x.png"),
    "extreme_wide": (_also(_with(b"wide", size=(1024, 64))), "x.png"),
    "extreme_tall": (_also(_with(b"tall", size=(64, 1024))), "x.png"),
    "exif_rotated": (_also(_exif_rotated), None),
    "sixteen_bit_grey": (_also(_sixteen_bit), None),
    "two_images_one_stem": (_also(_one_stem), None),
    "repeat_folders": (_also(_repeat_folders), None),
    "uppercase_and_webp": (
        _also(lambda f: _save(f / "y.PNG", _rgb()), lambda f: _save(f / "z.webp", _rgb())),
        None,
    ),  # fmt: skip
    "palette_and_alpha": (
        _also(
            lambda f: _save(f / "p.png", _rgb().convert("P")),
            lambda f: _save(f / "q.png", _rgb().convert("RGBA")),
        ),
        None,
    ),  # fmt: skip
}


@pytest.fixture(scope="module")
def corpus_settings(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    _install_profile(root / "ws")
    return load_settings(root / "ws", min_free_disk_gb=0, **_model_settings())


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_what_autotrain_accepts_the_real_trainer_accepts(name, corpus_settings, tmp_path):
    make, refused_file = CORPUS[name]
    data = tmp_path / name
    data.mkdir()
    make(data)
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        result = prepare_pipeline(data, PROFILE, settings=corpus_settings, force=True)
    except ValidationError as exc:
        assert refused_file is not None, f"autotrain refused {name}: {exc}"
        assert f"{data / refused_file}: " in str(exc), str(exc)
        return
    assert refused_file is None, f"autotrain accepted {name}, expected {refused_file} refused"
    profile = load_profile(PROFILE, Workspace(corpus_settings.workspace).templates_dir)
    staged = Workspace(corpus_settings.workspace).input_dir(name)
    check = ask_the_trainer(result.plan, profile, corpus_settings, staged, data)
    assert check.available, check.why_unavailable
    assert check.accepted, [v.line() for v in check.rejected]
    assert check.images == len(result.report.images)


def test_what_the_check_refuses_the_real_trainer_fails_on(corpus_settings, tmp_path):
    """The check's verdict is the trainer's: launched anyway, sd-scripts stops on the file."""
    data = tmp_path / "refused"
    data.mkdir()
    _also(_with(b""))(data)
    with pytest.raises(ValidationError):
        prepare_pipeline(data, PROFILE, settings=corpus_settings, force=True)
    config = Workspace(corpus_settings.workspace).config_file(PROFILE, "refused")
    assert REAL is not None
    done = subprocess.run(
        [str(REAL["python"]), "flux_train_network.py", "--config_file", str(config)],
        cwd=REAL["dir"], capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode != 0
    assert "caption file is empty" in done.stdout + done.stderr
