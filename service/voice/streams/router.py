"""Streams over HTTP and WebSocket (ivr role): open one, read its latest event, feed it audio."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid

from anyio import CancelScope, create_task_group, to_thread
from fastapi import APIRouter, Depends, Path, WebSocket
from sqlalchemy.orm import Session
from starlette.websockets import WebSocketDisconnect, WebSocketState

from service.auth import Principal, Role, authenticate
from service.context import ServiceContext
from service.deps import get_ctx, require
from service.errors import NotFound, RateLimited, ServiceError
from service.limits import count_request
from service.problems import problem_responses
from service.store.models import VoiceStream
from service.voice.streams.drive import END, Dropped, admit_stream, close_code, drive, release_stream
from service.voice.streams.opening import open_stream
from service.voice.streams.run import StreamFault, StreamRun
from service.voice.streams.schemas import StreamEventOut, StreamOpenIn, StreamOut
from service.voice.streams.store import StreamUnavailable, find_stream, stream_status, take_stream
from service.voice.streams.watch import TooManyWatchers, watch

log = logging.getLogger("bioident.streams")
router = APIRouter(prefix="/v1/voice", tags=["voice streams"])
ivr = require(Role.IVR)
UNAVAILABLE_CODES = {"unknown_stream": 4404, "stream_expired": 4410, "stream_used": 4409, "wrong_codec": 4415}
WATCHER_CLOSE_CODES = {**UNAVAILABLE_CODES, "too_many_watchers": 1013, "internal_error": 1011}
STOP_EVENTS = {"stop", "end", "close"}


def stream_out(row: VoiceStream) -> StreamOut:
    return StreamOut(
        id=row.id,
        status=stream_status(row),
        decision=row.decision,
        codec=row.codec,
        sample_rate=row.sample_rate,
        created_at=row.created_at,
        connect_by=row.connect_by,
        latest_event=StreamEventOut.model_validate(row.latest_event or {"event": "opened", "decision": "pending"}),
    )


@router.post("/streams", status_code=201, response_model=StreamOut, responses=problem_responses(423))
def open_voice_stream(
    body: StreamOpenIn, ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(ivr)
) -> StreamOut:
    """Opens a verification stream for a claimed customer. Connect within ``BIOIDENT_STREAM_CONNECT_S``:
    a WebSocket to ``/v1/voice/streams/{id}``, or Asterisk's ``AudioSocket({id}, host:port)``."""
    row = open_stream(ctx, actor, body.reference, body.purpose, str(body.codec), body.sample_rate)
    return stream_out(row)


@router.get("/streams/{stream_id}", response_model=StreamOut)
def get_voice_stream(
    stream_id: uuid.UUID = Path(), ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(ivr)
) -> StreamOut:
    with ctx.db.session() as session:
        row = find_stream(session, str(stream_id), actor.tenant_id)
        if row is None:
            raise NotFound("no such stream")
        return stream_out(row)


@router.websocket("/streams/{stream_id}")
async def stream_socket(websocket: WebSocket, stream_id: str) -> None:
    """Binary frames of the stream's audio in, JSON events out; a text ``{"event": "stop"}`` ends it.
    FreeSWITCH's mod_audio_fork works as is: its metadata text frame is ignored, its L16 frames are audio."""
    ctx: ServiceContext = websocket.app.state.ctx
    await websocket.accept()
    if not admit_stream(ctx):
        await _close(websocket, 1013, {"reason": "too_many_streams"})
        return
    try:
        await _serve_stream(ctx, websocket, stream_id)
    finally:
        release_stream(ctx)


async def _serve_stream(ctx: ServiceContext, websocket: WebSocket, stream_id: str) -> None:
    try:
        with CancelScope(shield=True):  # a stream taken is a stream run to its end: see drive()
            row = await to_thread.run_sync(_take, ctx, stream_id, _authorization(websocket))
            run = await to_thread.run_sync(StreamRun, ctx, row)
    except StreamUnavailable as exc:
        await _close(websocket, UNAVAILABLE_CODES.get(exc.reason, 4403), {"reason": exc.reason})
        return
    connected = {"event": "connected", "stream_id": row.id, "decision": "pending", "net_speech_s": 0.0, "heard_s": 0.0}
    max_frame = ctx.settings.stream_max_frame_bytes

    async def receive() -> object:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise Dropped
        if message.get("bytes") is not None:
            if len(message["bytes"]) > max_frame:
                raise StreamFault("oversize_frame", 1009)
            return message["bytes"]
        try:
            event = json.loads(message.get("text") or "")
        except ValueError:
            raise StreamFault("malformed_frame", 1007) from None
        if isinstance(event, dict) and str(event.get("event", "")).lower() in STOP_EVENTS:
            return END
        return b""  # metadata (mod_audio_fork's first frame) and other events: nothing to do

    sent: list[dict] = []

    async def send(event: dict) -> None:
        await websocket.send_text(json.dumps(event))
        sent[:] = [event]  # the last event sent

    bytes_per_s = row.sample_rate * (2 if row.codec == "pcm16" else 1)
    final = await drive(run, receive, send, ctx.settings.stream_lifetime_s, bytes_per_s, connected)
    if sent != [final]:  # ended by the peer's fault: the final event is not sent yet
        with contextlib.suppress(Exception):  # the peer may be gone
            await send(final)
    reason = {"reason": final.get("close_reason"), "decision": final.get("decision")}
    await _close(websocket, close_code(final), reason)


@router.websocket("/streams/{stream_id}/events")
async def watch_stream(websocket: WebSocket, stream_id: str) -> None:
    """The stream's events as they happen, for a stream fed by another connection (Asterisk's AudioSocket, which
    carries audio only, or a WebSocket on another replica): the latest event at once, then each new one; closes
    1000 when the stream is decided or ended. Needs an ``ivr`` API key of the stream's tenant
    (``Authorization: Bearer``): here, unlike the audio's transports, the stream id is not the credential."""
    ctx: ServiceContext = websocket.app.state.ctx
    await websocket.accept()
    try:
        canonical = str(uuid.UUID(stream_id))
        tenant_id = await to_thread.run_sync(_watcher_tenant, ctx, _authorization(websocket))
    except ValueError:
        await _close(websocket, 4404, {"reason": "unknown_stream"})
        return
    except StreamUnavailable as exc:
        await _close(websocket, 4429 if exc.reason == "rate_limited" else 4403, {"reason": exc.reason})
        return

    async def send(event: dict) -> None:
        await websocket.send_text(json.dumps(event))

    ended: dict = {}

    async def watching(scope: CancelScope) -> None:
        try:
            limit_s = ctx.settings.stream_connect_s + ctx.settings.stream_lifetime_s
            ended.update(await watch(ctx, canonical, tenant_id, send, limit_s))
        except TooManyWatchers:
            ended.update(reason="too_many_watchers", decision=None)
        except WebSocketDisconnect:  # the watcher went away while we sent
            pass
        except Exception as exc:  # noqa: BLE001 - the database failed: say so, never with its message (data)
            log.error("stream watcher failed: %s", type(exc).__name__)
            ended.update(reason="internal_error", decision=None)
        scope.cancel()

    async def until_gone(scope: CancelScope) -> None:  # a watcher who leaves is let go at once
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass
        scope.cancel()

    async with create_task_group() as group:
        group.start_soon(watching, group.cancel_scope)
        group.start_soon(until_gone, group.cancel_scope)
    if ended:
        await _close(websocket, WATCHER_CLOSE_CODES.get(ended["reason"], 1000), ended)


def _authorization(websocket: WebSocket) -> str | None:
    """The one Authorization header; several are refused, as over HTTP (a proxy may read another of them)."""
    sent = websocket.headers.getlist("authorization")
    if len(sent) > 1:
        raise StreamUnavailable("forbidden")
    return sent[0] if sent else None


def _ivr_principal(session: Session, authorization: str) -> Principal:
    """The client an ``Authorization`` header names, when it is an ``ivr`` client; else ``forbidden``."""
    try:
        principal = authenticate(session, authorization)
    except ServiceError:
        raise StreamUnavailable("forbidden") from None
    if principal.role != Role.IVR:
        raise StreamUnavailable("forbidden")
    return principal


def _watcher_tenant(ctx: ServiceContext, authorization: str | None) -> str:
    if authorization is None:
        raise StreamUnavailable("unauthenticated")
    with ctx.db.session() as session:
        principal = _ivr_principal(session, authorization)
        try:  # a watcher costs a client a request, as an HTTP call does
            count_request(session, principal.client_id, ctx.settings.rate_limit_per_minute)
        except RateLimited:
            raise StreamUnavailable("rate_limited") from None
        return principal.tenant_id


def _take(ctx: ServiceContext, stream_id: str, authorization: str | None) -> VoiceStream:
    """The stream, taken for this WebSocket. The stream id (random, single use, short-lived) is the credential,
    as for AudioSocket; a client that also sends its API key must be of the stream's tenant."""
    try:
        canonical = str(uuid.UUID(stream_id))
    except ValueError:
        raise StreamUnavailable("unknown_stream") from None
    with ctx.db.session() as session:
        if authorization is not None:
            principal = _ivr_principal(session, authorization)
            row = find_stream(session, canonical)
            if row is not None and row.tenant_id != principal.tenant_id:
                raise StreamUnavailable("unknown_stream")  # another tenant's stream is simply not found
        row = take_stream(session, canonical, "websocket")
        session.expunge(row)
        return row


async def _close(websocket: WebSocket, code: int, reason: dict) -> None:
    if WebSocketState.DISCONNECTED in (websocket.client_state, websocket.application_state):
        return
    with contextlib.suppress(Exception):  # the peer may be gone already
        await websocket.close(code, reason=json.dumps(reason, separators=(",", ":"))[:123])
