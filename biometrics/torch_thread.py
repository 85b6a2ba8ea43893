"""One long-lived thread for all of the core's torch work, whichever threads call it.

PyTorch's CPU kernels parallelise with OpenMP (libgomp in the PyTorch wheels). libgomp gives every
thread that starts a parallel region a team of worker threads of its own, and once the teams
together outnumber the cores it stops spinning between regions, so each parallel operation waits for
its workers to be woken. A threaded server whose request threads take turns running the models ends
up there. Measured on 2 cores, with a second thread holding a team: a 64k-element add went from 6
to 65 us, Silero VAD on a 5 s call from 25 to 180 ms, and the ECAPA forward pass from 47 to 65 ms.

The core's functions that run torch (model loading, resampling, VAD of one recording, one forward pass
of packed utterances) are wrapped with ``on_torch_thread``: they run on this one thread, in the order
they were called, and their callers wait for the result. Each is a short task, so a long job (an
audit embedding thousands of files) and a caller waiting on the line take turns task by task. Calls
made on that thread run directly. A process that also runs torch code of its own on other threads (a
benchmark timing SpeechBrain itself, say) should run it through ``run_on_torch_thread`` as well.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_here = threading.local()
_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_executor_pid = 0


def _mark_torch_thread() -> None:
    _here.is_torch_thread = True


def _torch_executor() -> ThreadPoolExecutor:
    global _executor, _executor_pid
    with _lock:
        if _executor is None or _executor_pid != os.getpid():  # a forked child does not inherit the thread
            _executor = ThreadPoolExecutor(1, thread_name_prefix="bioident-torch", initializer=_mark_torch_thread)
            _executor_pid = os.getpid()
        return _executor


def on_torch_thread_now() -> bool:
    """Whether the calling thread is the torch thread."""
    return getattr(_here, "is_torch_thread", False)


def run_on_torch_thread(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args, **kwargs)`` on the torch thread; its result, or its exception, comes back to the caller."""
    if on_torch_thread_now():
        return fn(*args, **kwargs)
    return _torch_executor().submit(fn, *args, **kwargs).result()


def on_torch_thread(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator: every call of ``fn`` runs on the torch thread."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return run_on_torch_thread(fn, *args, **kwargs)

    return wrapper
