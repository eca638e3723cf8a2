"""Progress of long host work (layer conversion, image builds) on stderr: a bar redrawn in
place on a terminal, plain lines otherwise (a log or a pipe gets no control characters)."""
from __future__ import annotations

import os
import sys
import time
from typing import IO, Optional

BAR = 24
REDRAW = 0.1  # seconds between redraws on a terminal
STEPS = 4  # plain lines per step with a total: at 25, 50, 75 and 100 %


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class Progress:
    def __init__(self, stream: Optional[IO[str]] = None, tty: Optional[bool] = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = tty if tty is not None else _isatty(self.stream)
        self.what = ""
        self.total: Optional[int] = None
        self.done = 0
        self._drawn = 0.0
        self._quarter = 0
        self._open = False  # a bar line is on the terminal, not yet ended

    def step(self, what: str, total: Optional[int] = None) -> None:
        """Start a step: `what` it does, and its `total` in bytes when known."""
        self.end()
        self.what, self.total, self.done, self._quarter = what, total, 0, 0
        if self.tty:
            self._draw()
        else:
            self._line(what + (f" ({_mib(total)})" if total else ""))

    def advance(self, n: int) -> None:
        self.done += n
        if self.tty:
            if time.monotonic() - self._drawn >= REDRAW:
                self._draw()
        elif self.total:
            quarter = min(STEPS, self.done * STEPS // self.total)
            if quarter > self._quarter and quarter < STEPS:
                self._quarter = quarter
                self._line(f"{self.what}: {quarter * 100 // STEPS}% of {_mib(self.total)}")

    def status(self, text: str) -> None:
        """What is happening now, without a measure: on a terminal it replaces the previous
        status in place (end() keeps the last one), otherwise it is a line of its own."""
        if self.tty:
            self.what, self.total, self.done = "", None, 0
            self.stream.write(f"\r\x1b[K{text}")
            self.stream.flush()
            self._open = True
        else:
            self._line(text)

    def end(self) -> None:
        """Finish the current line on a terminal (a step's bar is drawn in its last state)."""
        if self._open:
            if self.what:
                self._draw()
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
            self.what = ""

    def _draw(self) -> None:
        self._drawn = time.monotonic()
        if self.total:
            frac = min(1.0, self.done / self.total)
            filled = int(frac * BAR)
            bar = f" [{'#' * filled}{'.' * (BAR - filled)}] {frac * 100:3.0f}% {_mib(self.done)}/{_mib(self.total)}"
        else:
            bar = f" {_mib(self.done)}" if self.done else ""
        self.stream.write(f"\r\x1b[K{self.what}{bar}")
        self.stream.flush()
        self._open = True

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


class Counting:
    """A readable file that tells `progress` how many bytes went through it."""

    def __init__(self, raw: IO[bytes], progress: Progress) -> None:
        self.raw, self.progress = raw, progress

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.progress.advance(len(data))
        return data

    def readinto(self, buf) -> int:  # noqa: ANN001 - any writable buffer
        n = self.raw.readinto(buf)
        self.progress.advance(n or 0)
        return n

    def __getattr__(self, name: str):  # noqa: ANN204 - tell, seek, close... of the raw file
        return getattr(self.raw, name)


def _isatty(stream: IO[str]) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
