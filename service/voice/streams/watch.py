"""Watching a stream's events from another connection: how the IVR reads the events of a call whose audio
comes over Asterisk's AudioSocket (which carries audio only), or of a stream fed on another replica.

A watcher sends the stream's latest event as it stands, then the latest again each time it changes, and
closes when the stream is decided or ended (1000, with the close reason and decision) or when its lifetime is
over. It reads only the latest event, so a pending event written and replaced between two looks can be
missed; the final one never is. Events come from the database, so a watcher on any replica sees the same
stream; on the replica that feeds the stream it is woken as each event is written, and every replica also
looks every ``POLL_S``. Watchers count against the client's rate limit and a per-process cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from anyio import to_thread

from service.context import ServiceContext
from service.voice.streams.store import find_stream, stream_status

POLL_S = 0.2  # how often a watcher looks at the database when no one in this process wakes it


class TooManyWatchers(Exception):
    pass


class StreamNotices:
    """Wakes this process's watchers of a stream when its transport has written an event."""

    def __init__(self, max_watchers: int) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._max = max_watchers
        self._count = 0

    @contextlib.contextmanager
    def listening(self, stream_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever the stream has news; ``TooManyWatchers`` past the process's limit."""
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            if self._count >= self._max:
                raise TooManyWatchers
            self._count += 1
            self._waiting.setdefault(stream_id, set()).add(waiter)
        try:
            yield waiter[1]
        finally:
            with self._lock:
                self._count -= 1
                waiters = self._waiting.get(stream_id, set())
                waiters.discard(waiter)
                if not waiters:
                    self._waiting.pop(stream_id, None)

    def notify(self, stream_id: str) -> None:
        """Safe from any thread."""
        with self._lock:
            waiters = list(self._waiting.get(stream_id, ()))
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: its watcher is gone
                loop.call_soon_threadsafe(event.set)


def stream_notices(ctx: ServiceContext) -> StreamNotices:
    return ctx.cached("voice.stream_notices", lambda: StreamNotices(ctx.settings.stream_max_open))


@dataclass(frozen=True)
class Seen:
    status: str
    event: dict
    close_reason: str | None
    decision: str | None


def _look(ctx: ServiceContext, stream_id: str, tenant_id: str) -> Seen | None:
    with ctx.db.session() as session:
        row = find_stream(session, stream_id, tenant_id)
        if row is None:
            return None
        event = row.latest_event or {"event": "opened", "stream_id": row.id, "decision": "pending"}
        return Seen(stream_status(row), event, row.close_reason, row.decision)


async def watch(
    ctx: ServiceContext, stream_id: str, tenant_id: str, send: Callable[[dict], Awaitable[None]], limit_s: float
) -> dict:
    """Sends the stream's events until it ends; returns the close reason (``{"reason", "decision"}``).
    ``unknown_stream`` when it is not this tenant's (or is gone)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    last: dict | None = None
    with stream_notices(ctx).listening(stream_id) as woken:
        while True:
            woken.clear()  # before looking: news written while we look wakes the next wait at once
            seen = await to_thread.run_sync(_look, ctx, stream_id, tenant_id)
            if seen is None:
                return {"reason": "unknown_stream", "decision": None}
            if seen.event != last:
                await send(seen.event)
                last = seen.event
            if seen.status in ("decided", "ended", "expired"):
                reason = "stream_expired" if seen.status == "expired" else seen.close_reason
                return {"reason": reason, "decision": seen.decision}
            remaining = deadline - loop.time()
            if remaining <= 0:
                return {"reason": "lifetime", "decision": None}
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), timeout=min(POLL_S, remaining))
