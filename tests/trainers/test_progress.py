"""The trainer-output parser on recorded kohya and Tiny output, fed in every way a pipe can split it."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from autotrain.trainers.progress import ProgressEvent, TrainerOutputParser, parse_text

SAMPLES = Path(__file__).parent.parent / "data" / "trainer_output"
SAMPLE_FILES = sorted(SAMPLES.glob("*.txt"))


def _read(name: str) -> str:
    return (SAMPLES / name).read_bytes().decode("utf-8")  # keep tqdm's \r (no newline translation)


def _plain(events: list[ProgressEvent]) -> list[dict]:
    """Events without their timestamps, NaN made comparable."""
    plain = []
    for event in events:
        data = event.to_dict()
        data.pop("ts")
        if isinstance(data.get("loss"), float) and math.isnan(data["loss"]):
            data["loss"] = "nan"
        plain.append(data)
    return plain


def _of(events: list[ProgressEvent], kind: str) -> list[ProgressEvent]:
    return [e for e in events if e.kind == kind]


def test_samples_keep_their_carriage_returns() -> None:
    assert SAMPLE_FILES, "recorded trainer output is missing"
    assert "\r" in _read("kohya_flux_lora.txt") and "\r" in _read("tiny.txt")


def test_kohya_flux_lora_run() -> None:
    events = parse_text(_read("kohya_flux_lora.txt"))
    steps = _of(events, "step")
    assert [e.step for e in steps] == [0, 1, 2, 3, 4, 5, 248, 249, 250, 251, 252, 1870, 2000]
    assert {e.total for e in steps} == {2000}, "caching and sampler bars must not count"
    assert steps[1].loss == pytest.approx(0.412)
    assert steps[1].rate == pytest.approx(1 / 1.52)  # "1.52s/it"
    assert steps[1].eta_seconds == 50 * 60 + 38
    assert steps[-1].loss == pytest.approx(2.1e-05)
    assert [e.total for e in _of(events, "total")] == [2000]
    assert [(e.epoch, e.epochs) for e in _of(events, "epoch")] == [(1, 8), (2, 8)]
    assert steps[-1].epoch == 2
    assert [e.path for e in _of(events, "checkpoint")] == [
        "/workspace/output/dataset_character/model/dataset_character-step00000250.safetensors",
        "/workspace/output/dataset_character/model/dataset_character.safetensors",
    ]
    assert [e.step for e in _of(events, "checkpoint")] == [250, 2000]
    assert [(e.step, e.message) for e in _of(events, "state")] == [
        (250, "saving state at step 250")
    ]
    samples = _of(events, "sample")
    # rich wrapped "generating sample images at step / サンプル画像生成 ステップ: 250" over 3 lines
    assert [e.step for e in samples if e.message.startswith("generating")] == [0, 250]
    assert "prompt: photo of dataset_character" in [e.message for e in samples]
    assert not _of(events, "error")


def test_hours_in_time_fields() -> None:
    steps = _of(parse_text(_read("kohya_flux_lora.txt")), "step")
    late = next(e for e in steps if e.step == 1870)
    assert late.elapsed_seconds == 3 * 3600 + 52
    assert late.eta_seconds == 12 * 60 + 34
    assert late.rate == pytest.approx(1 / 5.80)
    bar = "steps:  45%|####5     | 90/200 [1:02:03<12:10:00, 41.20s/it, avr_loss=0.1]"
    (event,) = parse_text(bar)
    assert (event.elapsed_seconds, event.eta_seconds) == (3723, 12 * 3600 + 600)


def test_unknown_rate_and_eta() -> None:
    (event,) = parse_text("\rsteps:   0%|          | 0/200 [00:00<?, ?it/s]")
    assert (event.step, event.total, event.rate, event.eta_seconds, event.loss) == (
        0,
        200,
        None,
        None,
        None,
    )


def test_it_per_second_and_loss_formats() -> None:
    text = (
        "\rsteps:  45%|████▌     | 90/200 [00:03<00:04, 27.10it/s, avr_loss=0.123]"
        "\rsteps:  46%|████▌     | 91/200 [00:03<00:04, 27.10it/s, loss=1.2e-05]"
        "\rsteps:  46%|████▌     | 92/200 [00:03<00:04, 27.10it/s, Keys Scaled=0, avr_loss=nan]"
        "\rsteps:  46%|████▌     | 93/200 [00:03<00:04, 1.02kit/s, lr=0.001]\n"
    )
    events = parse_text(text)
    assert [e.rate for e in events] == pytest.approx([27.10, 27.10, 27.10, 1020.0])
    assert events[0].loss == pytest.approx(0.123)
    assert events[1].loss == pytest.approx(1.2e-05)  # `loss=` when there is no avr_loss
    assert math.isnan(events[2].loss)
    assert events[3].loss is None


def test_other_bars_are_not_training_steps() -> None:
    text = (
        "\r100%|██████████| 20/20 [00:02<00:00,  9.50it/s]\n"
        "\rcaching latents: 100%|██████████| 12/12 [00:01<00:00, 10.2it/s]\n"
        "\rvalidation steps:  50%|█████     | 2/4 [00:01<00:01,  2.00it/s, val_loss=0.09]\n"
        "\repoch validation steps: 100%|██████████| 4/4 [00:02<00:00,  2.00it/s]\n"
        "\rread caption: 100%|██████████| 12/12 [00:00<00:00, 912.4it/s]\n"
    )
    assert parse_text(text) == []
    sdxl = _of(parse_text(_read("kohya_sdxl_finetune.txt")), "step")
    assert [e.step for e in sdxl] == [0, 1, 2, 3, 40, 41]
    assert math.isnan(sdxl[4].loss)


def test_wrapped_rich_records_are_joined() -> None:
    events = parse_text(_read("kohya_sdxl_finetune.txt"))
    assert [e.path for e in _of(events, "checkpoint")] == [
        "/workspace/output/dataset_portrait/model/dataset_portrait-step00000040.safetensors"
    ]
    assert [e.step for e in _of(events, "state")] == [40]
    removed = [e.message for e in _of(events, "message") if "removing" in e.message]
    assert removed == [
        "removing old state: "
        "/workspace/output/dataset_portrait/model/dataset_portrait-step00000020-state"
    ]


def test_out_of_memory_is_an_error_quoting_the_line() -> None:
    errors = _of(parse_text(_read("kohya_oom.txt")), "error")
    assert errors[0].line.startswith("torch.OutOfMemoryError: CUDA out of memory.")
    assert "train_batch_size" in errors[0].message and "gradient_checkpointing" in errors[0].message
    assert errors[0].step == 1
    # the launcher's own exception after the traceback is reported too, but after the cause
    assert errors[-1].line.startswith("subprocess.CalledProcessError")
    for line in (
        "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 18.00 MiB.",
    ):
        (event,) = parse_text(line + "\n")
        assert (
            event.kind == "error" and event.line == line and "CUDA out of memory" in event.message
        )


def test_nccl_errors_but_not_the_exit_warning() -> None:
    errors = _of(parse_text(_read("kohya_nccl.txt")), "error")
    assert len(errors) == 2
    assert errors[0].line.startswith("torch.distributed.DistBackendError: NCCL error in:")
    assert errors[1].line.startswith("ncclSystemError:")
    assert all("NCCL" in e.message and "--gpu-ids" in e.message for e in errors)
    (internal,) = parse_text("ncclInternalError: Internal check failed.\n")
    assert internal.kind == "error"


def test_gpu_faults_are_the_gpus_and_code_errors_are_not() -> None:
    for line in (
        "torch.AcceleratorError: CUDA error: uncorrectable ECC error encountered",
        "RuntimeError: CUDA error: unspecified launch failure",
        "RuntimeError: CUDA error: an illegal memory access was encountered",
        "RuntimeError: CUDA error: all CUDA-capable devices are busy or unavailable",
        "[12345.678] NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus.",
    ):
        (event,) = parse_text(line + "\n")
        assert event.kind == "error" and event.cause == "hardware", line
    # a device-side assert is the program's (bad labels, bad indices), never the GPU's
    (event,) = parse_text("Traceback (most recent call last):\n"
                          "RuntimeError: CUDA error: device-side assert triggered\n")  # fmt: skip
    assert event.cause is None and event.message == "the trainer failed"


def test_missing_model_file() -> None:
    (error,) = _of(parse_text(_read("kohya_missing_model.txt")), "error")
    assert (
        error.line == "FileNotFoundError: No such file or directory: /models/flux1-dev.safetensors"
    )
    assert "/models/flux1-dev.safetensors" in error.message
    assert "autotrain.toml" in error.message
    # a harmless missing file outside a traceback is not an error
    assert parse_text("cat: notes.txt: No such file or directory\n") == []


def test_generic_exception_after_a_traceback() -> None:
    text = "Traceback (most recent call last):\n  File \"x.py\", line 3\nKeyError: 'ss_epoch'\n"
    (error,) = parse_text(text)
    assert error.kind == "error" and error.line == "KeyError: 'ss_epoch'"
    assert parse_text("ValueError: printed without a traceback\n") == []


@pytest.mark.parametrize("sample", SAMPLE_FILES, ids=lambda p: p.name)
def test_chunk_boundaries_do_not_matter(sample: Path) -> None:
    text = _read(sample.name)
    whole = _plain(parse_text(text))
    assert whole

    by_char = TrainerOutputParser()
    events = [e for ch in text for e in by_char.feed(ch)] + by_char.finish()
    assert _plain(events) == whole

    rng = random.Random(7)
    for _ in range(5):
        parser, events, position = TrainerOutputParser(), [], 0
        while position < len(text):
            size = rng.randint(1, 40)
            events += parser.feed(text[position : position + size])
            position += size
        assert _plain(events + parser.finish()) == whole


def test_a_bar_is_reported_before_its_line_ends() -> None:
    """tqdm ends a redraw only with the next `\\r`, a whole step later: report it at its `]`."""
    parser = TrainerOutputParser()
    assert parser.feed("\rsteps:  10%|█         | 20/200 [00:40<06:00,  2.00s/it, avr_lo") == []
    (event,) = parser.feed("ss=0.2]")
    assert (event.step, event.loss) == (20, 0.2)
    assert parser.feed("\rsteps:  11%") == []  # the terminator does not repeat it
    (event,) = parser.feed("|█         | 21/200 [00:42<05:58,  2.00s/it, avr_loss=0.19]")
    assert event.step == 21
    assert parser.finish() == []


def test_held_log_record_is_released_by_flush() -> None:
    parser = TrainerOutputParser()
    line = "2024-09-01 12:00:00 INFO     saving state at step 50      train_util.py:5964\n"
    assert parser.feed(line) == []  # the next line could still continue it
    (event,) = parser.flush()
    assert (event.kind, event.step) == ("state", 50)
    assert parser.finish() == []


def test_ansi_escapes_are_ignored() -> None:
    text = (
        "\x1b[32m2024-09-01 12:00:00\x1b[0m \x1b[34mINFO\x1b[0m     epoch 3/10   train.py:1\n"
        "\x1b[2K\rsteps:  45%|\x1b[32m████▌     \x1b[0m| 90/200 [00:03<00:04, 27.10it/s, "
        "avr_loss=0.123]\x1b[A\n"
    )
    events = parse_text(text)
    assert [(e.kind, e.epoch) for e in events] == [("epoch", 3), ("step", 3)]
    assert events[1].step == 90 and events[1].loss == pytest.approx(0.123)


def test_rank_prefix_and_log_after_bar_on_one_line() -> None:
    text = (
        "[rank0]: epoch 1/2\n"
        "\rsteps:   5%|▌         | 5/100 [00:05<01:35,  1.00it/s, avr_loss=0.5]"
        "saving checkpoint: /w/output/a/model/a-step00000005.safetensors\n"
    )
    events = parse_text(text)
    assert [e.kind for e in events] == ["epoch", "step", "checkpoint"]
    assert events[2].path == "/w/output/a/model/a-step00000005.safetensors"


def test_step_offset_for_a_bar_restarted_at_zero() -> None:
    (event,) = parse_text("steps:   1%|          | 3/90 [00:03<01:27, 1.00it/s]", step_offset=10)
    assert (event.step, event.total) == (13, 100)


def test_tiny_trainer_recording() -> None:
    events = parse_text(_read("tiny.txt"))
    losses = [e.loss for e in _of(events, "step") if e.loss is not None]
    assert sum(losses[:5]) / 5 > 1.5 * sum(losses[-5:]) / 5
    assert [e.total for e in _of(events, "total")] == [30]
    assert [e.step for e in _of(events, "state")] == [10, 20, 30]
    assert _of(events, "state")[0].path == "output/demo/model/demo-step00000010-state"
    assert _of(events, "checkpoint")[-1].path == "output/demo/model/demo.safetensors"
    paths = [e.path for e in _of(events, "sample") if e.path]
    assert paths == ["output/demo/model/sample/demo_000020_00.png"]


def test_events_serialize_to_json_and_back() -> None:
    (event,) = parse_text("steps:  45%|####5     | 90/200 [00:03<00:04, 27.10it/s, avr_loss=0.1]")
    data = json.loads(json.dumps(event.to_dict()))
    assert "path" not in data  # None fields are left out
    assert ProgressEvent.from_dict(data) == event


def test_the_stall_budget_follows_the_runs_own_pace():
    from autotrain.trainers.watchdog import StallWatchdog

    dog = StallWatchdog(factor=6, floor=2, ceiling=60, startup=100)
    dog._last = 0.0
    assert dog.budget() == 100 and dog.stalled_for(now=99) is None  # loading the models
    for second in range(1, 6):  # a step a second
        dog.saw(ProgressEvent(kind="step", step=second), now=float(second))
    assert dog.budget() == 6  # 6x the slowest recent step (the first one only ended loading)
    assert dog.stalled_for(now=10.9) is None and dog.stalled_for(now=11.5) == 6.5
    dog.saw(ProgressEvent(kind="checkpoint", path="x"), now=12.0)
    assert dog.budget() == 100, "a save may take long"
    dog.saw(ProgressEvent(kind="step", step=6), now=40.0)
    dog.saw(ProgressEvent(kind="step", step=7), now=40.1)
    assert dog.budget() == 6, "the save's pause is not a step interval"
    dog.saw(ProgressEvent(kind="step", step=8), now=70.1)
    assert dog.budget() == 60, "clamped to the ceiling"


def test_a_rank_sigkilled_under_accelerate_is_read_as_killed() -> None:
    text = (
        "Traceback (most recent call last):\n"
        '  File "accelerate/commands/launch.py", line 1, in simple_launcher\n'
        "subprocess.CalledProcessError: Command '['python', 'flux_train_network.py']' died with "
        "<Signals.SIGKILL: 9>.\n"
    )
    errors = [e for e in parse_text(text) if e.kind == "error"]
    assert [e.cause for e in errors] == ["killed"]
    assert "died with <Signals.SIGKILL: 9>" in errors[0].line


def test_a_sigkilled_trainer_error_names_the_oom_killer_and_the_need(tmp_path: Path) -> None:
    from autotrain.errors import TrainingError
    from autotrain.trainers.plan import TrainPlan
    from autotrain.trainers.training import TrainerRun
    from autotrain.worker.phases import raise_for_trainer

    plan = TrainPlan(name="cat", profile="Tiny", backend="tiny", config_path=tmp_path / "c.toml",
                     sample_prompts_path=tmp_path / "p.txt", model_dir=tmp_path / "model",
                     log_dir=tmp_path / "log", total_steps=10)  # fmt: skip
    run = TrainerRun(returncode=137, cancelled=False, started_at=0, finished_at=1,
                     tail=["step 3/10"])  # fmt: skip
    with pytest.raises(TrainingError) as unmeasured:
        raise_for_trainer(run, plan)
    assert str(unmeasured.value).startswith("The trainer was killed by SIGKILL (exit code 137)")
    assert "the Tiny profile's host memory need is not measured" in str(unmeasured.value)
    assert "> step 3/10" in str(unmeasured.value)
    with pytest.raises(TrainingError) as measured:
        raise_for_trainer(run, plan.model_copy(update={"host_memory_gb": 10.6}))
    assert "peaks at about 10.6 GiB of host memory" in str(measured.value)
    lost = run.__class__(returncode=-9, cancelled=False, started_at=0, finished_at=1,
                         last_step=4, guard_lost=True)  # fmt: skip
    with pytest.raises(TrainingError) as guard:
        raise_for_trainer(lost, plan)
    assert str(guard.value).startswith("The trainer's guard process was killed at step 4")
    assert "out-of-memory" not in str(guard.value)  # the guard's -9 is not the trainer's
