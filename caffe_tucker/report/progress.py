"""A small progress bar on stderr (one line, redrawn in place; silent when not a terminal)."""

from __future__ import annotations

import os
import sys
import time

__all__ = ["Progress"]


class Progress:
    """``with Progress(total, "fetch alexnet", unit="B") as bar: bar.update(n)``.

    Drawn only when stderr is a terminal, or when ``CAFFE_TUCKER_PROGRESS=1``
    (``0`` silences it everywhere); redrawn at most ten times a second.
    """

    def __init__(self, total: int | None, label: str, unit: str = "", stream=None):
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream or sys.stderr
        self.done = 0
        self._last = 0.0
        self._start = time.monotonic()
        env = os.environ.get("CAFFE_TUCKER_PROGRESS")
        self.enabled = env == "1" or (env != "0" and getattr(self.stream, "isatty", lambda: False)())

    def __enter__(self):
        self._draw(force=True)
        return self

    def __exit__(self, *exc):
        self._draw(force=True)
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
        return False

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        self.note = note
        self._draw()

    def set_note(self, note: str) -> None:
        """Show ``note`` beside the bar now (a stage that starts, for example)."""
        self.note = note
        self._draw(force=True)

    def _fmt(self, n: float) -> str:
        if self.unit == "B":
            for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
                if n >= scale:
                    return f"{n / scale:.1f} {unit}"
            return f"{int(n)} B"
        return str(int(n))

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        note = getattr(self, "note", "")
        if self.total:
            frac = min(self.done / self.total, 1.0)
            width = 30
            filled = int(frac * width)
            bar = "#" * filled + "-" * (width - filled)
            text = (f"\r{self.label} [{bar}] {frac * 100:5.1f}% "
                    f"{self._fmt(self.done)}/{self._fmt(self.total)} {note}")
        else:
            text = f"\r{self.label} {self._fmt(self.done)} {note}"
        self.stream.write(text[:200].ljust(80))
        self.stream.flush()
