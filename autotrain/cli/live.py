"""The live line of the monitors: redrawn on a terminal, a new line per change in logs."""

from __future__ import annotations

from rich.console import Console
from rich.live import Live
from rich.text import Text

__all__ = ["LiveView"]


class LiveView:
    """A redrawn line on a terminal; in logs and pipes, a new line only when `key` changes."""

    def __init__(self, target: Console) -> None:
        self.console = target
        self.live = (
            Live(Text(""), console=target, refresh_per_second=10) if target.is_terminal else None
        )
        self._key: object = None
        self._text = ""

    def __enter__(self) -> LiveView:
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.live.__exit__(*exc)
        elif self._text and self._key != "printed":
            self.console.print(self._text, markup=False, soft_wrap=True)

    def update(self, text: str, key: object) -> None:
        self._text = text
        if self.live:
            self.live.update(Text(text))
        elif key != self._key:
            self._key = key
            self.console.print(text, markup=False, soft_wrap=True)
            self._text = ""

    def note(self, text: str) -> None:
        (self.live.console if self.live else self.console).print(
            Text(text, style="dim"), soft_wrap=True
        )
