"""Progress for the CLI, with tqdm: one bar per model for `moa models pull` (bytes, rate, ETA) and
one for `moa run --input` batches. tqdm because it is small, well kept, draws correctly on a
terminal, and its tqdm.auto gives the notebook face an ipywidgets bar with the same calls.

When the stream is not a terminal (CI logs, a pipe) there are no bars: a plain line now and then.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["byte_bars", "ByteBars"]


class ByteBars:
    """`on_bytes(model, done, total)` for registry.pull: a tqdm bar per model on a terminal; else a
    line at each quarter. `bar_class` replaces tqdm's class (tests)."""

    def __init__(self, stream: TextIO | None = None, *, bar_class: Any = None, tty: bool | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.bar_class = bar_class
        self.bars: dict[str, Any] = {}
        self._quarter: dict[str, int] = {}

    def __call__(self, model: str, done: int, total: int) -> None:
        if self.tty or self.bar_class is not None:
            self._bar(model, done, total)
            return
        quarter = 4 * done // total if total else 4
        if quarter > self._quarter.get(model, -1):
            self._quarter[model] = quarter
            self.stream.write(f"moa: {model}: {done / 1e6:.0f} of {total / 1e6:.0f} MB ({25 * quarter}%)\n")
            self.stream.flush()

    def _bar(self, model: str, done: int, total: int) -> None:
        bar = self.bars.get(model)
        if bar is None:
            if self.bar_class is None:
                from tqdm import tqdm as bar_class
            else:
                bar_class = self.bar_class
            bar = self.bars[model] = bar_class(
                total=total,
                desc=model,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=self.stream if self.bar_class is None else None,
                leave=True,
                dynamic_ncols=True,
            )
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def byte_bars() -> ByteBars:
    return ByteBars()
