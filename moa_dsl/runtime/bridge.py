"""The one bridge from synchronous code to the runtime's coroutines.

In a script, `asyncio.run`. Inside a running loop (a Jupyter kernel) that fails, so the coroutine
runs on a fresh loop in a worker thread while this thread waits; KeyboardInterrupt (Ctrl-C, a kernel
interrupt) cancels the task on its own loop, which stops the calls in flight, and is re-raised once
they have unwound. `on_idle` is called about every `tick` seconds while waiting (the notebook panel
uses it to fold events on the kernel's thread).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Coroutine, TypeVar

__all__ = ["run_sync"]

T = TypeVar("T")


def run_sync(
    make_coro: Callable[[], Coroutine[Any, Any, T]],
    *,
    on_idle: Callable[[], None] | None = None,
    tick: float = 0.1,
    thread: bool | None = None,
) -> T:
    """Run the coroutine `make_coro()` to its end from synchronous code and return its result.

    `thread`: force (True) or forbid (False) the worker thread; by default it is used only when this
    thread already runs a loop, or when `on_idle` needs this thread free while the run goes on.
    """
    if thread is None:
        thread = on_idle is not None or _loop_running()
    if not thread:
        return asyncio.run(make_coro())
    return _run_in_thread(make_coro, on_idle, tick)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _run_in_thread(
    make_coro: Callable[[], Coroutine[Any, Any, T]], on_idle: Callable[[], None] | None, tick: float
) -> T:
    loop = asyncio.new_event_loop()
    task = loop.create_task(make_coro())  # created before the thread starts, so it can always be cancelled
    outcome: dict[str, Any] = {}
    finished = threading.Event()  # not Thread.join: an interrupted join can wrongly report the thread done

    def worker() -> None:
        asyncio.set_event_loop(loop)
        try:
            outcome["result"] = loop.run_until_complete(task)
        except BaseException as exc:  # handed to the waiting thread
            outcome["error"] = exc
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
            finally:
                finished.set()

    runner = threading.Thread(target=worker, name="moa-run", daemon=True)
    try:
        # Inside the try: the worker may start the calls before start() returns here, and a Ctrl-C
        # in that window must cancel them too, not leave them running on an orphaned loop.
        runner.start()
        while not finished.wait(tick):
            if on_idle is not None:
                on_idle()
    except KeyboardInterrupt:
        loop.call_soon_threadsafe(task.cancel)
        waited = 0
        while not finished.wait(tick):
            waited += 1
            if runner.ident is None and waited * tick >= 1.0:
                break  # interrupted before the thread was created: nothing ran, nothing to wait for
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
