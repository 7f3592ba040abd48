"""The report: per-topology rows, summary.json, summary.md, the plot, model_outputs.json."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any, Sequence

from .data import Item
from .judge import JudgeModel
from .latency import ItemRun
from .stats import bootstrap_ci, lc_win_rate, pareto_flags, percentile, win_rate

__all__ = ["EvalReport", "SUMMARY_KEYS", "TopologyReport", "cost_per_item", "dir_name", "quality", "write_file"]

# --- the report ----------------------------------------------------------------------------------

SUMMARY_KEYS = (
    "name",
    "win_rate",
    "stderr",
    "win_rate_ci",
    "lc_win_rate",
    "n",
    "calls",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "latency_mean_s",
    "latency_p95_s",
    "avg_length",
    "by_category",
    "pareto_cost",
    "pareto_latency",
)


@dataclass
class TopologyReport:
    name: str
    runs: list[ItemRun]
    scores: list[float] | None = None  # None for the baseline
    ties_unparseable: int = 0
    judge_errors: int = 0
    priced: bool = True
    correct: list[bool] | None = None  # `--score exact`: each answer right or not (no judge)
    extracted: list[str | None] | None = None  # and what `--extract` found in it

    def row(self, items: Sequence[Item], baseline: Sequence[ItemRun] | None = None) -> dict[str, Any]:
        """summary.json's row; `baseline`: the baseline's runs on the same items (for the length
        control). The Pareto flags need every row: EvalReport.summary adds them."""
        rate, stderr = win_rate(self.scores) if self.scores is not None else (None, None)
        latencies = [r.latency_s for r in self.runs if r.status == "ok" and r.latency_s is not None]
        mean = sum(latencies) / len(latencies) if latencies else None
        cost = sum(r.cost_usd or 0.0 for r in self.runs) if self.priced else None
        lengths = [len(r.output) for r in self.runs if r.status == "ok" and r.output is not None]
        ci = bootstrap_ci(self.scores) if self.scores else None
        exact = {}
        if self.correct is not None:
            n_correct = sum(self.correct)
            exact = {
                "accuracy": _r(n_correct / len(self.correct)) if self.correct else None,
                "n_correct": n_correct,
            }
        return {
            "name": self.name,
            **exact,
            "win_rate": _r(rate),
            "stderr": _r(stderr),
            "win_rate_ci": None if ci is None else [_r(ci[0]), _r(ci[1])],
            "lc_win_rate": _r(self._lc(baseline)),
            "n": len(self.runs),
            "calls": sum(r.calls for r in self.runs),
            "prompt_tokens": sum(r.prompt_tokens for r in self.runs),
            "completion_tokens": sum(r.completion_tokens for r in self.runs),
            "cost_usd": _r(cost, 8),
            "latency_mean_s": _r(mean),
            "latency_p95_s": _r(percentile(latencies, 95)),
            "avg_length": _r(sum(lengths) / len(lengths), 1) if lengths else None,
            "by_category": self._by_category(items),
            "ties_unparseable": self.ties_unparseable,
            "judge_errors": self.judge_errors,
            "failed_items": [
                {"index": items[i].index, "error": r.error} for i, r in enumerate(self.runs) if r.status != "ok"
            ],
        }

    def _lc(self, baseline: Sequence[ItemRun] | None) -> float | None:
        """Over the items both answered (a failed answer has no length to control for)."""
        if self.scores is None or baseline is None:
            return None
        both = [
            (s, len(r.output), len(b.output))
            for s, r, b in zip(self.scores, self.runs, baseline, strict=False)
            if r.output is not None and b.output is not None
        ]
        return lc_win_rate([s for s, _, _ in both], [c for _, c, _ in both], [b for _, _, b in both])

    def _by_category(self, items: Sequence[Item]) -> dict[str, float] | None:
        if self.scores is None or not any(item.category for item in items[: len(self.scores)]):
            return None
        per: dict[str, list[float]] = {}
        for item, score in zip(items, self.scores, strict=False):
            per.setdefault(item.category or "uncategorised", []).append(score)
        return {c: round(sum(v) / len(v), 6) for c, v in per.items()}


def _r(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


@dataclass
class EvalReport:
    """What `moa_dsl.evaluate` returns: `summary` is summary.json; it displays itself in a notebook."""

    baseline: str
    judge: JudgeModel | None  # None with score "exact"
    items: list[Item]
    topologies: list[TopologyReport]
    judge_usage: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None
    score: str = "judge"  # or "exact": accuracy against each item's `answer`, no judge

    @property
    def summary(self) -> dict[str, Any]:
        summary = {
            "baseline": self.baseline,
            "judge": None if self.judge is None else self.judge.ref,
            "topologies": self.rows(),
            "items": len(self.items),
            "judge_usage": self.judge_usage,
        }
        if self.score == "exact":
            summary = {"score": "exact", **summary}
            del summary["baseline"]
        return summary

    def rows(self) -> list[dict[str, Any]]:
        """One row per topology, with `pareto_cost`/`pareto_latency`: on the front of win rate
        against cost per item (rows can cover different numbers of items: a halving sweep) and
        against mean latency. The baseline takes part at 0.5, where it would score against itself."""
        base = next((t.runs for t in self.topologies if t.name == self.baseline), None)
        rows = [t.row(self.items, base) for t in self.topologies]
        for key, x_of in (("pareto_cost", cost_per_item), ("pareto_latency", lambda r: r["latency_mean_s"])):
            flags = pareto_flags([(x_of(r), quality(r)) for r in rows])
            for row, flag in zip(rows, flags, strict=False):
                row[key] = flag
        return rows

    def model_outputs(self, name: str) -> list[dict[str, Any]]:
        """AlpacaEval's format; a failed item's output is "" (it is listed in summary.json). With
        score "exact", each row also has `answer`, `extracted` and `correct`."""
        topo = next(t for t in self.topologies if t.name == name)
        rows: list[dict[str, Any]] = [
            {"instruction": item.instruction, "output": run.output or "", "generator": name, "dataset": item.dataset}
            for item, run in zip(self.items, topo.runs, strict=False)
        ]
        if topo.correct is not None and topo.extracted is not None:
            for row, item, ok, got in zip(rows, self.items, topo.correct, topo.extracted, strict=False):
                row.update(answer=item.answer, extracted=got, correct=ok)
        return rows

    def to_markdown(self) -> str:
        if self.score == "exact":
            return self._exact_table(self.summary["topologies"]) + "\n" + "\n".join(self._exact_notes()) + "\n"
        return self._table(self.summary["topologies"]) + "\n" + "\n".join(self._notes()) + "\n"

    def _exact_table(self, rows: list[dict[str, Any]]) -> str:
        head = (
            "| topology | accuracy | correct | n | calls | prompt tok | completion tok | cost USD "
            "| mean latency s | p95 latency s | failed | Pareto |"
        )
        lines = [head, "|" + "---|" * (head.count("|") - 1)]
        for row in rows:
            front = ", ".join(k for k in ("cost", "latency") if row.get(f"pareto_{k}"))
            cells = [
                row["name"],
                _fmt(row["accuracy"], 3),
                str(row["n_correct"]),
                str(row["n"]),
                str(row["calls"]),
                str(row["prompt_tokens"]),
                str(row["completion_tokens"]),
                _fmt(row["cost_usd"], 6),
                _fmt(row["latency_mean_s"], 2),
                _fmt(row["latency_p95_s"], 2),
                str(len(row["failed_items"])),
                front or "—",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def _exact_notes(self) -> list[str]:
        return [
            f"exact match against each item's answer; {len(self.items)} items; a failed item or an answer "
            "the pattern does not match counts as wrong; Pareto: on the front of accuracy against cost per "
            "item / mean latency"
        ]

    def _table(self, rows: list[dict[str, Any]]) -> str:
        head = (
            "| topology | win rate | 95% CI | LC win rate | ± s.e. | n | calls | prompt tok | completion tok "
            "| cost USD | mean latency s | p95 latency s | avg length | failed | Pareto |"
        )
        lines = [head, "|" + "---|" * (head.count("|") - 1)]
        for row in rows:
            rate = "baseline" if row["win_rate"] is None else f"{row['win_rate']:.3f}"
            ci = row["win_rate_ci"]
            front = ", ".join(k for k in ("cost", "latency") if row.get(f"pareto_{k}"))
            lines.append(
                "| "
                + " | ".join(
                    [
                        row["name"],
                        rate,
                        "—" if ci is None else f"{ci[0]:.3f}–{ci[1]:.3f}",
                        _fmt(row["lc_win_rate"], 3),
                        _fmt(row["stderr"], 3),
                        str(row["n"]),
                        str(row["calls"]),
                        str(row["prompt_tokens"]),
                        str(row["completion_tokens"]),
                        _fmt(row["cost_usd"], 6),
                        _fmt(row["latency_mean_s"], 2),
                        _fmt(row["latency_p95_s"], 2),
                        _fmt(row["avg_length"], 0),
                        str(len(row["failed_items"])),
                        front or "—",
                    ]
                )
                + " |"
            )
        table = "\n".join(lines) + "\n"
        categories = list(dict.fromkeys(c for row in rows for c in (row["by_category"] or {})))
        if categories:
            table += "\n| win rate by category | " + " | ".join(categories) + " |\n"
            table += "|" + "---|" * (len(categories) + 1) + "\n"
            for row in rows:
                if row["by_category"] is not None:
                    table += (
                        f"| {row['name']} | "
                        + " | ".join(_fmt(row["by_category"].get(c), 3) for c in categories)
                        + " |\n"
                    )
        return table

    def _notes(self) -> list[str]:
        assert self.judge is not None
        notes = [
            f"judge: `{self.judge.ref}`, each pair judged in both orders; baseline: {self.baseline}; "
            f"{len(self.items)} items; 95% CI: bootstrap over items; LC: length-controlled win rate "
            "(AlpacaEval 2.0's logistic fit, without its instruction-difficulty term); avg length in characters; "
            "Pareto: on the front of win rate against cost per item / mean latency"
        ]
        unparsed = sum(t.ties_unparseable for t in self.topologies)
        errors = sum(t.judge_errors for t in self.topologies)
        if unparsed or errors:
            notes.append(f"{unparsed} unparseable verdicts and {errors} failed judge calls counted as ties")
        return notes

    def to_svg(self) -> str:
        from .plot import render_svg

        if self.score == "exact":  # accuracy where the win rate goes; there is no baseline
            rows = [
                {**row, "win_rate": row["accuracy"] or 0.0, "win_rate_ci": None, "stderr": None}
                for row in self.summary["topologies"]
            ]
            return render_svg(rows, title=f"accuracy (exact match, {len(self.items)} items)", y_label="accuracy")
        assert self.judge is not None
        return render_svg(
            self.summary["topologies"],
            title=f"win rate vs {self.baseline} (judge {self.judge.ref}, {len(self.items)} items)",
        )

    def write(self, out: str | os.PathLike) -> Path:
        out = Path(out)
        for topo in self.topologies:
            (out / dir_name(topo.name)).mkdir(parents=True, exist_ok=True)
            write_file(
                out / dir_name(topo.name) / "model_outputs.json",
                json.dumps(self.model_outputs(topo.name), indent=2, ensure_ascii=False) + "\n",
            )
        write_file(out / "summary.json", json.dumps(self.summary, indent=2, ensure_ascii=False) + "\n")
        write_file(out / "summary.md", self.to_markdown())
        write_file(out / "summary.svg", self.to_svg())
        self.out = out
        return out

    def _repr_html_(self) -> str:
        """The table(s), the notes and the plot(s); a pure string (no IPython)."""
        return _html_tables(self.to_markdown()) + self.to_svg()

    def __str__(self) -> str:
        return self.to_markdown()


def _html_tables(markdown: str) -> str:
    """Our own markdown (pipe tables and plain paragraphs) as HTML."""
    out = []
    for block in markdown.strip().split("\n\n"):
        lines = block.strip().splitlines()
        if lines and lines[0].startswith("|"):
            cells = [[escape(c.strip()) for c in line.strip().strip("|").split("|")] for line in lines]
            head = "".join(f"<th>{c}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[2:])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            out.append("".join(f"<p>{escape(line)}</p>" for line in lines))
    return "".join(out)


def quality(row: dict[str, Any]) -> float | None:
    """A row's win rate for plots and fronts: the baseline sits at 0.5; an exact-match row's accuracy."""
    if "accuracy" in row:
        return row["accuracy"]
    return 0.5 if row["win_rate"] is None else row["win_rate"]


def cost_per_item(row: dict[str, Any]) -> float | None:
    return None if row["cost_usd"] is None or not row["n"] else row["cost_usd"] / row["n"]


def dir_name(name: str) -> str:
    """A topology's directory under --out: its name, with path separators replaced."""
    return name.replace("/", "_").replace("\\", "_").replace("\0", "_") or "_"


def _fmt(x: float | None, digits: int) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def write_file(path: Path, text: str) -> None:
    """Write beside, then rename: an interrupted write never leaves half a summary."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
