"""Errors a user sees. Each message names the file or value at fault and says what to do."""

from __future__ import annotations

__all__ = ["AutotrainError", "ValidationError", "ConfigError", "StagingError", "TrainingError"]


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
