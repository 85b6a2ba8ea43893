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

Calls made inside ``background()`` (a server's accuracy audit) wait while calls made outside one
(live verifications) are queued, so a caller on the line waits for at most the one background task
already running.

The torch thread can also hand a list of independent calls (forward passes of different packs of
utterances) to ``run_in_turns``: worker threads, each running its torch operations on its share of the
torch thread's cores (on 2 cores, one each), take the calls in order, each the next one as soon as its
last has ended, and the torch thread waits for them. Nothing then runs a parallel region across cores:
no core waits at a barrier for the other, and one pass's Python and memory-bound steps overlap the
other's matrix products. On a 2-core host shared with other tenants, two single-threaded passes at once
took 3-5% less time than the same passes one after another on both cores (median of 6 interleaved
rounds: 4.6%), and 14-40% less in the rounds where the host was busiest. Taking calls in turns rather
than in rounds of one call per worker matters as much: two passes of equal width run at once ended up to
30% apart on this shared host, and a round waits for its slower pass (measured: 2.5-4.6% of both cores'
time idle in rounds, with the rounds' passes within 2% of each other in width). Once a torch call is
waiting that would go first (a live call waiting on a batch, or a call of the same priority), the
workers take no more calls, so it waits for the passes already running at most (or for the first
ones of a turn that was starting as it came). The workers are torch threads too: calls made on them
run directly.

The thread is a daemon with a queue of its own (not a ``ThreadPoolExecutor``, which refuses new work
once the interpreter starts shutting down, while non-daemon threads such as a server's running audit
are still being waited for). A forked child starts a thread of its own on first use.
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

import torch

from biometrics.serial_thread import settle

P = ParamSpec("P")
R = TypeVar("R")

FOREGROUND, BACKGROUND = 0, 1
# (priority, arrival, future, call): the lower priority first, then first come, first served.
_Task = tuple[int, int, Future[Any], Callable[[], Any]]
_Job = tuple[Future[Any], Callable[[], Any]]  # a worker's (see run_in_turns)

_here = threading.local()
_lock = threading.Lock()
_tasks: queue.PriorityQueue[_Task] | None = None
_arrivals = itertools.count()
_priority: ContextVar[int] = ContextVar("bioident_torch_priority", default=FOREGROUND)
# Worker queues of run_in_turns, by how many run at once; only the torch thread touches this.
_workers: dict[int, list[queue.SimpleQueue[_Job]]] = {}


@contextmanager
def background() -> Iterator[None]:
    """Within this block, this thread's torch calls wait while calls made outside one are queued."""
    token = _priority.set(BACKGROUND)
    try:
        yield
    finally:
        _priority.reset(token)


def _serve(tasks: queue.PriorityQueue[_Task]) -> None:
    _here.is_torch_thread = True
    while True:
        priority, _, future, call = tasks.get()
        _here.priority = priority  # run_in_turns yields only to tasks that would go first
        settle(future, call)
        del future, call  # drop references to the task's arguments and result while idle


def _task_queue() -> queue.PriorityQueue[_Task]:
    global _tasks
    with _lock:
        if _tasks is None:  # published once its thread runs: a failed start leaves nothing to wait on
            tasks: queue.PriorityQueue[_Task] = queue.PriorityQueue()
            threading.Thread(target=_serve, args=(tasks,), name="bioident-torch", daemon=True).start()
            _tasks = tasks
        return _tasks


def _forget_parents_thread() -> None:
    global _lock, _tasks
    _lock, _tasks = threading.Lock(), None  # the parent's threads do not exist in a forked child
    _workers.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parents_thread)


def on_torch_thread_now() -> bool:
    """Whether the calling thread is the torch thread."""
    return getattr(_here, "is_torch_thread", False)


def run_on_torch_thread(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args, **kwargs)`` on the torch thread; its result, or its exception, comes back to the caller."""
    if on_torch_thread_now():
        return fn(*args, **kwargs)
    future: Future[R] = Future()
    _task_queue().put((_priority.get(), next(_arrivals), future, functools.partial(fn, *args, **kwargs)))
    return future.result()


def run_in_turns(calls: Sequence[Callable[[], R]], workers: int) -> list[R]:
    """Runs ``calls`` in order on up to ``workers`` workers, each with its share of the torch thread's cores.

    Call it on the torch thread. Each worker takes the next call as soon as its last one has ended, so a
    slow call holds back only its own worker. The first ``workers`` calls always start; after them, no
    worker takes another call once a torch call is waiting that would go before the rest if they were
    resubmitted now (a foreground call, or a call of the same priority; a background call does not stop
    a foreground turn). Returns the results of the calls that ran, which are the first ones: the caller
    resubmits the rest. With one worker (or one call), the calls run on the torch thread itself, on all
    its cores. The first exception among the calls is raised once every running call has ended; no call
    starts after it.
    """
    if not on_torch_thread_now() or getattr(_here, "is_worker", False):
        raise RuntimeError("run_in_turns runs on the torch thread")
    if workers < 1:
        raise ValueError("run_in_turns needs at least one worker")
    turns = _Turns(calls, min(workers, len(calls)), getattr(_here, "priority", FOREGROUND))
    if turns.workers <= 1:
        turns.take_until_done()
    else:
        futures: list[Future[None]] = []
        for worker in _workers_for(workers)[: turns.workers]:  # one pool per size: a pool holds threads
            futures.append(Future())
            worker.put((futures[-1], turns.take_until_done))
        concurrent.futures.wait(futures)
    return turns.results()


def _waiting_task_goes_first(priority: int) -> bool:
    """Whether a queued task would run before a task of ``priority`` queued now."""
    tasks = _tasks
    if tasks is None:
        return False
    with tasks.mutex:  # the queue's own lock; its heap's first entry is the next task
        return bool(tasks.queue) and tasks.queue[0][0] <= priority


class _Turns:
    """The calls of one ``run_in_turns``, handed out one at a time to whichever worker asks."""

    def __init__(self, calls: Sequence[Callable[[], Any]], workers: int, priority: int) -> None:
        self.calls, self.workers, self.priority = calls, workers, priority
        self._lock = threading.Lock()
        self._taken = 0
        self._results: dict[int, Any] = {}
        self._error: BaseException | None = None

    def _take(self) -> int | None:
        with self._lock:
            if self._error is not None or self._taken == len(self.calls):
                return None
            if self._taken >= self.workers and _waiting_task_goes_first(self.priority):
                return None
            self._taken += 1
            return self._taken - 1

    def take_until_done(self) -> None:
        while (i := self._take()) is not None:
            try:
                result = self.calls[i]()
            except BaseException as exc:  # noqa: BLE001 - raised by results(), on the torch thread
                with self._lock:
                    self._error = self._error or exc
                return
            self._results[i] = result

    def results(self) -> list[Any]:
        if self._error is not None:
            raise self._error
        return [self._results[i] for i in range(self._taken)]


def _workers_for(count: int) -> list[queue.SimpleQueue[_Job]]:
    if count not in _workers:
        threads = torch.get_num_threads()
        ready = threading.Barrier(count + 1)
        queues: list[queue.SimpleQueue[_Job]] = []
        for i in range(count):
            queues.append(queue.SimpleQueue())
            args = (queues[-1], max(1, threads // count), ready)
            threading.Thread(target=_work, args=args, name=f"bioident-torch-{i + 1}", daemon=True).start()
        ready.wait()
        # torch.set_num_threads also sets the count that threads starting later begin with: give it back.
        torch.set_num_threads(threads)
        _workers[count] = queues
    return _workers[count]


def _work(tasks: queue.SimpleQueue[_Job], threads: int, ready: threading.Barrier) -> None:
    _here.is_torch_thread = _here.is_worker = True
    # ATen sets a thread's own count from the process-wide one at its first parallel operation, and
    # would then undo the one set below: have it do that first.
    torch.get_num_threads()
    torch.set_num_threads(threads)
    ready.wait()
    while True:
        future, call = tasks.get()
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(call())
            except BaseException as exc:  # noqa: BLE001 - handed to the torch thread, which re-raises it
                future.set_exception(exc)
        del future, call


def on_torch_thread(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator: every call of ``fn`` runs on the torch thread."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return run_on_torch_thread(fn, *args, **kwargs)

    return wrapper
