"""`--score exact`: `moa eval` and `moa run --input` compare each answer's extracted number with the
item's `answer`, against FakeLLMServer with scripted answers; no judge is ever called."""
from __future__ import annotations

import json
import re

import pytest

from moa_dsl import evaluate
from moa_dsl.cli import main
from moa_dsl.errors import ConfigError
from moa_dsl.evaluation.exact import DEFAULT_EXTRACT, exact_match, normalize_exact

from conftest import KEY

# question -> the right answer; the models' scripted answers below get some of them wrong.
ITEMS = [
    {"instruction": "What is 2 + 3?", "answer": "5"},
    {"instruction": "What is 600 * 2?", "answer": "1200"},
    {"instruction": "What is 7 - 9?", "answer": -2},  # a JSON number is fine too
    {"instruction": "What is 10 / 4?", "answer": "2.5"},
]
# model -> question -> its answer
SCRIPT = {
    "good": {"2 + 3": "2 plus 3 is 5.\n#### 5", "600 * 2": "#### 1,200.", "7 - 9": "####  -2",
             "10 / 4": "#### 2.5"},
    "sloppy": {"2 + 3": "The answer is 5", "600 * 2": "#### 1200", "7 - 9": "#### 2", "10 / 4": "#### 2.50"},
}
CALLS: list[str] = []


def responder(model, body):
    CALLS.append(model)
    question = body["messages"][-1]["content"]
    for key, answer in SCRIPT[model].items():
        if key in question:
            return answer
    raise AssertionError(f"unscripted question {question!r} for {model}")


@pytest.fixture
def files(make_server, tmp_path, monkeypatch, cache_dir):
    CALLS.clear()
    server = make_server(responder=responder, api_key=KEY)
    monkeypatch.setenv("MOA_TEST_KEY", KEY)
    monkeypatch.setenv("MOA_CACHE_DIR", str(cache_dir))
    provider = f'provider fake = openai {{ base_url = "{server.url}", api_key = env("MOA_TEST_KEY") }}\n'
    for name in ("good", "sloppy"):
        (tmp_path / f"{name}.moa").write_text(provider + f'node a = propose fake:"{name}"\n')
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    return tmp_path / "good.moa", tmp_path / "sloppy.moa", data


def test_normalisation_is_the_votes_plus_thousands_separators() -> None:
    pattern = re.compile(DEFAULT_EXTRACT)
    assert normalize_exact(" 1,200. ") == "1200" == normalize_exact("1200")
    assert normalize_exact("Paris.") == "paris"
    assert normalize_exact("1,2") == "1,2"  # not a grouped number
    assert exact_match("so #### 12,345.5;", "12345.5", pattern) == (True, "12,345.5")
    assert exact_match("no marker 5", "5", pattern) == (False, None)
    assert exact_match(None, "5", pattern) == (False, None)
    assert exact_match("answer: B", "b", re.compile(r"answer:\s*(\w)")) == (True, "B")


def test_eval_reports_accuracy_without_a_judge(files, tmp_path, capsys) -> None:
    good, sloppy, data = files
    out = tmp_path / "out"
    code = main(["eval", str(good), str(sloppy), "--input", str(data), "--score", "exact", "--out", str(out),
                 "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["score"] == "exact" and summary["judge"] is None and summary["items"] == 4
    rows = {row["name"]: row for row in summary["topologies"]}
    assert (rows["good"]["accuracy"], rows["good"]["n_correct"]) == (1.0, 4)
    # "The answer is 5" has no ####: wrong; "#### 2" for -2: wrong; 2.50 is not 2.5 (exact match).
    assert (rows["sloppy"]["accuracy"], rows["sloppy"]["n_correct"]) == (0.25, 1)
    assert rows["good"]["win_rate"] is None and rows["good"]["calls"] == 4
    assert sorted(CALLS) == ["good"] * 4 + ["sloppy"] * 4  # no judge call
    table = capsys.readouterr().out
    assert "| topology | accuracy | correct |" in table and "| sloppy | 0.250 | 1 | 4 |" in table
    outputs = json.loads((out / "sloppy" / "model_outputs.json").read_text())
    assert [(o["extracted"], o["correct"]) for o in outputs] == [(None, False), ("1200", True), ("2", False),
                                                                   ("2.50", False)]
    assert "accuracy" in (out / "summary.svg").read_text()


def test_eval_with_a_custom_extract(files, tmp_path) -> None:
    good, sloppy, data = files
    report = evaluate([sloppy], data, score="exact", extract=r"(-?[0-9][0-9,.]*)\s*$", cache_dir=tmp_path / "c")
    # the last number of each answer: 5, 1200, 2 (wrong), 2.50 (wrong)
    assert [row["n_correct"] for row in report.summary["topologies"]] == [2]


def test_an_item_without_answer_is_an_error_with_file_and_line(files, tmp_path, capsys) -> None:
    good, _, data = files
    data.write_text(json.dumps(ITEMS[0]) + "\n\n" + json.dumps({"instruction": "What is 1 + 1?"}) + "\n")
    assert main(["eval", str(good), "--input", str(data), "--score", "exact", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{data}:3: no 'answer' field" in err and "Traceback" not in err
    assert main(["run", str(good), "--input", str(data), "--score", "exact"]) == 2
    assert f"{data}:3: no 'answer' field" in capsys.readouterr().err
    assert CALLS == []  # refused before any call
    with pytest.raises(ConfigError, match="item 1: no 'answer'"):
        evaluate([good], [{"instruction": "q", "answer": "1"}, {"instruction": "r"}], score="exact")


def test_bad_extract_and_misplaced_flags_are_usage_errors(files, tmp_path, capsys) -> None:
    good, _, data = files
    assert main(["eval", str(good), "--input", str(data), "--score", "exact", "--extract", "(", "--out",
                 str(tmp_path / "o")]) == 2
    assert "not a valid regular expression" in capsys.readouterr().err
    assert main(["eval", str(good), "--input", str(data), "--extract", "x"]) == 2
    assert "--extract goes with --score exact" in capsys.readouterr().err
    assert main(["run", str(good), "what?", "--score", "exact"]) == 2
    assert "--score goes with --input" in capsys.readouterr().err
    assert CALLS == []


def test_run_input_writes_correct_and_extracted_and_prints_accuracy(files, tmp_path, capsys) -> None:
    _, sloppy, data = files
    out = tmp_path / "rows.jsonl"
    assert main(["run", str(sloppy), "--input", str(data), "--score", "exact", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["extracted"], r["correct"]) for r in rows] == [(None, False), ("1200", True), ("2", False),
                                                               ("2.50", False)]
    assert rows[2]["answer"] == -2  # the input object is kept as it was
    assert "accuracy 0.250 (1/4 correct, exact match)" in capsys.readouterr().err


def test_the_shipped_arithmetic_dataset_runs_by_name(make_server, tmp_path, monkeypatch, cache_dir, capsys) -> None:
    server = make_server(responder=lambda model, body: "I think it is #### 32", api_key=KEY)
    monkeypatch.setenv("MOA_TEST_KEY", KEY)
    path = tmp_path / "t.moa"
    path.write_text(f'provider fake = openai {{ base_url = "{server.url}", api_key = env("MOA_TEST_KEY") }}\n'
                    'node a = propose fake:"m"\n')
    assert main(["eval", str(path), "--input", "arithmetic", "--limit", "3", "--score", "exact", "--out",
                 str(tmp_path / "o"), "--cache-dir", str(cache_dir), "--quiet"]) == 0
    row = json.loads((tmp_path / "o" / "summary.json").read_text())["topologies"][0]
    assert (row["n"], row["n_correct"]) == (3, 1)  # only the first problem's answer is 32
