"""One progress display for a whole evaluation or sweep, built on tqdm.

What it shows: items done (per variant in a sweep), calls made, cache hits, tokens, what the calls
made so far cost, elapsed time and an ETA (tqdm's, from the rate of finished steps: topology runs
and judge calls).

Where: in a Jupyter kernel, tqdm's notebook widgets (tqdm.auto); on a terminal, tqdm's bars on the
stream (one for the whole run, and one per variant in a sweep); on any other stream (a log file, a
pipe, pytest's capture) a plain line every few seconds and a last one at the end, with no carriage
returns -- the same text, formatted by tqdm.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any, Callable

from tqdm.std import tqdm as std_tqdm

__all__ = ["Progress"]

PLAIN_EVERY_S = 5.0
_FORMAT = "{desc}{postfix} | {n_fmt}/{total_fmt} steps, {elapsed} elapsed, ETA {remaining}"
_BAR_FORMAT = "{desc}{postfix} |{bar}| {percentage:3.0f}% {elapsed}<{remaining}"


class Progress:
    """`units`: the steps of the whole run (topology runs + judge calls), for the ETA; `items`: the
    items every topology answers; `variants`: {name: items planned} for a sweep's per-variant counts.
    `add` extends both when a sweep's next round is planned."""

    def __init__(
        self,
        *,
        items: int,
        units: int,
        stream: IO[str] | None,
        label: str = "eval",
        variants: dict[str, int] | None = None,
    ):
        self.items, self.units, self.stream, self.label = items, units, stream, label
        self.items_done = self.units_done = self.calls = self.hits = self.tokens = 0
        self.spent_usd = 0.0
        self.variants = dict(variants or {})
        self.variant_done = {name: 0 for name in self.variants}
        if self.variants:
            self.items = sum(self.variants.values())
        self.t0 = time.monotonic()
        self._last = self.t0
        self._closed = False
        self._bar: Any = None
        self._variant_bars: dict[str, Any] = {}
        if stream is None:
            self.mode = "off"
        elif _notebook_tqdm() is not None and stream in (sys.stderr, sys.__stderr__):
            self.mode = "notebook"
        elif getattr(stream, "isatty", lambda: False)():
            self.mode = "terminal"
        else:
            self.mode = "plain"
        if self.mode in ("notebook", "terminal"):
            self._open_bars()

    # --- what happens ------------------------------------------------------------------------------

    def listener(self, graph: Any = None) -> Callable[[Any], None]:
        """An on_event callback for one topology's runs; `graph` gives the nodes' prices (spent cost)."""

        def on_event(event: Any) -> None:
            # `calls`: a window folds in several, a vote or an agreeing aggregator makes none
            if event.kind == "node_finished" and event.data.get("status") == "ok":
                self.calls += event.data.get("calls", 1)
                usage = event.data.get("usage", {})
                pt, ct = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
                self.tokens += pt + ct
                price = _price(graph, event.node)
                if price is not None:
                    self.spent_usd += (pt * price[0] + ct * price[1]) / 1e6
            elif event.kind == "node_failed":
                self.calls += event.data.get("calls", 1)
            elif event.kind == "node_cancelled":
                self.calls += event.data.get("calls", 0)
            elif event.kind == "cache_hit":
                self.hits += 1

        return on_event

    def on_event(self, event: Any) -> None:
        """An on_event callback when no price is known (the judge's, unless its model is declared)."""
        self.listener(None)(event)

    def unit(self) -> None:
        self.units_done += 1
        self._update(1)

    def item(self) -> None:
        """Every topology is done with one more item (a sweep counts items per variant instead)."""
        if not self.variants:
            self.items_done += 1
            self._update(0)

    def variant_item(self, name: str) -> None:
        """One variant of a sweep is done with one more item."""
        if name in self.variant_done:
            self.variant_done[name] += 1
            self.items_done += 1
            bar = self._variant_bars.get(name)
            if bar is not None:
                bar.update(1)

    def add(self, *, units: int, items: int | None = None, variants: dict[str, int] | None = None) -> None:
        """The next round of a sweep: more steps, perhaps more items, and each survivor's new item count."""
        self.units += units
        if items is not None:
            self.items = items
        for name, planned in (variants or {}).items():
            self.variants[name] = planned
            self.variant_done.setdefault(name, 0)
            bar = self._variant_bars.get(name)
            if bar is not None:
                bar.total = planned
                bar.refresh()
        if variants:
            self.items = sum(self.variants.values())
        if self._bar is not None:
            self._bar.total = self.units
        self._update(0)

    def note(self, text: str) -> None:
        """A line of its own (a failed item), above the bars on a terminal."""
        if self.mode == "off":
            return
        if self.mode == "plain":
            assert self.stream is not None
            self.stream.write(text + "\n")
            self.stream.flush()
        else:
            std_tqdm.write(text, file=self.stream if self.mode == "terminal" else sys.stderr)

    def close(self) -> None:
        """The last state, once: a final line, or the bars left at their end."""
        if self._closed or self.mode == "off":
            self._closed = True
            return
        self._closed = True
        if self.mode == "plain":
            self._plain_line()
            return
        for bar in self._variant_bars.values():
            bar.close()
        if self._bar is not None:
            self._describe()
            self._bar.refresh()
            self._bar.close()

    # kept for callers of the old API
    def draw(self, *, final: bool = False) -> None:
        if final:
            self.close()
        else:
            self._update(0)

    # --- the text ----------------------------------------------------------------------------------

    def description(self) -> str:
        return f"{self.label}: {self.items_done}/{self.items} items"

    def postfix(self) -> str:
        text = f"{self.calls} calls, {self.hits} cache hits, {self.tokens} tokens"
        if self.spent_usd:
            text += f", ${self.spent_usd:.6f} spent"
        return text

    def variant_text(self) -> str:
        return ", ".join(f"{name} {self.variant_done[name]}/{n}" for name, n in self.variants.items())

    def line(self) -> str:
        text = std_tqdm.format_meter(
            self.units_done,
            self.units,
            time.monotonic() - self.t0,
            prefix=self.description(),
            postfix=self.postfix(),
            bar_format=_FORMAT,
        )
        if self.variants:
            text += " | items per variant: " + self.variant_text()
        return text

    # --- drawing -----------------------------------------------------------------------------------

    def _open_bars(self) -> None:
        cls = _notebook_tqdm() if self.mode == "notebook" else std_tqdm
        assert cls is not None
        file = self.stream if self.mode == "terminal" else None
        self._bar = cls(
            total=self.units,
            file=file,
            bar_format=_BAR_FORMAT,
            leave=True,
            dynamic_ncols=True,
            position=0 if self.mode == "terminal" else None,
        )
        self._describe()
        for i, (name, planned) in enumerate(self.variants.items(), 1):
            self._variant_bars[name] = cls(
                total=planned,
                desc=f"  {name}",
                unit="item",
                file=file,
                leave=False,
                position=i if self.mode == "terminal" else None,
                dynamic_ncols=True,
            )

    def _describe(self) -> None:
        self._bar.set_description_str(self.description(), refresh=False)
        self._bar.set_postfix_str(self.postfix(), refresh=False)

    def _update(self, steps: int) -> None:
        if self._closed or self.mode == "off":
            return
        if self.mode == "plain":
            now = time.monotonic()
            if now - self._last >= PLAIN_EVERY_S:
                self._last = now
                self._plain_line()
            return
        self._describe()
        if steps:
            self._bar.update(steps)
        else:
            self._bar.refresh()

    def _plain_line(self) -> None:
        assert self.stream is not None
        self.stream.write(self.line() + "\n")
        self.stream.flush()


def _price(graph: Any, node: str | None) -> tuple[float, float] | None:
    if graph is None or node is None or node not in graph:
        return None
    price = graph.nodes[node]["params"].get("price")
    return None if price is None else (price[0], price[1])


def _notebook_tqdm() -> Any:
    """tqdm's notebook bar when running in a Jupyter kernel with ipywidgets, else None. IPython is
    never imported here: if it is not loaded, this is no notebook."""
    if "IPython" not in sys.modules:
        return None
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None or "IPKernelApp" not in getattr(shell, "config", {}):
            return None
        import ipywidgets  # noqa: F401  (tqdm.notebook needs it to draw; without it, no widget)
        from tqdm.notebook import tqdm as notebook_tqdm
    except Exception:
        return None
    return notebook_tqdm
