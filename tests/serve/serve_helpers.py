"""A real `moa serve` subprocess for the tests, with its stderr collected line by line."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r" on (http://\S+/v1);")


class ServeProcess:
    """`python -m moa_dsl serve ARGS --port 0`; `.url` once it listens, `.lines` its stderr so far."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None, *, wait: bool = True):
        full_env = {**os.environ, **(env or {})}
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen([sys.executable, "-m", "moa_dsl", "serve", *args, "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                                     cwd=ROOT)
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = ""
        if wait:
            line = self.wait_for(lambda s: _LISTENING.search(s) is not None, timeout=60)
            match = _LISTENING.search(line)
            assert match, self.stderr
            self.url = match.group(1)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 30) -> str:
        """The first stderr line that satisfies `predicate`, waiting for it (the process must be alive)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            with self._lock:
                new, seen = self.lines[seen:], len(self.lines)
            for line in new:
                if predicate(line):
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                with self._lock:
                    rest = self.lines[seen:]
                for line in rest:
                    if predicate(line):
                        return line
                raise AssertionError(f"moa serve exited {self.proc.returncode}:\n{self.stderr}")
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting on moa serve's stderr:\n{self.stderr}")

    def log_lines(self, needle: str = "POST /v1/chat/completions") -> list[str]:
        with self._lock:
            return [ln for ln in self.lines if needle in ln]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)


def poll(predicate: Callable[[], bool], timeout: float = 30, every: float = 0.02) -> bool:
    """Wait until predicate() holds (True) or the timeout passes (False): an outcome, never a duration."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()
