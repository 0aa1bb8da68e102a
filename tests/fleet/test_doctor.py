"""`autotrain doctor` checks, against this host and the sd-scripts stand-in."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

from autotrain.fleet.doctor import check_gpus, run_checks
from autotrain.settings import load_settings

STANDIN = Path(__file__).parent.parent / "standins" / "sd_scripts"
MODEL_FIELDS = ("flux_model", "clip_l", "t5xxl", "ae", "sdxl_model")


def by_name(checks):
    return {check.name: check for check in checks}


def model_paths(tmp_path: Path) -> dict[str, Path]:
    paths = {name: tmp_path / f"{name}.safetensors" for name in MODEL_FIELDS}
    for path in paths.values():
        path.write_bytes(b"w")
    return paths


def test_healthy_host(tmp_path):
    settings = load_settings(
        tmp_path / "ws",
        sd_scripts_dir=STANDIN,
        sd_scripts_python=sys.executable,
        min_free_disk_gb=0,
        **model_paths(tmp_path),
    )
    checks = by_name(run_checks(settings))
    assert checks["workspace"].ok
    for script in ("flux_train.py", "flux_train_network.py", "sdxl_train.py"):
        assert checks[f"sd-scripts {script}"].ok
    python = checks["sd-scripts python"]
    assert python.ok and "accelerate" in python.detail
    for profile in ("Flux", "FluxLORA", "SDXL"):
        assert checks[f"profile {profile}"].ok
    assert not any(check.fatal for check in checks.values())


def test_no_sd_scripts_is_a_warning(tmp_path):
    checks = by_name(run_checks(load_settings(tmp_path / "ws", min_free_disk_gb=0)))
    sd = checks["sd-scripts"]
    assert not sd.ok and not sd.fatal
    assert "AUTOTRAIN_SD_SCRIPTS_DIR" in sd.fix and "Tiny" in sd.detail


def test_python_without_accelerate(tmp_path):
    # a real Python started without site-packages cannot import accelerate
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n', encoding="utf-8")
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    settings = load_settings(
        tmp_path / "ws",
        sd_scripts_dir=STANDIN,
        sd_scripts_python=str(python),
        min_free_disk_gb=0,
        **model_paths(tmp_path),
    )
    check = by_name(run_checks(settings))["sd-scripts python"]
    assert check.fatal
    assert "No module named 'accelerate'" in check.detail
    assert "AUTOTRAIN_SD_SCRIPTS_PYTHON" in check.fix


def test_model_settings(tmp_path):
    paths = model_paths(tmp_path)
    paths["sdxl_model"] = tmp_path / "missing.safetensors"
    del paths["ae"]
    settings = load_settings(
        tmp_path / "ws", sd_scripts_dir=STANDIN, sd_scripts_python=sys.executable, **paths
    )
    checks = by_name(run_checks(settings))
    sdxl = checks["profile SDXL"]
    assert sdxl.fatal
    assert f"file not found: sdxl_model = {tmp_path / 'missing.safetensors'}" in sdxl.detail
    flux = checks["profile Flux"]
    assert not flux.ok and not flux.fatal  # unset: that profile is just unavailable here
    assert "not set: ae (AUTOTRAIN_AE)" in flux.detail


def test_too_little_disk(tmp_path):
    settings = load_settings(tmp_path / "ws", min_free_disk_gb=10**9)
    check = by_name(run_checks(settings))["workspace disk"]
    assert check.fatal and "min_free_disk_gb" in check.detail


def test_gpus_reported_or_missing_driver_is_not_fatal():
    checks = check_gpus()
    assert checks
    if checks[0].name == "GPUs":
        assert not checks[0].fatal and "NVIDIA" in checks[0].detail
    else:
        assert all(c.ok and "GiB free" in c.detail for c in checks if c.name.startswith("GPU "))


def test_redis_url_in_clear_across_a_public_network_is_a_warning(tmp_path):
    """Plain redis:// is fine on loopback and private networks, a warning anywhere else; a URL
    that cannot work (a CA file that is not there) is an error saying which part."""
    from autotrain.fleet.doctor import check_redis_url

    def tls(url: str):
        return by_name(check_redis_url(url))["redis tls"]

    assert not tls("redis://:pw@queue.example.com:6379/0").ok
    assert not tls("redis://:pw@8.8.8.8:6379/0").ok
    for url in (
        "redis://:pw@127.0.0.1:6379/0",
        "redis://:pw@10.1.2.3:6379/0",
        "redis://:pw@100.101.102.103:6379/0",
        "rediss://:pw@queue.example.com:6380/0",
    ):
        assert tls(url).ok, url
    missing = tmp_path / "no-ca.crt"
    (check,) = check_redis_url(f"rediss://:s3cret@queue.example.com:6380/0?ssl_ca_certs={missing}")
    assert check.name == "redis url" and not check.ok and check.required
    assert f"ssl_ca_certs={missing}: no such file" in check.detail and "s3cret" not in check.detail
