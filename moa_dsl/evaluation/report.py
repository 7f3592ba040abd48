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
from .stats import percentile, win_rate

__all__ = ["EvalReport", "SUMMARY_KEYS", "TopologyReport"]

# --- the report ----------------------------------------------------------------------------------

SUMMARY_KEYS = ("name", "win_rate", "stderr", "n", "calls", "prompt_tokens", "completion_tokens",
                "cost_usd", "latency_mean_s", "latency_p95_s")


@dataclass
class TopologyReport:
    name: str
    runs: list[ItemRun]
    scores: list[float] | None = None          # None for the baseline
    ties_unparseable: int = 0
    judge_errors: int = 0
    priced: bool = True

    def row(self, items: Sequence[Item]) -> dict[str, Any]:
        rate, stderr = win_rate(self.scores) if self.scores is not None else (None, None)
        latencies = [r.latency_s for r in self.runs if r.status == "ok" and r.latency_s is not None]
        mean = sum(latencies) / len(latencies) if latencies else None
        cost = sum(r.cost_usd or 0.0 for r in self.runs) if self.priced else None
        return {
            "name": self.name, "win_rate": _r(rate), "stderr": _r(stderr), "n": len(self.runs),
            "calls": sum(r.calls for r in self.runs),
            "prompt_tokens": sum(r.prompt_tokens for r in self.runs),
            "completion_tokens": sum(r.completion_tokens for r in self.runs),
            "cost_usd": _r(cost, 8), "latency_mean_s": _r(mean), "latency_p95_s": _r(percentile(latencies, 95)),
            "ties_unparseable": self.ties_unparseable, "judge_errors": self.judge_errors,
            "failed_items": [{"index": items[i].index, "error": r.error}
                             for i, r in enumerate(self.runs) if r.status != "ok"],
        }


def _r(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(x, digits)


@dataclass
class EvalReport:
    """What `moa_dsl.evaluate` returns: `summary` is summary.json; it displays itself in a notebook."""

    baseline: str
    judge: JudgeModel
    items: list[Item]
    topologies: list[TopologyReport]
    judge_usage: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None

    @property
    def summary(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "judge": self.judge.ref,
                "topologies": [t.row(self.items) for t in self.topologies],
                "items": len(self.items), "judge_usage": self.judge_usage}

    def model_outputs(self, name: str) -> list[dict[str, str]]:
        """AlpacaEval's format; a failed item's output is "" (it is listed in summary.json)."""
        topo = next(t for t in self.topologies if t.name == name)
        return [{"instruction": item.instruction, "output": run.output or "", "generator": name,
                 "dataset": item.dataset} for item, run in zip(self.items, topo.runs)]

    def to_markdown(self) -> str:
        head = ("| topology | win rate | ± s.e. | n | calls | prompt tok | completion tok | cost USD "
                "| mean latency s | p95 latency s | failed |")
        lines = [head, "|" + "---|" * (head.count("|") - 1)]
        for row in self.summary["topologies"]:
            rate = "baseline" if row["win_rate"] is None else f"{row['win_rate']:.3f}"
            lines.append("| " + " | ".join([
                row["name"], rate, _fmt(row["stderr"], 3), str(row["n"]), str(row["calls"]),
                str(row["prompt_tokens"]), str(row["completion_tokens"]), _fmt(row["cost_usd"], 6),
                _fmt(row["latency_mean_s"], 2), _fmt(row["latency_p95_s"], 2), str(len(row["failed_items"])),
            ]) + " |")
        notes = [f"judge: `{self.judge.ref}`, each pair judged in both orders; baseline: {self.baseline}; "
                 f"{len(self.items)} items"]
        unparsed = sum(t.ties_unparseable for t in self.topologies)
        errors = sum(t.judge_errors for t in self.topologies)
        if unparsed or errors:
            notes.append(f"{unparsed} unparseable verdicts and {errors} failed judge calls counted as ties")
        return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"

    def to_svg(self) -> str:
        from .plot import render_svg

        return render_svg(self.summary["topologies"],
                          title=f"win rate vs {self.baseline} (judge {self.judge.ref}, {len(self.items)} items)")

    def write(self, out: str | os.PathLike) -> Path:
        out = Path(out)
        for topo in self.topologies:
            (out / topo.name).mkdir(parents=True, exist_ok=True)
            _write(out / topo.name / "model_outputs.json",
                   json.dumps(self.model_outputs(topo.name), indent=2, ensure_ascii=False) + "\n")
        _write(out / "summary.json", json.dumps(self.summary, indent=2, ensure_ascii=False) + "\n")
        _write(out / "summary.md", self.to_markdown())
        _write(out / "summary.svg", self.to_svg())
        self.out = out
        return out

    def _repr_html_(self) -> str:
        rows = "".join("<tr>" + "".join(f"<td>{escape(c.strip())}</td>" for c in line.strip("|").split("|"))
                       + "</tr>" for line in self.to_markdown().splitlines()[2:] if line.startswith("|"))
        head = "".join(f"<th>{escape(c.strip())}</th>" for c in self.to_markdown().splitlines()[0].strip("|").split("|"))
        return (f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
                f"<p>{escape(self.to_markdown().split(chr(10) * 2, 1)[1].strip())}</p>{self.to_svg()}")

    def __str__(self) -> str:
        return self.to_markdown()


def _fmt(x: float | None, digits: int) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _write(path: Path, text: str) -> None:
    """Write beside, then rename: an interrupted write never leaves half a summary."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
