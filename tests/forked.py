"""Runs a check in a forked child: a forked process holds none of its parent's threads, only their state."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable


def in_forked_child(check: Callable[[], bool], timeout_s: float = 30.0) -> str:
    """``"passed"`` or ``"failed"`` (``check``'s answer in the child), or ``"hung"`` (killed after ``timeout_s``)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if check() else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout_s
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return "hung"
    return "passed" if os.waitstatus_to_exitcode(done[1]) == 0 else "failed"
