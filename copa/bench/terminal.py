"""What a person watching the workflow's terminal sees of a running job.

A workflow job writes its details to its own log file; Snakemake shows only the job's start and end. A
:class:`JobTerminal` adds, on the job's standard error (which Snakemake passes to the terminal), each
progress line of the job (an attack's ``[progress]`` lines, one line per finished record), tagged with the
job — ``[cell none/cnn2_c1/copa] [progress] copa: image layer: step 40/100, …, ETA 0:31`` — and a heartbeat
line whenever the job has said nothing there for ``interval`` seconds (a long factorisation, a stage
without steps, the start-up), naming how long it has run and its last progress line.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

from ..attacks.progress import DEFAULT_LOG_INTERVAL, LINE_PREFIX


def format_duration(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``)."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class JobTerminal:
    """Tagged lines of one job on ``stream`` (default: the process's original standard error, which a log
    redirection leaves alone), and a heartbeat after ``interval`` silent seconds (:meth:`watching`)."""

    def __init__(self, job: str, stream: TextIO | None = None, interval: float = DEFAULT_LOG_INTERVAL):
        self.job, self.interval = job, float(interval)
        self.stream = stream if stream is not None else sys.__stderr__
        self.started = self.last_said = self.last_line_at = time.monotonic()
        self.last_line: str | None = None
        self._lock = threading.Lock()

    def say(self, line: str) -> None:
        """One line on the terminal, tagged with the job."""
        line = " ".join(str(line).split())
        with self._lock:
            if self.stream is not None:
                print(f"[{self.job}] {line}", file=self.stream, flush=True)
            self.last_said = self.last_line_at = time.monotonic()
            self.last_line = line

    def heartbeat(self) -> None:
        """Say that the job is still running: for how long, and its last line with its age."""
        now = time.monotonic()
        last = "" if self.last_line is None else \
            f"; last, {format_duration(now - self.last_line_at)} ago: {self.last_line}"
        line = f"still running, {format_duration(now - self.started)} elapsed{last}"
        with self._lock:
            if self.stream is not None:
                print(f"[{self.job}] {line}", file=self.stream, flush=True)
            self.last_said = time.monotonic()

    @contextlib.contextmanager
    def watching(self) -> Iterator[JobTerminal]:
        """Say when the job starts and ends; in between a heartbeat after ``interval`` silent seconds."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(min(1.0, self.interval / 4)):
                if time.monotonic() - self.last_said >= self.interval:
                    self.heartbeat()

        self.say("started")
        thread = threading.Thread(target=beat, name=f"heartbeat {self.job}", daemon=True)
        thread.start()
        outcome = "failed"
        try:
            yield self
            outcome = "done"
        finally:
            stop.set()
            thread.join()
            self.say(f"{outcome} after {format_duration(time.monotonic() - self.started)}")

    def tee(self, log: TextIO) -> TeeToTerminal:
        """A stream writing everything to ``log`` and its progress lines also to the terminal."""
        return TeeToTerminal(log, self)


class TeeToTerminal:
    """A text stream: everything goes to ``log``; each complete line starting with the progress reporter's
    prefix (``[progress] ``) is also said on the terminal by ``terminal``."""

    def __init__(self, log: TextIO, terminal: JobTerminal):
        self.log, self.terminal = log, terminal
        self._pending = ""

    def write(self, text: str) -> int:
        self.log.write(text)
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if line.startswith(LINE_PREFIX):
                self.terminal.say(line)
        return len(text)

    def flush(self) -> None:
        self.log.flush()

    def isatty(self) -> bool:
        return False


__all__ = ["JobTerminal", "TeeToTerminal", "format_duration"]
