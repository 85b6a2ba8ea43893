"""What both transports share: read frames without ever waiting on inference, feed them to the stream's
run in a worker thread, send its events, and end with a close code and a reason.

Close codes (the WebSocket's; AudioSocket records the same reason on the stream): 1000 decided or ended
normally (the reason says why: decided, speech_limit, ended_by_caller, lifetime, buffer_full, no_speech),
1007 malformed_frame, 1009 oversize_frame, 1011 internal_error, and 4000 + an HTTP status for a stream that
cannot be used or a claim refused meanwhile: 4404 unknown_stream, 4410 stream_expired, 4409 stream_used,
4415 wrong_codec, 4403 forbidden or consent_required, 4423 locked_out; 1013 too_many_streams (the
process holds ``BIOIDENT_STREAM_MAX_OPEN``; the stream stays open for another try). A dropped connection is decided on
what was heard (reason dropped).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable

from anyio import CancelScope, get_cancelled_exc_class, to_thread
from sqlalchemy.exc import SQLAlchemyError

from biometrics.errors import BiometricsError
from service.context import ServiceContext
from service.vault.errors import VaultError
from service.voice.streams.run import StreamFault, StreamRun
from service.voice.streams.watch import stream_notices

log = logging.getLogger("bioident.streams")

END = object()  # the caller ended the stream (a stop event, AudioSocket's hangup)
FLUSH_S = 0.1  # audio gathered before it is handed to the worker thread


_slots = threading.Lock()


def admit_stream(ctx: ServiceContext) -> bool:
    """One more stream connected in this process, unless ``BIOIDENT_STREAM_MAX_OPEN`` already are."""
    with _slots:
        if ctx.streams_connected >= ctx.settings.stream_max_open:
            return False
        ctx.streams_connected += 1
        return True


def release_stream(ctx: ServiceContext) -> None:
    with _slots:
        ctx.streams_connected -= 1


class Dropped(Exception):
    """The connection went away without ending the stream."""


REFUSAL_CODES = {"consent_required": 4403, "forbidden": 4403, "locked_out": 4423, "not_found": 4404}


PROTOCOL_FAULT_CODES = {"malformed_frame": 1007, "oversize_frame": 1009}


def close_code(event: dict) -> int:
    reason = event.get("close_reason", "")
    if reason in PROTOCOL_FAULT_CODES:  # decided on what was heard or not, the peer broke the protocol
        return PROTOCOL_FAULT_CODES[reason]
    if event.get("decision") is not None:
        return 1000
    refusal = event.get("refusal")
    if refusal is not None:
        return REFUSAL_CODES.get(refusal, 4400)
    return 1011 if reason == "internal_error" else 1000


async def drive(
    run: StreamRun,
    receive: Callable[[], Awaitable[object]],
    send: Callable[[dict], Awaitable[None]],
    lifetime_s: float,
    bytes_per_s: int,
    greeting: dict | None = None,
) -> dict:
    """Runs the stream to its end; returns its final event (with ``close_reason``). ``greeting`` is sent first."""
    metrics, started = run.ctx.metrics, time.perf_counter()
    notices = stream_notices(run.ctx)

    async def sending(event: dict) -> None:  # every event sent has been written: wake the stream's watchers
        try:
            await send(event)
        finally:
            notices.notify(run.stream_id)

    if metrics is not None:
        metrics.streams_open.labels(transport=run.transport).inc()
    try:
        return await _drive(run, receive, sending, lifetime_s, bytes_per_s, greeting)
    finally:
        notices.notify(run.stream_id)  # the stream's end is written
        if metrics is not None:
            metrics.streams_open.labels(transport=run.transport).dec()
            if run.transport == "audiosocket":  # WebSockets are timed by the app's middleware
                metrics.latency.labels(route="audiosocket", transport="audiosocket").observe(
                    time.perf_counter() - started
                )


async def _drive(
    run: StreamRun,
    receive: Callable[[], Awaitable[object]],
    send: Callable[[dict], Awaitable[None]],
    lifetime_s: float,
    bytes_per_s: int,
    greeting: dict | None,
) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + lifetime_s
    pending = bytearray()
    flush_at = max(1, int(bytes_per_s * FLUSH_S))
    reason, fault = None, None
    try:
        if greeting is not None:
            await _send(send, greeting)
        while not run.decided:
            try:
                frame = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - loop.time()))
            except TimeoutError:
                reason = "lifetime"
                break
            if frame is END:
                reason = "ended_by_caller"
                break
            if len(frame) % run.audio.sample_width:  # type: ignore[arg-type]  # receive gives bytes or END
                raise StreamFault("malformed_frame", 1007)  # a partial sample: the peer's framing is broken
            pending += frame  # type: ignore[operator]
            if len(pending) >= flush_at:
                audio, pending = bytes(pending), bytearray()
                for event in await to_thread.run_sync(run.feed, audio):
                    await _send(send, event)
    except Dropped:
        reason = "dropped"
    except StreamFault as exc:
        fault = exc.reason  # decided below, where a failure of that decision ends the stream too
    except (BiometricsError, VaultError, SQLAlchemyError) as exc:  # not the caller's fault: end it, never half done
        log.error("stream failed: %s", type(exc).__name__)  # no message: it could carry request data
        with CancelScope(shield=True):
            return await _end_after_fault(run)
    except get_cancelled_exc_class():
        # The connection's task is cancelled (the server shutting down, the peer gone mid-read): the stream is
        # still decided on what was heard, so no stream stays half done.
        with CancelScope(shield=True):
            await to_thread.run_sync(run.finish, "dropped")
        raise
    with CancelScope(shield=True):  # however the connection ended, the stream ends in the database
        try:
            if fault is not None:
                return await to_thread.run_sync(run.fault, fault)
            return await _conclude(run, pending, reason, send)
        except (BiometricsError, VaultError, SQLAlchemyError) as exc:
            log.error("stream failed: %s", type(exc).__name__)
            return await _end_after_fault(run)


async def _conclude(
    run: StreamRun, pending: bytearray, reason: str | None, send: Callable[[dict], Awaitable[None]]
) -> dict:
    if run.decided:
        return run.final_event  # type: ignore[return-value]  # decided in the loop, already sent
    if pending:
        try:
            events = await to_thread.run_sync(run.feed, bytes(pending))
        except StreamFault as fault:
            return await to_thread.run_sync(run.fault, fault.reason)
        if run.decided:
            await _send(send, events[-1])
            return events[-1]
    final = await to_thread.run_sync(run.finish, reason or "ended_by_caller")
    if reason != "dropped":
        await _send(send, final)
    return final


async def _end_after_fault(run: StreamRun) -> dict:
    try:
        return await to_thread.run_sync(run.end, "internal_error")
    except Exception as exc:  # noqa: BLE001 - the database itself may be what failed
        log.error("stream could not be ended: %s", type(exc).__name__)
        return {"event": "ended", "stream_id": run.stream_id, "decision": None, "close_reason": "internal_error"}


async def _send(send: Callable[[dict], Awaitable[None]], event: dict) -> None:
    try:
        await send(event)
    except Exception:  # noqa: BLE001 - a peer gone while we answer: the stream is decided all the same
        log.info("stream peer gone before an event could be sent")
