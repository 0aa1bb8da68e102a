"""`autotrain doctor`: can this host train, and if not, what exactly to fix.

Each check is independent and never raises: a broken part is reported, not crashed on. A check
that fails with `required=False` is a warning: the host still works for some profiles (a host
with no NVIDIA driver still runs the CPU worker and can train Tiny; a host without sd-scripts
configured simply cannot train the kohya profiles).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from autotrain.profile import Profile, list_profiles
from autotrain.settings import CONFIG_FILE_NAME, ENV_PREFIX, Settings
from autotrain.trainers.kohya import KohyaBackend
from autotrain.workspace import Workspace

__all__ = [
    "Check",
    "run_checks",
    "check_workspace",
    "check_sd_scripts",
    "check_gpus",
    "check_private_state",
    "check_redis_url",
    "GiB",
]

GiB = 1024**3
PYTHON_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True  # a failed optional check is a warning, not an error

    @property
    def fatal(self) -> bool:
        return not self.ok and self.required


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in the order a user would fix things."""
    checks = check_workspace(settings)
    try:
        profiles = list_profiles(Workspace(settings.workspace).templates_dir)
    except Exception as exc:  # noqa: BLE001 - a broken profile is itself a finding
        checks.append(Check("profiles", False, str(exc), "fix or remove the profile named above"))
        profiles = {}
    kohya = [p for p in profiles.values() if p.backend == "kohya"]
    if kohya:
        checks += check_sd_scripts(settings, kohya)
    checks += check_gpus()
    checks += check_private_state(settings)
    checks += check_store(settings)
    return checks


def check_store(settings: Settings) -> list[Check]:
    """With storage_url: the bucket is reached, and this host may write, read and delete in it."""
    if not settings.storage_url:
        return []
    import socket

    from autotrain.storage.objects import StorageError, store_at

    store = store_at(settings.storage_url)
    probe = f"doctor/{socket.gethostname()}"
    try:
        store.check()
        store.put_bytes(probe, b"autotrain doctor")
        read = store.get_bytes(probe)
        store.delete([probe])
    except StorageError as exc:
        return [Check("store", False, str(exc), "fix the AWS_* variables or storage_url")]
    if read != b"autotrain doctor":
        return [Check("store", False, f"{probe} read back differently", "check the service")]
    return [Check("store", True, f"{settings.storage_url}: write, read and delete work")]


def check_private_state(settings: Settings) -> list[Check]:
    """Other users of the host read nothing of the workspace's state, and Redis asks for a
    password: job records hold every spec (webhook tokens in notify_urls included)."""
    checks = []
    state = Workspace(settings.workspace).state_dir
    if state.is_dir():
        loose = [p for p in [state, *state.rglob("*")]
                 if not p.is_symlink() and p.lstat().st_mode & 0o077]  # fmt: skip
        checks.append(Check(
            "private state", not loose,
            f"{state} is readable by this user only" if not loose else
            f"{len(loose)} file(s) under {state} are open to other users, e.g. {loose[0]} "
            f"(mode {loose[0].lstat().st_mode & 0o777:o})",
            f"chmod -R go-rwx {state}", required=False,
        ))  # fmt: skip
    if settings.redis_url:
        checks += check_redis_url(settings.redis_url)
    return checks


def check_redis_url(url: str) -> list[Check]:
    """A shared Redis' URL: well formed, with a password, and encrypted (rediss://) unless it
    stays on this host or a private network; every job, spec and token goes through it."""
    from urllib.parse import urlsplit

    from autotrain.errors import AutotrainError
    from autotrain.jobs.redis_url import usable_redis_url

    try:
        usable_redis_url(url)
    except AutotrainError as exc:
        return [Check("redis url", False, str(exc), "correct AUTOTRAIN_REDIS_URL as it says")]
    parts = urlsplit(url)
    has_password = bool(parts.password)
    in_clear = parts.scheme == "redis" and not _private_address(parts.hostname or "")
    return [Check(
        "redis password", has_password,
        "AUTOTRAIN_REDIS_URL has a password" if has_password else
        "AUTOTRAIN_REDIS_URL has no password: anyone who reaches that Redis reads and "
        "rewrites every job",
        "set requirepass (or an ACL user) on the server and put it in the URL: "
        "rediss://:PASSWORD@host:6380/0", required=False,
    ), Check(
        "redis tls", not in_clear,
        f"redis:// to {parts.hostname}: the password and every job cross the network "
        "unencrypted" if in_clear else "TLS (rediss://), or a loopback or private address",
        "use rediss:// and the server's TLS port (README: 'Redis across the internet'), or "
        "reach Redis over a private network (WireGuard, Tailscale)", required=False,
    )]  # fmt: skip


def _private_address(host: str) -> bool:
    """Loopback, a private LAN range or a VPN's shared range (Tailscale's 100.64.0.0/10): a
    path a user controls. A DNS name counts as public: it is not resolved here."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    shared = ipaddress.ip_network("100.64.0.0/10")
    return address.is_loopback or address.is_private or address in shared


def check_workspace(settings: Settings) -> list[Check]:
    """The workspace exists (or can be created), is writable, and has the configured free space."""
    root = Path(settings.workspace)
    existing = next((p for p in [root, *root.parents] if p.exists()), None)
    if existing is None or not existing.is_dir():
        return [
            Check("workspace", False, f"{root} cannot be created", "choose another --workspace")
        ]
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".autotrain-doctor-"):
            pass
    except OSError as exc:
        return [
            Check(
                "workspace",
                False,
                f"{existing} is not writable: {exc.strerror}",
                f"grant write access to {existing} or set {ENV_PREFIX}WORKSPACE elsewhere",
            )
        ]
    free = shutil.disk_usage(existing).free
    detail = f"{root} writable, {free / GiB:.1f} GiB free"
    if free / 1e9 < settings.min_free_disk_gb:
        return [
            Check(
                "workspace disk",
                False,
                f"{detail}, below min_free_disk_gb = {settings.min_free_disk_gb} GB",
                "free disk space or lower min_free_disk_gb",
            )
        ]
    return [Check("workspace", True, detail)]


def check_sd_scripts(settings: Settings, profiles: list[Profile]) -> list[Check]:
    """sd-scripts checkout, its Python (with accelerate), and each kohya profile's model files."""
    backend = KohyaBackend()
    if settings.sd_scripts_dir is None:
        names = ", ".join(p.name for p in profiles)
        return [
            Check(
                "sd-scripts",
                False,
                f"not configured: profiles {names} cannot train here (Tiny can)",
                f"set {ENV_PREFIX}SD_SCRIPTS_DIR to a kohya-ss sd-scripts checkout",
                required=False,
            )
        ]
    checks: list[Check] = []
    for profile in profiles:
        problems = backend.check_sd_scripts(profile, settings)
        label = f"sd-scripts {profile.script}"
        if problems:
            checks.append(Check(label, False, problems[0], _SD_SCRIPTS_FIX))
        else:
            checks.append(Check(label, True, str(Path(settings.sd_scripts_dir) / profile.script)))
    checks.append(_python_check(settings, backend))
    checks += [_models_check(profile, settings) for profile in profiles]
    return _unique(checks)


def check_gpus() -> list[Check]:
    """Each NVIDIA GPU with its free memory; no driver is a warning (the CPU worker still runs)."""
    try:
        import pynvml
    except ImportError:
        return [Check("GPUs", False, "nvidia-ml-py is not installed", "pip install nvidia-ml-py")]
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [
            Check(
                "GPUs",
                False,
                f"no NVIDIA driver ({exc}); only the CPU worker runs here, and it trains Tiny",
                "install the NVIDIA driver to train the kohya profiles on this host",
                required=False,
            )
        ]
    try:
        return _gpu_checks(pynvml)
    finally:
        pynvml.nvmlShutdown()


def _gpu_checks(pynvml) -> list[Check]:
    count = pynvml.nvmlDeviceGetCount()
    if count == 0:
        return [Check("GPUs", False, "NVIDIA driver loaded but no GPU found", "", required=False)]
    driver = _text(pynvml.nvmlSystemGetDriverVersion())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    checks = []
    for index in range(count):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        name = _text(pynvml.nvmlDeviceGetName(handle))
        detail = (
            f"{name}, {memory.free / GiB:.1f} GiB free of {memory.total / GiB:.1f} GiB, "
            f"driver {driver}"
        )
        checks.append(Check(f"GPU {index}", True, detail))
    if visible is not None:
        checks.append(Check("CUDA_VISIBLE_DEVICES", True, f"set to {visible!r} in this shell"))
    return checks


def _models_check(profile: Profile, settings: Settings) -> Check:
    """A profile's model files; unset ones only disable it, a wrong path is a mistake."""
    unset, missing = [], []
    for field in dict.fromkeys(profile.models.values()):
        value = getattr(settings, field, None)
        if value is None:
            unset.append(f"{field} ({ENV_PREFIX}{field.upper()})")
        elif not Path(value).is_file():
            missing.append(f"{field} = {value}")
    if not unset and not missing:
        return Check(f"profile {profile.name}", True, "model files present")
    detail = "; ".join(
        part
        for part in (
            f"file not found: {', '.join(missing)}" if missing else "",
            f"not set: {', '.join(unset)}" if unset else "",
        )
        if part
    )
    return Check(
        f"profile {profile.name}",
        False,
        detail,
        f"set each to the model file's path, as an environment variable or in {CONFIG_FILE_NAME}",
        required=bool(missing),
    )


def _python_check(settings: Settings, backend: KohyaBackend) -> Check:
    python = settings.python_for_sd_scripts
    problems = backend.check_python(settings)
    if problems:
        return Check("sd-scripts python", False, problems[0], _PYTHON_FIX)
    probe = "import sys, accelerate; print(accelerate.__version__, sys.version.split()[0])"
    try:
        result = subprocess.run(
            [python, "-c", probe],
            capture_output=True,
            text=True,
            timeout=PYTHON_TIMEOUT_SECONDS,
            cwd=settings.sd_scripts_dir,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("sd-scripts python", False, f"{python} did not run: {exc}", _PYTHON_FIX)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return Check("sd-scripts python", False, f"{python}: {last}", _PYTHON_FIX)
    accelerate_version, python_version = (result.stdout.split() + ["?", "?"])[:2]
    return Check(
        "sd-scripts python",
        True,
        f"{python} (Python {python_version}, accelerate {accelerate_version})",
    )


_SD_SCRIPTS_FIX = (
    f"point {ENV_PREFIX}SD_SCRIPTS_DIR at an up-to-date kohya-ss sd-scripts checkout "
    "(git clone https://github.com/kohya-ss/sd-scripts)"
)
_PYTHON_FIX = (
    f"point {ENV_PREFIX}SD_SCRIPTS_PYTHON at the python of sd-scripts' virtual environment and "
    "install its requirements there (pip install -r requirements.txt)"
)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _unique(checks: list[Check]) -> list[Check]:
    """Profiles sharing a script would repeat its line."""
    seen: set[tuple[str, bool, str]] = set()
    kept = []
    for check in checks:
        key = (check.name, check.ok, check.detail)
        if key not in seen:
            seen.add(key)
            kept.append(check)
    return kept
