"""Turn a trainer's raw output (kohya sd-scripts or the Tiny trainer) into progress events.

Trainers report progress for humans: a tqdm bar redrawn with `\\r`, `print` lines, and log records
that `rich` lays out in columns (time, level, message, source) and wraps at the console width. This
parser reads that stream in arbitrary chunks and yields structured events, so the worker, the
monitor and the run report never look at raw text.

Only the bar whose description is exactly `steps` counts as training progress: kohya also draws
bars for caching latents, sampling and validation (`validation steps`), and none of those may move
the job's step counter.

A training bar is reported as soon as its closing `]` arrives, without waiting for the next `\\r`
(which only comes with the next step, seconds later on a big model). A rich log record may continue
on following lines, so it is held until the next line shows it is complete; `flush()` releases it
early when the stream goes quiet.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from autotrain.trainers.failures import FailureReader

__all__ = ["ProgressEvent", "TrainerOutputParser", "EventKind", "EVENT_KINDS", "parse_text"]

EventKind = Literal[
    "step",
    "total",
    "epoch",
    "checkpoint",
    "state",
    "sample",
    "error",
    "message",
    "batches_per_epoch",
]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)


@dataclass(slots=True)
class ProgressEvent:
    """One thing the trainer reported. Fields that do not apply to a kind stay None.

    `rate` is in iterations per second (tqdm's `s/it` display is inverted); `loss` may be NaN when
    the trainer diverged (Python's json writes and reads it as NaN). For `error`, `message` is a
    hint for the user and `line` the trainer's own line, quoted verbatim.
    """

    kind: str
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    rate: float | None = None
    eta_seconds: float | None = None
    elapsed_seconds: float | None = None
    epoch: int | None = None
    epochs: int | None = None
    path: str | None = None
    message: str | None = None
    line: str | None = None
    cause: str | None = None  # for errors: oom, nccl, bad file, setup (None: anything else)
    ts: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict without the fields that are None (events are stored by the thousand)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProgressEvent:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def parse_text(text: str, **parser_options: Any) -> list[ProgressEvent]:
    """All events in a complete piece of output (a log file, a test sample)."""
    parser = TrainerOutputParser(**parser_options)
    return parser.feed(text) + parser.finish()


# --- patterns (compiled once; the parser runs on every chunk a trainer writes) ----------------

_MAX_LINE = 1 << 16
_SPLIT = re.compile(r"[\r\n]")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_RANK_PREFIX = re.compile(r"^\[(?:rank|default)\d+\]:\s?")

# tqdm: "{desc}: {pct:3.0f}%|{bar}| {n}/{total} [{elapsed}<{remaining}, {rate}{unit}{postfix}]"
_BAR = re.compile(
    r"(?P<pct>\d{1,3})%\|[^|\r\n]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*"
    r"\[(?P<elapsed>[0-9:]+)<(?P<remaining>[0-9:]+|\?),\s*"
    r"(?P<rate>[0-9]*\.?[0-9]+|\?)(?P<scale>[kMGT]?)(?P<unit>it/s|s/it)"
    r"(?P<postfix>[^\]\r\n]*)\]"
)
_POSTFIX_PAIR = re.compile(r"\s*([^,=]+?)\s*=\s*([^,]*)")

# rich's log layout: time column (blank when unchanged), level, message, "file.py:123" on the right.
_RICH_RECORD = re.compile(
    r"^(?:\[?\d{2,4}[-/]\d{2}[-/]\d{2,4}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?\]?|\[\d{2}:\d{2}:\d{2}\]"
    r"|\s{8,})?\s*(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL)(?:\s+(?P<msg>.*?))?\s*$"
)
_RICH_SOURCE = re.compile(r"(?:^|\s+)[\w.\-]+\.py:\d+$")
_RICH_CONTINUATION = re.compile(r"^\s{20,}(?P<msg>\S.*?)\s*$")

_EPOCH = re.compile(r"^epoch (?P<epoch>\d+)/(?P<epochs>\d+)$")
_TOTAL = re.compile(r"total optimization steps(?:\s*/[^:\d]*)?:\s*(?P<total>\d+)")
# train_network.py:990 prints len(train_dataloader): what its resume arithmetic divides by
_BATCHES = re.compile(r"num batches per epoch(?:\s*/[^:]*)?:\s*(?P<batches>\d+)")
_CHECKPOINT = re.compile(
    r"^(?:saving checkpoint:|saving model:|save trained model as [\w ]+? to)\s*(?P<path>\S.*)$"
)
_STATE = re.compile(
    r"^saving (?:state at (?:step (?P<step>\d+)|epoch (?P<epoch>\d+))|last state)\.?"
    r"(?::\s*(?P<path>\S.*))?$"
)
_SAMPLE = re.compile(r"^generating sample images at step\b[^\d\r\n]*(?P<step>\d+)?")
_SAMPLE_SAVED = re.compile(r"^saving sample image:\s*(?P<path>\S.*)$")
_PROMPT = re.compile(r"^prompt:\s*(?P<prompt>.*)$")
_MESSAGE = re.compile(
    r"^(?:model saved\.?|removing old (?:checkpoint|state|model): .+|resum\w+ .*|"
    r"running training\b.*|received SIG\w+.*)$"
)


class TrainerOutputParser:
    """Stateful, chunk-boundary-proof parser: `feed()` any text as it arrives, `finish()` at EOF.

    `train_descs` are the tqdm descriptions that mean "training steps". `step_offset` is added to
    the bar's counters, for a trainer that restarts its bar at 0 when it resumes from step N;
    `fixed_total`, when given, is the run's true total whatever the resumed bar says.
    """

    def __init__(
        self,
        train_descs: tuple[str, ...] = ("steps",),
        step_offset: int = 0,
        fixed_total: int | None = None,
    ) -> None:
        self.train_descs = frozenset(train_descs)
        self.step_offset = step_offset
        self.fixed_total = fixed_total
        self.last_step: int | None = None
        self.total: int | None = None
        self.epoch: int | None = None
        self.epochs: int | None = None
        self._partial = ""  # text after the last line break
        self._partial_done = 0  # characters of the (ANSI-stripped) partial already reported
        self._record: list[str] | None = None  # message fragments of a held rich log record
        self._failures = FailureReader()

    # --- public API -----------------------------------------------------------------------

    def feed(self, chunk: str) -> list[ProgressEvent]:
        """Events completed by this chunk, in output order."""
        events: list[ProgressEvent] = []
        pieces = _SPLIT.split(self._partial + chunk)
        self._partial = pieces.pop()
        for index, raw in enumerate(pieces):
            line = _ANSI.sub("", raw)
            if index == 0 and self._partial_done:
                line, self._partial_done = line[self._partial_done :], 0
            self._line(line, events)
        if len(self._partial) > _MAX_LINE:  # never buffer without bound (output with no breaks)
            self._line(_ANSI.sub("", self._partial)[self._partial_done :], events)
            self._partial, self._partial_done = "", 0
        self._early_bar(events)
        return events

    def flush(self) -> list[ProgressEvent]:
        """Release a held log record (call when the trainer has been quiet for a moment)."""
        events: list[ProgressEvent] = []
        self._end_record(events)
        return events

    def finish(self) -> list[ProgressEvent]:
        """Events from the last, unterminated line and any held record; the parser is then empty."""
        events: list[ProgressEvent] = []
        line = _ANSI.sub("", self._partial)[self._partial_done :]
        self._partial, self._partial_done = "", 0
        if line.strip():
            self._line(line, events)
        self._end_record(events)
        return events

    # --- lines ----------------------------------------------------------------------------

    def _early_bar(self, events: list[ProgressEvent]) -> None:
        """Report a complete training bar still waiting for its line break (tqdm's next `\\r`)."""
        if "]" not in self._partial:
            return
        text = _ANSI.sub("", self._partial)
        match = _BAR.search(text, self._partial_done)
        if match is None:
            return
        self._end_record(events)
        self._bar(text[self._partial_done : match.start()], match, events)
        self._partial_done = match.end()

    def _line(self, line: str, events: list[ProgressEvent]) -> None:
        line = _RANK_PREFIX.sub("", line)
        if not line.strip():
            return
        if self._record is not None:
            continuation = _RICH_CONTINUATION.match(line)
            if continuation and not _RICH_RECORD.match(line):
                self._record.append(continuation["msg"])
                return
            self._end_record(events)
        bar = _BAR.search(line)
        if bar is not None:
            self._bar(line[: bar.start()], bar, events)
            rest = line[bar.end() :]
            if rest.strip():  # a log line printed straight after the bar, without a break
                self._line(rest, events)
            return
        record = _RICH_RECORD.match(line)
        if record is not None:
            message = _RICH_SOURCE.sub("", record["msg"] or "").strip()
            self._record = [message]
            return
        self._message(line.strip(), events)

    def _end_record(self, events: list[ProgressEvent]) -> None:
        if self._record is None:
            return
        fragments, self._record = self._record, None
        self._message(_join_wrapped(fragments), events)

    def _bar(self, prefix: str, match: re.Match[str], events: list[ProgressEvent]) -> None:
        desc = _RANK_PREFIX.sub("", prefix.strip()).rstrip(":").strip()
        if desc not in self.train_descs:
            return
        step = int(match["n"]) + self.step_offset
        total = self.fixed_total or int(match["total"]) + self.step_offset
        self.last_step, self.total = step, total
        events.append(
            ProgressEvent(
                kind="step",
                step=step,
                total=total,
                loss=_postfix_loss(match["postfix"]),
                rate=_rate(match["rate"], match["scale"], match["unit"]),
                eta_seconds=_seconds(match["remaining"]),
                elapsed_seconds=_seconds(match["elapsed"]),
                epoch=self.epoch,
                epochs=self.epochs,
            )
        )

    def _message(self, text: str, events: list[ProgressEvent]) -> None:
        """A whole logical line: a print, or a log record with its wrapped continuation joined."""
        if not text:
            return
        error = self._error(text)
        if error is not None:
            events.append(error)
            return
        if m := _EPOCH.match(text):
            self.epoch, self.epochs = int(m["epoch"]), int(m["epochs"])
            events.append(ProgressEvent(kind="epoch", epoch=self.epoch, epochs=self.epochs))
        elif m := _TOTAL.search(text):
            self.total = self.fixed_total or int(m["total"])
            events.append(ProgressEvent(kind="total", total=self.total))
        elif m := _BATCHES.search(text):
            events.append(ProgressEvent(kind="batches_per_epoch", total=int(m["batches"])))
        elif m := _CHECKPOINT.match(text):
            events.append(ProgressEvent(kind="checkpoint", step=self.last_step, path=m["path"]))
        elif m := _STATE.match(text):
            step = int(m["step"]) if m["step"] else self.last_step
            epoch = int(m["epoch"]) if m["epoch"] else self.epoch
            events.append(
                ProgressEvent(kind="state", step=step, epoch=epoch, path=m["path"], message=text)
            )
        elif m := _SAMPLE.match(text):
            step = int(m["step"]) if m["step"] else self.last_step
            events.append(ProgressEvent(kind="sample", step=step, message=text))
        elif m := _SAMPLE_SAVED.match(text):
            events.append(ProgressEvent(kind="sample", step=self.last_step, path=m["path"]))
        elif m := _PROMPT.match(text):
            events.append(ProgressEvent(kind="sample", step=self.last_step, message=text))
        elif _MESSAGE.match(text):
            events.append(ProgressEvent(kind="message", step=self.last_step, message=text))

    def _error(self, text: str) -> ProgressEvent | None:
        failure = self._failures.read(text)
        if failure is None:
            return None
        return ProgressEvent(kind="error", step=self.last_step, message=failure.hint, line=text,
                             cause=failure.cause)  # fmt: skip


def _join_wrapped(fragments: list[str]) -> str:
    """Undo rich's wrapping: words wrap at spaces, a word too long for the column is cut.

    A continuation fragment as wide as the widest one and with no space was cut mid-word (a long
    path), so the next fragment joins it without a space.
    """
    text = fragments[0]
    width = 0
    previous_cut = False
    for fragment in fragments[1:]:
        text += fragment if previous_cut else (" " + fragment if text else fragment)
        width = max(width, len(fragment))
        previous_cut = " " not in fragment and len(fragment) >= width
    return text


def _postfix_loss(postfix: str) -> float | None:
    values = dict(_POSTFIX_PAIR.findall(postfix.lstrip(", ")))
    for key in ("avr_loss", "loss"):
        if key in values:
            try:
                return float(values[key])
            except ValueError:
                return None
    return None


_SCALE = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def _rate(value: str, scale: str, unit: str) -> float | None:
    if value == "?":
        return None
    number = float(value) * _SCALE[scale]
    if unit == "s/it":
        return 1.0 / number if number > 0 else None
    return number


def _seconds(value: str) -> float | None:
    if value == "?" or not value:
        return None
    seconds = 0.0
    for part in value.split(":"):
        if not part.isdigit():
            return None
        seconds = seconds * 60 + int(part)
    return seconds if math.isfinite(seconds) else None
