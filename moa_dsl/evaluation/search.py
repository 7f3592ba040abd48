"""`moa sweep` / `moa_dsl.sweep`: search a topology's settings on a dataset.

    report = moa_dsl.sweep("moa.moa", grid={"temperature": [0.3, 0.7], "p.n": [1, 3]}, data="items.jsonl",
                           judge='openai:"gpt-4o"')

Every combination of the grid's values is a variant of the file, named by its settings
(`temperature=0.3,p.n=3`). A key is what `--set` takes (`temperature`, `final.max_tokens`,
`p.quorum`), or `LAYER.n`: the sample count of a layer with exactly one member (`p.n=3` makes
`m * 3` of the layer's `m`), rewritten on the syntax tree and compiled again. The variants are
evaluated as `moa eval` evaluates topologies -- same judge, files and statistics -- against the file
as written (or the variant `baseline` names), all under one bound on calls in flight and one
response cache: a call two variants share is made once (a layer member's sample index is its
position among its N samples, so `p.n=1` and `p.n=3` share their first sample), and a rerun makes
none.

Successive halving (`halving=True`): every variant answers the first ceil(N/8) items; the better
half by win rate goes on to twice as many, and so on until N. An eliminated variant is reported on
the items it answered (its row's `n`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Mapping, Sequence

from ..config import DEFAULT_CONCURRENCY
from ..errors import ConfigError
from ..language import syntax as ast
from ..language.loader import load_rewritten
from ..language.validate import did_you_mean
from ..runtime import Pipeline, run_sync
from .compare import Evaluation, check_judge, run_evaluation
from .data import read_items
from .judge import DEFAULT_JUDGE, DEFAULT_JUDGE_MAX_TOKENS
from .plot import render_param_svg
from .progress import Progress
from .report import EvalReport, write_file

__all__ = ["asweep", "DEFAULT_SWEEP_OUT", "parse_grid", "SweepReport", "sweep", "Variant", "variants"]

DEFAULT_SWEEP_OUT = "moa-sweep"
HALVING_START = 8  # successive halving starts on ceil(N / 8) items


# --- the grid ---------------------------------------------------------------------------------------


def parse_grid(specs: Sequence[str]) -> dict[str, list[str]]:
    """`--grid KEY=V1,V2,...` options into {KEY: [value text, ...]}; commas inside quotes or
    brackets do not split (`stop=["a","b"],["c"]` is two values)."""
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, raw = spec.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise ConfigError(f"--grid {spec!r}: expected KEY=V1,V2,...")
        values = [v.strip() for v in _split_top_level(raw)]
        if any(not v for v in values):
            raise ConfigError(f"--grid {spec!r}: an empty value")
        _add(grid, key, values)
    return _checked(grid)


def grid_of(grid: Mapping[str, Any]) -> dict[str, list[str]]:
    """A Python grid ({key: [values]} or {key: value}) as value texts, as `--grid` would give them."""
    if not isinstance(grid, Mapping):
        raise ConfigError(f"grid must be a mapping of KEY to a list of values, not {type(grid).__name__}")
    out: dict[str, list[str]] = {}
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            values = [values]
        _add(out, str(key).strip(), [_text(v) for v in values])
    return _checked(out)


def _add(grid: dict[str, list[str]], key: str, values: list[str]) -> None:
    if key in grid:
        raise ConfigError(f"--grid {key}: given twice")
    if len(set(values)) != len(values):
        raise ConfigError(f"--grid {key}: a value is repeated")
    grid[key] = values


def _checked(grid: dict[str, list[str]]) -> dict[str, list[str]]:
    if not grid:
        raise ConfigError("no --grid: give at least one KEY=V1,V2,...")
    for key, values in grid.items():
        if not values:
            raise ConfigError(f"--grid {key}: no values")
    return grid


def _text(value: Any) -> str:
    """A Python value as the text `--set` would take."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)


def _split_top_level(raw: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth, quoted, escaped = 0, False, False
    for ch in raw:
        if quoted:
            escaped = ch == "\\" and not escaped
            quoted = not (ch == '"' and not escaped)
        elif ch == '"':
            quoted = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


# --- the variants -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str  # its settings: `temperature=0.3,p.n=3`
    settings: dict[str, str]  # key -> value text
    pipe: Pipeline


def variants(file: str | os.PathLike, grid: Mapping[str, Sequence[str]]) -> list[Variant]:
    """Every combination of the grid, compiled and checked before anything is called (a bad key
    or value is a ConfigError naming it; a file with errors raises MoaError)."""
    path = Path(file)
    layers = _layer_keys(path, grid)
    out = []
    for combo in itertools.product(*grid.values()):
        settings = dict(zip(grid, combo, strict=True))
        counts = {layers[k]: _count(k, v) for k, v in settings.items() if k in layers}
        sets = [f"{k}={v}" for k, v in settings.items() if k not in layers]
        pipe = Pipeline.of(load_rewritten(path, _rewriter(counts) if counts else None))
        if sets:
            try:
                pipe = pipe.with_overrides(sets)
            except ConfigError as exc:
                raise ConfigError(str(exc).replace("--set ", "--grid ", 1)) from None
        name = ",".join(f"{k}={v}" for k, v in settings.items())
        out.append(Variant(name, settings, dataclasses.replace(pipe, name=name)))
    return out


def _layer_keys(path: Path, grid: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """{`LAYER.n` key: layer name}, each checked against the file's own syntax tree."""
    keys = [k for k in grid if k == "n" or k.endswith(".n")]
    if not keys:
        return {}
    module = _module(path)
    layers = {s.name.text: s for s in module.statements if isinstance(s, ast.LayerDecl)}
    nodes = {s.name.text for s in module.statements if isinstance(s, ast.NodeDecl)}
    out = {}
    for key in keys:
        layer = key[:-2]
        if not layer:
            raise ConfigError("--grid n: the sample count belongs to a layer: write LAYER.n (e.g. p.n=1,3)")
        if layer not in layers:
            if layer in nodes:
                raise ConfigError(
                    f"--grid {key}: '{layer}' is a node, not a layer; LAYER.n sets the sample "
                    "count of a layer's one model (`layer p = propose [m * 3]`)"
                )
            hint = did_you_mean(layer, layers)
            known = ", ".join(layers) or "none"
            raise ConfigError(
                f"--grid {key}: no layer '{layer}' in {path} (its layers: {known})" + (f"; {hint}" if hint else "")
            )
        members = layers[layer].members
        if len(members) != 1:
            raise ConfigError(
                f"--grid {key}: layer '{layer}' has {len(members)} members; LAYER.n rewrites "
                f"`MODEL * N` in a layer of exactly one member (write the layer as one model "
                f"`* N`, or sweep each member's count as its own layer)"
            )
        out[key] = layer
    return out


def _module(path: Path) -> ast.Module:
    """The file's own syntax tree, read and checked as `load` reads it (a file with errors raises
    MoaError here, before any call)."""
    seen: list[ast.Module] = []

    def keep(module: ast.Module) -> ast.Module:
        seen.append(module)
        return module

    load_rewritten(path, keep)
    return seen[0]


def _count(key: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1 or str(n) != value.strip():
        raise ConfigError(f"--grid {key}={value}: a sample count must be an integer >= 1")
    return n


def _rewriter(counts: Mapping[str, int]) -> Any:
    def rewrite(module: ast.Module) -> ast.Module:
        statements = []
        for s in module.statements:
            if isinstance(s, ast.LayerDecl) and s.name.text in counts:
                member = s.members[0]
                span = member.count.span if member.count is not None else member.span
                s = dataclasses.replace(
                    s, members=(dataclasses.replace(member, count=ast.Num(counts[s.name.text], span)),)
                )
            statements.append(s)
        return dataclasses.replace(module, statements=tuple(statements))

    return rewrite


# --- the sweep --------------------------------------------------------------------------------------


async def asweep(
    file: str | os.PathLike,
    grid: Mapping[str, Any],
    data: str | os.PathLike | Iterable[Mapping],
    *,
    limit: int | None = None,
    judge: str = DEFAULT_JUDGE,
    baseline: str | None = None,
    out: str | os.PathLike | None = None,
    halving: bool = False,
    concurrency: int = DEFAULT_CONCURRENCY,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    refresh: bool = False,
    judge_max_tokens: int = DEFAULT_JUDGE_MAX_TOKENS,
    progress: IO[str] | None | str = "auto",
    environ: Mapping[str, str] | None = None,
    transport: Any = None,
    verbose: bool = False,
) -> "SweepReport":
    """Evaluate every variant of `file` (see the module docstring). `grid`: {KEY: [values]} (Python
    values or the texts `--grid` takes). `progress`: a stream, None for none, or "auto" (the
    default): stderr, which is a widget in a notebook. Raises ConfigError/MoaError before any call
    for bad input."""
    stream = sys.stderr if progress == "auto" else progress
    if isinstance(stream, str):
        raise ConfigError(f"progress must be a stream, None or 'auto', not {progress!r}")
    texts = grid_of(grid)
    found = variants(file, texts)
    names = [v.name for v in found]
    if baseline is None or baseline == Path(file).stem:
        as_written = Pipeline.of(load_rewritten(file, None))
        base = as_written.name or "baseline"
        if base in names:
            raise ConfigError(f"the file's name '{base}' is also a variant's; rename the file")
        pipes = {base: as_written}
    elif baseline in names:
        base, pipes = baseline, {}
    else:
        hint = did_you_mean(baseline, names)
        raise ConfigError(
            f"--baseline {baseline}: not one of the variants ({', '.join(names)})" + (f"; {hint}" if hint else "")
        )
    pipes.update((v.name, v.pipe) for v in found)
    items = read_items(data, limit=limit)
    judge_model, judge_pipe = check_judge(judge, list(pipes.values()), judge_max_tokens)
    n = len(items)
    competing = [name for name in names if name != base]
    first = math.ceil(n / HALVING_START) if halving else n
    bar = Progress(items=0, units=0, stream=stream, label="sweep", variants={name: first for name in pipes})

    async def plan(evaluation: Evaluation) -> None:
        alive, upto = competing, first
        while True:
            bar.add(units=0, variants={base: upto, **{name: upto for name in alive}})
            await evaluation.run_round(alive, upto)
            if upto >= n:
                return
            # the better half by win rate so far; ties keep the grid's order
            ranked = sorted(alive, key=lambda name: -evaluation.win_rate(name))
            alive = [name for name in competing if name in ranked[: math.ceil(len(alive) / 2)]]
            upto = min(n, 2 * upto)

    report = await run_evaluation(
        pipes,
        items,
        base,
        judge_model,
        judge_pipe,
        plan,
        concurrency=concurrency,
        cache=cache,
        cache_dir=cache_dir,
        refresh=refresh,
        progress=bar,
        environ=environ,
        transport=transport,
        verbose=verbose,
    )
    result = SweepReport(
        report.baseline,
        report.judge,
        report.items,
        report.topologies,
        report.judge_usage,
        grid=dict(texts),
        settings={v.name: v.settings for v in found},
        halving=halving,
    )
    if out is not None:
        result.write(out)
    return result


def sweep(
    file: str | os.PathLike, grid: Mapping[str, Any], data: str | os.PathLike | Iterable[Mapping], **options: Any
) -> "SweepReport":
    """Blocking `asweep`: in a script, or inside a running loop (Jupyter) on a worker thread."""
    return run_sync(lambda: asweep(file, grid, data, **options))


# --- the report -------------------------------------------------------------------------------------


@dataclass
class SweepReport(EvalReport):
    """`EvalReport` with the grid: each row carries its `settings`; `write` adds one plot of win
    rate against each swept key (`sweep-KEY.svg`). Displays itself in a notebook."""

    grid: dict[str, list[str]] = field(default_factory=dict)
    settings: dict[str, dict[str, str]] = field(default_factory=dict)
    halving: bool = False

    def rows(self) -> list[dict[str, Any]]:
        rows = super().rows()
        for row in rows:
            row["settings"] = self.settings.get(row["name"])
            row["eliminated"] = self.halving and row["settings"] is not None and row["n"] < len(self.items)
        return rows

    @property
    def summary(self) -> dict[str, Any]:
        return {**super().summary, "grid": self.grid, "halving": self.halving}

    def _notes(self) -> list[str]:
        grid = "; ".join(f"{k} = {', '.join(v)}" for k, v in self.grid.items())
        notes = [f"grid: {grid} ({len(self.settings)} variants)"]
        if self.halving:
            notes.append("successive halving: a variant with n below the item count was eliminated after n items")
        return notes + super()._notes()

    def param_svgs(self) -> dict[str, str]:
        rows = self.summary["topologies"]
        return {
            key: render_param_svg(rows, key, values, title=f"win rate vs {self.baseline} against {key}")
            for key, values in self.grid.items()
        }

    def write(self, out: str | os.PathLike) -> Path:
        path = super().write(out)
        for key, svg in self.param_svgs().items():
            write_file(path / f"sweep-{key.replace('/', '_')}.svg", svg)
        return path

    def _repr_html_(self) -> str:
        return super()._repr_html_() + "".join(self.param_svgs().values())
