"""A long-lived daemon thread that runs the calls handed to it one after another.

For native libraries whose state is costly to build and not meant to be shared between threads (NBIS:
an extractor with NFIQ 2's models takes about 270 ms to build). Kept per request thread instead, that
state is built again on every thread a server hands a request to, and a server's worker threads come and
go (AnyIO keeps the one used last and ends the others after 10 s idle), so now and then a payment would
wait for a build.

A daemon thread with a queue of its own rather than a ``ThreadPoolExecutor``, for the reasons
``biometrics.torch_thread`` gives (an executor refuses work once the interpreter starts shutting down);
a forked child starts a thread of its own on first use.
"""

from __future__ import annotations

import os
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

R = TypeVar("R")

_Task = tuple[Future[Any], Callable[[], Any]]
_STOP: Callable[[], Any] = lambda: None  # noqa: E731 - queued by ``close``: the thread ends on reaching it


def settle(future: Future[R], call: Callable[[], R]) -> None:
    """Runs ``call`` into ``future`` (its result, or the exception it raised), unless it was cancelled."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = call()
    except BaseException as exc:  # noqa: BLE001 - handed to the caller, who re-raises it
        future.set_exception(exc)
    else:
        future.set_result(result)


class SerialThread:
    """Runs submitted calls in order on one thread of its own, started on first use."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._tasks: queue.SimpleQueue[_Task] | None = None
        self._thread: threading.Thread | None = None
        _live.add(self)

    def _forget_parents_thread(self) -> None:
        self._lock, self._tasks, self._thread = threading.Lock(), None, None

    def _serve(self, tasks: queue.SimpleQueue[_Task]) -> None:
        while True:
            future, call = tasks.get()
            if call is _STOP:
                future.set_result(None)
                return  # the thread ends, and whatever it held in thread-local storage with it
            settle(future, call)
            del future, call  # hold no task's arguments or result while idle

    def close(self) -> Future[None]:
        """Ends the thread once the calls queued so far have run; the future is done then.

        For a thread stuck in a call: it ends if the call ever returns. A later ``submit`` starts a new thread.
        """
        with self._lock:
            tasks, self._tasks, self._thread = self._tasks, None, None
        ended: Future[None] = Future()
        if tasks is None:
            ended.set_result(None)
        else:
            tasks.put((ended, _STOP))
        return ended

    def submit(self, call: Callable[[], R]) -> Future[R]:
        """``call`` queued to run on the thread; its result (or exception) comes through the future."""
        future: Future[R] = Future()
        if threading.current_thread() is self._thread:  # a call made on the thread itself runs at once
            settle(future, call)
            return future
        with self._lock:
            if self._tasks is None:  # published once its thread runs: a failed start leaves nothing to wait on
                tasks: queue.SimpleQueue[_Task] = queue.SimpleQueue()
                thread = threading.Thread(target=self._serve, args=(tasks,), name=self.name, daemon=True)
                thread.start()
                self._tasks, self._thread = tasks, thread
            self._tasks.put((future, call))
        return future

    def run(self, call: Callable[[], R]) -> R:
        """``call`` run on the thread; waits for it and returns its result or raises its exception."""
        return self.submit(call).result()


# One fork hook for all of them (a hook cannot be removed once registered: one per instance would keep every
# SerialThread ever made, such as the NBIS threads abandoned on a stall, alive for good).
_live: weakref.WeakSet[SerialThread] = weakref.WeakSet()


def _forget_parents_threads() -> None:
    for serial in list(_live):
        serial._forget_parents_thread()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parents_threads)
