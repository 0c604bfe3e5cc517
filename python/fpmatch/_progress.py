"""A small dependency-free progress bar for the command line (written to stderr)."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

_REDRAW_S = 0.1


def progress_wanted(requested: bool, stream: TextIO | None = None) -> bool:
    """Show progress when asked to, or when ``stream`` (stderr) is a terminal."""
    if requested:
        return True
    target = sys.stderr if stream is None else stream
    try:
        return bool(target.isatty())
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


class Progress:
    """``label [#####.....]  50%  5/10  1.2s`` redrawn in place; silent unless enabled.

    Use as a context manager and call :meth:`advance` per unit of work.
    """

    def __init__(
        self, label: str, total: int, *, enabled: bool, stream: TextIO | None = None, width: int = 28
    ) -> None:
        self.label = label
        self.total = max(0, int(total))
        self.done = 0
        self.enabled = enabled
        self._stream = stream
        self._width = width
        self._start = time.perf_counter()
        self._drawn_at = -1.0
        self._drawn_done = -1
        self._closed = False

    @property
    def stream(self) -> TextIO:
        return sys.stderr if self._stream is None else self._stream

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more units done and redraw (at most ten times a second)."""
        self.done = min(self.total, self.done + n) if self.total else self.done + n
        now = time.perf_counter()
        if self.enabled and (now - self._drawn_at >= _REDRAW_S or self.done >= self.total):
            self._draw(now)

    def close(self) -> None:
        """Draw the final state and end the line."""
        if self._closed:
            return
        self._closed = True
        if self.enabled:
            if self._drawn_done != self.done:
                self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        if self.enabled:
            self._draw(time.perf_counter())
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _draw(self, now: float) -> None:
        self._drawn_at = now
        self._drawn_done = self.done
        fraction = self.done / self.total if self.total else 1.0
        filled = int(round(fraction * self._width))
        bar = "#" * filled + "." * (self._width - filled)
        line = (
            f"\r{self.label} [{bar}] {fraction * 100:3.0f}%  "
            f"{self.done}/{self.total}  {now - self._start:.1f}s"
        )
        self.stream.write(line)
        self.stream.flush()


__all__ = ["Progress", "progress_wanted"]
