"""Asterisk's AudioSocket: a plain TCP listener (``bioident serve --audiosocket HOST:PORT``).

The dialplan's ``AudioSocket(<stream id>,host:port)`` connects, sends the stream id as its UUID message,
then signed-linear 8 kHz audio (type 0x10, 320 bytes per 20 ms) until it hangs up (0x00). Each message is
a type byte, a big-endian 16-bit payload length and the payload. The stream must have been opened as
``pcm16`` at 8000 Hz. Its events are read over the WebSocket ``/v1/voice/streams/{id}/events`` as they
happen (see watch.py) or with ``GET /v1/voice/streams/{id}``; when it ends we send a hangup and close, and
its close reason is stored on the stream.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import uuid

from anyio import CancelScope, to_thread

from service.context import ServiceContext
from service.store.models import VoiceStream
from service.voice.streams.drive import END, Dropped, admit_stream, drive, release_stream
from service.voice.streams.run import StreamFault, StreamRun
from service.voice.streams.store import StreamUnavailable, find_stream, take_stream

log = logging.getLogger("bioident.audiosocket")

KIND_HANGUP, KIND_UUID, KIND_DTMF, KIND_AUDIO, KIND_ERROR = 0x00, 0x01, 0x03, 0x10, 0xFF
HANGUP = struct.pack(">BH", KIND_HANGUP, 0)
FIRST_MESSAGE_S = 3.0  # the UUID message must come this soon after connecting (Asterisk sends it at once)


async def start_audiosocket(ctx: ServiceContext, host: str, port: int) -> asyncio.Server:
    """Listens for AudioSocket connections on the running loop; the server's sockets tell the port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The stream id first: a connection that says nothing holds no stream slot (idle sockets had kept
        # WebSocket streams out).
        try:
            first = await asyncio.wait_for(_read_message(reader), FIRST_MESSAGE_S)
        except (TimeoutError, Dropped):
            writer.close()
            return
        if not admit_stream(ctx):  # too many streams here: hang up before taking one (it stays open)
            writer.write(HANGUP)
            writer.close()
            return
        try:
            await _serve_connection(ctx, first, reader, writer)
        except Exception:  # noqa: BLE001 - one connection's fault never stops the listener
            log.exception("audiosocket connection failed")
        finally:
            release_stream(ctx)
            writer.close()

    return await asyncio.start_server(serve, host, port)


async def _read_message(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    try:
        kind, length = struct.unpack(">BH", await reader.readexactly(3))
        return kind, await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        raise Dropped from None


async def _serve_connection(
    ctx: ServiceContext, first: tuple[int, bytes], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    kind, payload = first
    if kind != KIND_UUID or len(payload) != 16:
        writer.write(HANGUP)
        return
    stream_id = str(uuid.UUID(bytes=payload))
    try:
        with CancelScope(shield=True):  # a stream taken is a stream run to its end: see drive()
            row = await to_thread.run_sync(_take, ctx, stream_id)
            run = await to_thread.run_sync(StreamRun, ctx, row)
    except StreamUnavailable as exc:
        log.info("audiosocket stream refused: %s", exc.reason)
        writer.write(HANGUP)
        return
    max_frame = ctx.settings.stream_max_frame_bytes

    async def receive() -> object:
        while True:
            kind, payload = await _read_message(reader)
            if kind == KIND_AUDIO:
                if len(payload) > max_frame:
                    raise StreamFault("oversize_frame", 1009)
                return payload
            if kind == KIND_HANGUP:
                return END
            if kind == KIND_ERROR:
                raise Dropped
            if kind != KIND_DTMF:
                raise StreamFault("malformed_frame", 1007)

    async def send(event: dict) -> None:
        return None  # AudioSocket carries audio only: events are read over HTTP

    await drive(run, receive, send, ctx.settings.stream_lifetime_s, 8000 * 2)
    try:
        writer.write(HANGUP)
        await writer.drain()
    except ConnectionError:
        pass


def _take(ctx: ServiceContext, stream_id: str) -> VoiceStream:
    with ctx.db.session() as session:
        row = find_stream(session, stream_id)
        if row is not None and row.status == "open" and (row.codec != "pcm16" or row.sample_rate != 8000):
            raise StreamUnavailable("wrong_codec")
        row = take_stream(session, stream_id, "audiosocket")
        session.expunge(row)
        return row
