"""Progress of a running attack: stage, step / total, the attack's own current loss and an ETA.

An attack reports through the reporter the runner installed for the current run (a context variable, so
attacks need no constructor argument and a run without a reporter costs one attribute lookup per step)::

    from copa.attacks import progress

    with progress.stage("image layer", total=steps) as bar:
        for t in range(steps):
            ...
            bar.step(loss=float(values.mean()))

Reporters (:func:`reporting`): ``"bar"`` — a tqdm progress bar on standard error (an interactive
terminal: ``copa attack``'s default there); ``"log"`` — one line per stage start and end and at most one
line every ``interval`` seconds in between (the workflow's per-cell logs; ``copa attack`` when standard
error is not a terminal); ``"quiet"`` — nothing (``--quiet``). The loss is the attack's own objective
(the mean over a batch's active instances); the ETA extrapolates the stage's mean step time so far.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from tqdm import tqdm

MODES = ("bar", "log", "quiet")
"""Accepted reporter modes."""

LINE_PREFIX = "[progress] "
"""How every line of the ``log`` reporter starts (an isolated attack's worker forwards exactly these lines)."""

DEFAULT_LOG_INTERVAL = 30.0
"""Seconds between two progress lines of the ``log`` reporter (a 17-minute COPA cell then logs ~35 lines)."""


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _format_loss(loss: float | None) -> str:
    return "n/a" if loss is None else f"{loss:.4g}"


class Stage:
    """One stage of an attack (e.g. one layer's optimisation): ``step(loss=...)`` after each of its steps."""

    def __init__(self, reporter: Reporter, name: str, total: int | None):
        self.reporter, self.name, self.total = reporter, name, total
        self.done = 0
        self._loss = None
        self.started = time.monotonic()

    def step(self, n: int = 1, *, loss=None) -> None:
        """``n`` more steps done; ``loss``: the attack's current objective — a number or a tensor (its mean is
        taken only when a reporter shows it, so a quiet run never waits for a device to sync)."""
        self.done += n
        if loss is not None:
            self._loss = loss
        self.reporter.on_step(self)

    @property
    def loss(self) -> float | None:
        value = self._loss
        if value is None:
            return None
        if hasattr(value, "detach"):
            value = value.detach().double().mean()
        return float(value)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def eta(self) -> float:
        """Seconds left, from the mean step time so far (``inf`` before the first step or without a total)."""
        if not self.total or self.done <= 0:
            return math.inf
        return self.elapsed / self.done * max(0, self.total - self.done)

    def describe(self) -> str:
        if self.total is None and self.done == 0:  # a stage without steps (e.g. one layer's closed-form solve)
            return f"{self.reporter.attack}: {self.name}: elapsed {_format_seconds(self.elapsed)}"
        total = f"/{self.total}" if self.total else ""
        return (f"{self.reporter.attack}: {self.name}: step {self.done}{total}, loss {_format_loss(self.loss)}, "
                f"elapsed {_format_seconds(self.elapsed)}, ETA {_format_seconds(self.eta)}")


class Reporter:
    """Receives an attack's stages; this base reports nothing (``quiet``)."""

    mode = "quiet"

    def __init__(self, attack: str = "attack"):
        self.attack = attack
        self.interval = DEFAULT_LOG_INTERVAL

    def on_start(self, stage: Stage) -> None:
        pass

    def on_step(self, stage: Stage) -> None:
        pass

    def on_end(self, stage: Stage) -> None:
        pass


class LogReporter(Reporter):
    """Plain lines on ``stream``: a stage's start and end, and at most one line per ``interval`` seconds."""

    mode = "log"

    def __init__(self, attack: str = "attack", stream: TextIO | None = None, interval: float = DEFAULT_LOG_INTERVAL):
        super().__init__(attack)
        self.stream, self.interval = stream, interval
        self._last = time.monotonic()

    def _write(self, line: str) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        print(line, file=stream, flush=True)
        self._last = time.monotonic()

    def on_start(self, stage: Stage) -> None:
        total = f" ({stage.total} steps)" if stage.total else ""
        self._write(f"{LINE_PREFIX}{self.attack}: {stage.name}: started{total}")

    def on_step(self, stage: Stage) -> None:
        if time.monotonic() - self._last >= self.interval:
            self._write(f"{LINE_PREFIX}{stage.describe()}")

    def on_end(self, stage: Stage) -> None:
        self._write(f"{LINE_PREFIX}{stage.describe()} — done")


class BarReporter(Reporter):
    """A tqdm bar per stage on ``stream`` (standard error), the loss as its postfix."""

    mode = "bar"

    def __init__(self, attack: str = "attack", stream: TextIO | None = None, refresh: float = 0.5):
        super().__init__(attack)
        self.stream, self.refresh = stream, refresh
        self._bars: dict[int, object] = {}
        self._shown = 0.0

    def on_start(self, stage: Stage) -> None:
        self._bars[id(stage)] = tqdm(total=stage.total, desc=f"{self.attack}: {stage.name}", leave=False,
                                     file=self.stream if self.stream is not None else sys.stderr,
                                     dynamic_ncols=True, mininterval=0.5)

    def on_step(self, stage: Stage) -> None:
        bar = self._bars.get(id(stage))
        if bar is None:
            return
        now = time.monotonic()
        if now - self._shown >= self.refresh:  # the loss (a device sync) at most every `refresh` seconds
            self._shown = now
            loss = stage.loss
            if loss is not None:
                bar.set_postfix_str(f"loss {_format_loss(loss)}", refresh=False)
        bar.update(stage.done - bar.n)

    def on_end(self, stage: Stage) -> None:
        bar = self._bars.pop(id(stage), None)
        if bar is not None:
            bar.close()


_QUIET = Reporter()
_current: contextvars.ContextVar[Reporter] = contextvars.ContextVar("copa_progress", default=_QUIET)


def current() -> Reporter:
    """The reporter of the running attack (quiet outside :func:`reporting`)."""
    return _current.get()


@contextlib.contextmanager
def stage(name: str, total: int | None = None) -> Iterator[Stage]:
    """One stage of the running attack: yields a :class:`Stage`; its end is reported on exit."""
    reporter = _current.get()
    handle = Stage(reporter, name, None if total is None else int(total))
    reporter.on_start(handle)
    try:
        yield handle
    finally:
        reporter.on_end(handle)


def make_reporter(mode: str, attack: str, *, stream: TextIO | None = None,
                  interval: float = DEFAULT_LOG_INTERVAL) -> Reporter:
    """The reporter for ``mode`` (:data:`MODES`; ``"auto"``: a bar on an interactive standard error, else log)."""
    if mode == "auto":
        target = stream if stream is not None else sys.stderr
        mode = "bar" if getattr(target, "isatty", lambda: False)() else "log"
    if mode == "bar":
        return BarReporter(attack, stream)
    if mode == "log":
        return LogReporter(attack, stream, interval)
    if mode == "quiet":
        return Reporter(attack)
    raise ValueError(f"progress mode {mode!r} is invalid: accepted are auto, {', '.join(MODES)}")


@contextlib.contextmanager
def reporting(mode: str, attack: str, *, stream: TextIO | None = None,
              interval: float = DEFAULT_LOG_INTERVAL) -> Iterator[Reporter]:
    """Install a reporter (:func:`make_reporter`) for the attack run inside the ``with`` block."""
    token = _current.set(make_reporter(mode, attack, stream=stream, interval=interval))
    try:
        yield _current.get()
    finally:
        _current.reset(token)
