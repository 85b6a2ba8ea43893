"""The core's torch work runs on one thread, whichever threads call it (see biometrics.torch_thread)."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import biometrics.torch_thread as torch_thread
from biometrics.torch_thread import background, on_torch_thread, on_torch_thread_now, run_on_torch_thread
from tests.conftest import REPO, TEST_OTHER
from tests.forked import in_forked_child


@on_torch_thread
def _where() -> int:
    return threading.get_ident()


@on_torch_thread
def _nested() -> tuple[int, int]:
    return threading.get_ident(), _where()  # a wrapped call made on the torch thread runs directly


@on_torch_thread
def _fails() -> None:
    raise ValueError("from the torch thread")


def test_calls_from_any_thread_run_on_one_other_thread():
    with ThreadPoolExecutor(4) as pool:
        callers = list(pool.map(lambda _: (threading.get_ident(), _where()), range(8)))
    callers.append((threading.get_ident(), _where()))
    torch_threads = {ran_on for _, ran_on in callers}
    assert len(torch_threads) == 1
    assert not torch_threads & {caller for caller, _ in callers}
    assert not on_torch_thread_now() and run_on_torch_thread(on_torch_thread_now)


def test_nested_calls_run_directly_and_errors_reach_the_caller():
    outer, inner = _nested()
    assert outer == inner == _where()
    with pytest.raises(ValueError, match="from the torch thread"):
        _fails()


def test_queued_calls_from_a_background_block_wait_for_the_others():
    started, release, order = threading.Event(), threading.Event(), []

    def busy() -> None:
        started.set()
        release.wait(30)

    def queued() -> int:
        return torch_thread._task_queue().qsize()

    def call(label: str, in_background: bool) -> None:
        if in_background:
            with background():
                run_on_torch_thread(order.append, label)
        else:
            run_on_torch_thread(order.append, label)

    threads = [threading.Thread(target=run_on_torch_thread, args=(busy,))]
    threads[0].start()
    assert started.wait(30)  # the torch thread is busy: what follows queues up
    for label, in_background in (("audit 1", True), ("audit 2", True), ("caller", False)):
        threads.append(threading.Thread(target=call, args=(label, in_background)))
        threads[-1].start()
        deadline = time.monotonic() + 30
        while queued() < len(threads) - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    release.set()
    for thread in threads:
        thread.join(30)
    assert order == ["caller", "audit 1", "audit 2"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_a_torch_thread_of_its_own():
    _where()  # the parent's threads exist before the fork
    run_on_torch_thread(torch_thread.run_in_turns, [lambda: 1, lambda: 2], 2)

    def calls_run() -> bool:  # the parent's threads are not in the child: a call must not wait for them forever
        ok = run_on_torch_thread(lambda: 7) == 7
        return ok and run_on_torch_thread(torch_thread.run_in_turns, [lambda: 1, lambda: 2], 2) == [1, 2]

    assert in_forked_child(calls_run) == "passed", "the forked child's call waited for the parent's torch threads"


def test_calls_still_run_while_the_interpreter_shuts_down():
    # A non-daemon thread (a server's running audit, say) still working after the main thread has ended.
    script = (
        "import threading, time\n"
        "from biometrics.torch_thread import run_on_torch_thread\n"
        "def late():\n"
        "    time.sleep(0.3)\n"
        "    print(run_on_torch_thread(lambda: 41 + 1))\n"
        "threading.Thread(target=late).start()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip() == "42", done.stderr


def test_resampling_vad_and_embedding_called_from_other_threads_run_on_the_torch_thread(embedder, monkeypatch):
    import biometrics.voice.model.ecapa as ecapa
    from biometrics.voice.audio import read_audio_file
    from biometrics.voice.audio.resample import resample

    resample_module = importlib.import_module("biometrics.voice.audio.resample")  # the package exports the function
    ran_on: dict[str, set[int]] = {}

    def spy(name, fn):
        def record(*args, **kwargs):
            ran_on.setdefault(name, set()).add(threading.get_ident())
            return fn(*args, **kwargs)

        return record

    monkeypatch.setattr(resample_module.taf, "resample", spy("resample", resample_module.taf.resample))
    monkeypatch.setattr(ecapa, "pack", spy("embedding", ecapa.pack))
    monkeypatch.setattr(embedder.vad, "_timestamps_from_probs", spy("vad", embedder.vad._timestamps_from_probs))
    speech = read_audio_file(TEST_OTHER / "1688" / "1688-142285-0005.flac")
    speech = dataclasses.replace(speech, samples=speech.samples[: 16_000 * 3])  # 3 s are enough

    def work(_):
        resample(speech.samples, 16_000, 8_000)
        embedder.analyse([speech])

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(work, range(3)))
    assert set(ran_on) == {"resample", "vad", "embedding"}
    assert {ident for idents in ran_on.values() for ident in idents} == {_where()}


def _thread_and_torch_threads() -> tuple[int, int]:
    import torch

    return threading.get_ident(), torch.get_num_threads()


def test_concurrent_calls_run_at_once_on_workers_sharing_the_torch_threads_cores():
    import torch

    threads = run_on_torch_thread(torch.get_num_threads)
    barrier = threading.Barrier(2, timeout=30)  # both calls must be running at the same time to pass it

    def call(label: str) -> tuple[str, int, int, bool]:
        barrier.wait()
        ident, count = _thread_and_torch_threads()
        return label, ident, count, _where() == ident  # a wrapped call on a worker runs directly

    results = run_on_torch_thread(torch_thread.run_in_turns, [lambda: call("first"), lambda: call("second")], 2)
    assert [label for label, *_ in results] == ["first", "second"]
    idents = {ident for _, ident, _, _ in results}
    assert len(idents) == 2 and _where() not in idents
    assert all(count == max(1, threads // 2) and runs_directly for _, _, count, runs_directly in results)
    # Neither the torch thread's count nor the one a new thread starts with has changed.
    assert run_on_torch_thread(torch.get_num_threads) == threads
    fresh = ThreadPoolExecutor(1)
    try:
        assert fresh.submit(torch.get_num_threads).result() == threads
    finally:
        fresh.shutdown()
    # The same workers serve the next call (either may take both of these quick calls).
    again = run_on_torch_thread(torch_thread.run_in_turns, [_thread_and_torch_threads] * 2, 2)
    assert {ident for ident, _ in again} <= idents


def test_a_failing_call_reaches_the_caller_after_the_running_ones_end_and_no_call_starts_after_it(monkeypatch):
    finished, slow_started, turns = [], threading.Event(), []

    class Recorded(torch_thread._Turns):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            turns.append(self)

    monkeypatch.setattr(torch_thread, "_Turns", Recorded)

    def slow() -> None:
        slow_started.set()
        deadline = time.monotonic() + 30
        while turns[-1]._error is None and time.monotonic() < deadline:  # until the failure is recorded
            time.sleep(0.01)
        finished.append("slow")

    def fails() -> None:
        assert slow_started.wait(30)
        raise ValueError("from a worker")

    with pytest.raises(ValueError, match="from a worker"):
        run_on_torch_thread(torch_thread.run_in_turns, [fails, slow, lambda: finished.append("third")], 2)
    assert finished == ["slow"]
    assert run_on_torch_thread(torch_thread.run_in_turns, [lambda: 1, lambda: 2], 2) == [1, 2]
    assert run_on_torch_thread(torch_thread.run_in_turns, [lambda: 3], 2) == [3]
    with pytest.raises(ValueError, match="at least one worker"):
        run_on_torch_thread(torch_thread.run_in_turns, [lambda: 3], 0)


def test_each_worker_takes_the_next_call_when_its_last_one_ends():
    """A slow call holds back only its own worker: in rounds of one call per worker this would never end."""
    fast_ones_done = threading.Event()
    ran_on: dict[str, int] = {}

    def slow() -> str:
        ran_on["slow"] = threading.get_ident()
        assert fast_ones_done.wait(30)
        return "slow"

    def fast(label: str) -> str:
        ran_on[label] = threading.get_ident()
        if label == "fast 3":
            fast_ones_done.set()
        return label

    calls = [slow] + [functools.partial(fast, f"fast {i}") for i in (1, 2, 3)]
    assert run_on_torch_thread(torch_thread.run_in_turns, calls, 2) == ["slow", "fast 1", "fast 2", "fast 3"]
    assert ran_on["fast 1"] == ran_on["fast 2"] == ran_on["fast 3"] != ran_on["slow"]


def _in_priority(priority: int, fn: Callable[..., Any], *args: object) -> Any:
    if priority == torch_thread.BACKGROUND:
        with background():
            return fn(*args)
    return fn(*args)


@pytest.mark.parametrize(
    ("workers", "turn", "caller", "cuts_the_turn"),
    [
        (1, torch_thread.FOREGROUND, torch_thread.FOREGROUND, True),
        (2, torch_thread.FOREGROUND, torch_thread.FOREGROUND, True),
        (2, torch_thread.BACKGROUND, torch_thread.FOREGROUND, True),  # a live call waiting on an audit
        (2, torch_thread.BACKGROUND, torch_thread.BACKGROUND, True),  # two audits share the thread
        (2, torch_thread.FOREGROUND, torch_thread.BACKGROUND, False),  # it would wait for the rest anyway
    ],
)
def test_a_waiting_torch_call_that_goes_first_stops_the_calls_not_yet_started(workers, turn, caller, cuts_the_turn):
    """The first calls (one per worker) always start; after them, none starts while such a call waits."""
    started, go = threading.Semaphore(0), threading.Event()
    order: list[str] = []

    def call(label: str) -> str:
        started.release()
        assert go.wait(30)
        order.append(label)
        return label

    calls = [functools.partial(call, f"pass {i}") for i in range(4)]
    with ThreadPoolExecutor(2) as pool:
        turn_done = pool.submit(_in_priority, turn, run_on_torch_thread, torch_thread.run_in_turns, calls, workers)
        for _ in range(workers):
            assert started.acquire(timeout=30)
        waiting = pool.submit(_in_priority, caller, run_on_torch_thread, lambda: order.append("caller") or "caller")
        deadline = time.monotonic() + 30
        while (tasks := torch_thread._tasks).empty() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert tasks.qsize() == 1
        go.set()
        ran = workers if cuts_the_turn else 4
        assert turn_done.result(30) == [f"pass {i}" for i in range(ran)]
        assert waiting.result(30) == "caller"
    assert order[-1] == "caller" and sorted(order[:-1]) == [f"pass {i}" for i in range(ran)]
    assert run_on_torch_thread(torch_thread.run_in_turns, calls[ran:], workers) == [f"pass {i}" for i in range(ran, 4)]


def test_calls_in_turns_are_made_from_the_torch_thread_only():
    with pytest.raises(RuntimeError, match="runs on the torch thread"):
        torch_thread.run_in_turns([lambda: 1, lambda: 2], 2)

    def from_a_worker() -> None:
        torch_thread.run_in_turns([lambda: 1, lambda: 2], 2)

    with pytest.raises(RuntimeError, match="runs on the torch thread"):
        run_on_torch_thread(torch_thread.run_in_turns, [from_a_worker, lambda: None], 2)
