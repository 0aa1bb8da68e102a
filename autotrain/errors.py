"""Errors a user sees. Each message names the file or value at fault and says what to do.

Callers catch them by type (`except NoSuchJob`), the CLI turns each into one line and its exit
code (autotrain.cli.common), and the dashboard into a message beside the button pressed.
"""

from __future__ import annotations

__all__ = [
    "AutotrainError",
    "ValidationError",
    "ConfigError",
    "StagingError",
    "TrainingError",
    "NoSuchJob",
    "AmbiguousJobId",
    "NameInUse",
    "JobNotFinal",
    "RedisUnavailable",
]


class AutotrainError(Exception):
    """Base of every error autotrain reports to a user instead of a traceback."""


class ValidationError(AutotrainError):
    """Phase 1 found the dataset, profile or host unusable."""


class ConfigError(AutotrainError):
    """A setting, profile or template is missing or wrong."""


class StagingError(AutotrainError):
    """Phase 2 could not stage the dataset (existing copy, too few images, copy failure)."""


class TrainingError(AutotrainError):
    """The trainer failed; the message quotes the relevant output line when one is known."""


class NoSuchJob(AutotrainError):
    """No job has this id, and none starts with it."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"No job with id {job_id!r}. See `autotrain train list`.")


class AmbiguousJobId(AutotrainError):
    """Several jobs start with this id prefix: the user must type more of it."""

    def __init__(self, prefix: str, matches: list[str]) -> None:
        self.prefix, self.matches = prefix, matches
        super().__init__(f"Job id {prefix!r} is ambiguous: {', '.join(matches[:5])}")


class NameInUse(AutotrainError):
    """Another job still in progress trains a dataset of this name."""

    def __init__(self, name: str, holder: str) -> None:
        self.name, self.holder = name, holder
        super().__init__(
            f"Dataset name {name!r} is in use by job {holder}, which is still in progress: two "
            f"jobs would write the same output/{name}/. Wait for it to finish, cancel it "
            f"(`autotrain train cancel --job {holder}`), or pass --dataset-name to train this "
            "one under another name."
        )


class JobNotFinal(AutotrainError):
    """The job is still under way where only a finished one will do (a retry)."""


class RedisUnavailable(AutotrainError):
    """Redis (the job store and broker) cannot be reached; the message says what to start or set."""
