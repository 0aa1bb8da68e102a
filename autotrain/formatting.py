"""How times and durations read to people, the same in the CLI, the dashboard, notifications
and run.json. Standard library only: every layer may use it."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = [
    "format_eta",
    "format_age",
    "format_start",
    "format_loss",
    "iso_time",
    "parse_duration",
]


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--:--"
    seconds = max(0, int(seconds))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def format_start(seconds: float) -> str:
    """When a waiting job starts, in a table cell or a progress line: `starts 00:03:10`."""
    return f"starts {format_eta(seconds)}"


def format_loss(value: float | None) -> str:
    """`0.0234`, or `-` before the first step."""
    return "-" if value is None else f"{value:.4f}"


def parse_duration(text: str) -> float:
    """`7d`, `12h`, `30m`, `45s` -> seconds; ValueError naming the forms that work."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    try:
        return float(text[:-1]) * units[text[-1]]
    except (KeyError, ValueError, IndexError):
        raise ValueError(f"{text!r}: use a number and d, h, m or s, like 7d or 12h.") from None


def format_age(seconds: float) -> str:
    """`42s`, `7m`, `3h`, `2d`: compact enough for a table column."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def iso_time(timestamp: float | None) -> str | None:
    """`2026-12-02T04:16:05.123456+00:00`, or None."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat()
