"""One llama.cpp server (xllamacpp) in a process of its own; `local.py` starts it as a script:

    python child.py '{"model": "/path/m.gguf", "n_parallel": 4, "n_ctx": 16384, "threads": 2, "verbosity": 0}'

Why a process: loading weights holds the GIL for seconds (a notebook's live panel and Ctrl-C would
freeze meanwhile), and a crash inside llama.cpp would take the caller -- a notebook kernel, a long
batch -- down with it. Here it takes only this process; the parent sees the exit and says so.

Protocol: one line on the original stdout, `moa-local-server: {"url": ...}` or `... {"error": ...}`,
then that stream is closed. Everything else the process prints (llama.cpp's log when verbose) goes to
stderr. The server lives until stdin closes: the parent closes it to stop the server, and it closes by
itself when the parent dies, so no server outlives its user.

Standalone on purpose (only the standard library and xllamacpp): it starts without importing moa_dsl.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

MARK = "moa-local-server: "


def main(argv: list[str]) -> int:
    config = json.loads(argv[0])
    handshake = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # any other stdout output (llama.cpp's) goes to stderr
    sys.stdout = sys.stderr
    try:
        server = _start(config)
    except Exception as exc:  # the parent turns this into a LocalModelError
        handshake.write(MARK + json.dumps({"error": str(exc) or type(exc).__name__}) + "\n")
        handshake.close()
        return 1
    handshake.write(MARK + json.dumps({"url": str(server.listening_address)}) + "\n")
    handshake.close()
    try:
        sys.stdin.read()  # until the parent closes it, or exits
    except KeyboardInterrupt:
        pass
    # Leave without tearing the server down in Python: a live xllamacpp server can hang interpreter
    # teardown, and the kernel releases its memory and sockets at once.
    os._exit(0)


def _start(config: dict) -> Any:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = config["model"]
    params.hostnames = ["127.0.0.1"]
    params.port = 0  # a free port, read back from listening_address
    params.n_parallel = config["n_parallel"]
    params.n_ctx = config["n_ctx"]
    params.kv_unified = True
    params.cpuparams.n_threads = config["threads"]
    params.cpuparams_batch.n_threads = config["threads"]
    params.verbosity = config["verbosity"]  # 0: llama.cpp prints nothing at all
    return xllamacpp.Server(params)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
