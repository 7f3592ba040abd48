"""`moa cache stats|clear`, through moa_dsl.cli.main."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

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


@pytest.mark.parametrize("action", ["stats", "clear"])
def test_a_regular_file_is_not_a_directory(tmp_path, capsys, action):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["cache", action, "--cache-dir", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert err == f"moa: error: the cache directory {blocker} is not a directory\n"


def test_a_directory_that_is_not_a_cache_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cache.db").write_bytes(b"not sqlite" * 100)
    assert main(["cache", "stats", "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"moa: error: cannot read the response cache at {tmp_path / 'c'} (") and "Traceback" not in err


def test_run_with_a_regular_file_as_cache_dir_says_so_in_one_line(tmp_path):
    """`moa run --cache-dir FILE`: the run goes on without the cache, and says why in one line."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    (tmp_path / "t.moa").write_text('node a = propose openai:"x"\n')
    done = subprocess.run([sys.executable, "-m", "moa_dsl", "run", str(tmp_path / "t.moa"), "q", "--dry-run",
                           "--cache-dir", str(blocker)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == (f"moa: warning: response cache at {blocker} unusable (it is not a directory); "
                           "continuing without it\n")


def _can_mount_read_only() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o ro tmpfs /mnt"],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount_read_only(), reason="needs root and mount namespaces (unshare -m)")
def test_stats_on_a_read_only_cache_reports_it(tmp_path):
    """Really read-only: root ignores chmod 555, so the cache is bind-mounted read-only in a private
    mount namespace (gone when the command exits). stats only reads: it reports, exit 0."""
    directory = tmp_path / "c"
    _fill(directory, 3)
    os.chmod(directory, 0o555)
    script = (f'mount --bind "{directory}" "{directory}" && mount -o remount,bind,ro "{directory}" && '
              f'! touch "{directory}/probe" 2>/dev/null && '
              f'"{sys.executable}" -m moa_dsl cache stats --cache-dir "{directory}"')
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "entries:   3" in done.stdout and f"directory: {directory}" in done.stdout
    assert done.stderr == "" and not (directory / "probe").exists()


def test_bad_action_is_a_usage_error(capsys):
    try:
        code = main(["cache", "explode"])
    except SystemExit as exc:
        code = exc.code
    assert code == 2 and "invalid choice" in capsys.readouterr().err
