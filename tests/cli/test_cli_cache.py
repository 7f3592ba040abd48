"""`moa cache stats|clear`, through moa_dsl.cli.main."""
from __future__ import annotations

from moa_dsl.runtime.cache import ResponseCache
from moa_dsl.cli import main

VALUE = {"text": "t", "prompt_tokens": 1, "completion_tokens": 1, "finish_reason": "stop"}


def _fill(directory, n):
    with ResponseCache(directory) as cache:
        for i in range(n):
            cache.set(f"k{i}", VALUE)


def test_stats_then_clear(tmp_path, capsys):
    directory = tmp_path / "c"
    _fill(directory, 4)
    assert main(["cache", "stats", "--cache-dir", str(directory)]) == 0
    out = capsys.readouterr().out
    assert f"directory: {directory}" in out and "entries:   4" in out and "KiB" in out
    assert main(["cache", "clear", "--cache-dir", str(directory)]) == 0
    assert "removed 4 cached responses" in capsys.readouterr().out
    main(["cache", "stats", "--cache-dir", str(directory)])
    assert "entries:   0" in capsys.readouterr().out


def test_default_directory_comes_from_the_environment(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MOA_CACHE_DIR", str(tmp_path / "env-cache"))
    _fill(tmp_path / "env-cache", 2)
    assert main(["cache", "stats"]) == 0
    assert "entries:   2" in capsys.readouterr().out


def test_a_missing_directory_is_empty_and_not_created(tmp_path, capsys):
    directory = tmp_path / "never"
    assert main(["cache", "stats", "--cache-dir", str(directory)]) == 0
    assert "entries:   0" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache-dir", str(directory)]) == 0
    assert "nothing to clear" in capsys.readouterr().out and not directory.exists()


def test_an_unusable_directory_is_a_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["cache", "stats", "--cache-dir", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moa: error:") and "cannot be used" in err and "Traceback" not in err


def test_bad_action_is_a_usage_error(capsys):
    try:
        code = main(["cache", "explode"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2 and "invalid choice" in capsys.readouterr().err
