"""Building blocks for the stream tests: a caller's real speech as telephone audio, frames of it, a stream
opened over HTTP, and a call played over the WebSocket until the server closes it."""

from __future__ import annotations

import json
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from starlette.websockets import WebSocketDisconnect

from biometrics.voice.audio import RawCodec, encode_raw, read_audio_file
from biometrics.voice.audio.resample import resample


def telephone_call(path: Path, codec: RawCodec = RawCodec.MULAW) -> bytes:
    """A recording as an 8 kHz phone line carries it (G.711, or signed linear for AudioSocket)."""
    speech = read_audio_file(path)
    return encode_raw(resample(speech.samples, 16_000, 8_000), 8_000, codec)


def frames(audio: bytes, size: int) -> list[bytes]:
    return [audio[i : i + size] for i in range(0, len(audio), size)]


def open_stream(api, ivr_key: str, reference: str = "ACC-1001", codec: str = "mulaw", rate: int = 8000):
    return api.http.post(
        "/v1/voice/streams",
        json={"reference": reference, "purpose": "authentication", "codec": codec, "sample_rate": rate},
        headers=api.headers(ivr_key),
    )


@dataclass
class Played:
    events: list[dict] = field(default_factory=list)
    close_code: int | None = None
    close_reason: dict = field(default_factory=dict)

    @property
    def final(self) -> dict:
        return self.events[-1]


def play(api, stream_id: str, chunks: list[bytes], *, stop: bool = True, text: list[str] = ()) -> Played:
    """Sends ``text`` frames, then the audio frames, then (with ``stop``) a stop event; reads to the close."""
    played = Played()
    with api.http.websocket_connect(f"/v1/voice/streams/{stream_id}") as ws:
        for t in text:
            ws.send_text(t)
        for chunk in chunks:
            ws.send_bytes(chunk)
        if stop:
            ws.send_text(json.dumps({"event": "stop"}))
        read_to_close(ws, played)
    return played


def read_to_close(ws, played: Played) -> Played:
    while True:
        try:
            played.events.append(json.loads(ws.receive_text()))
        except WebSocketDisconnect as closed:
            played.close_code = closed.code
            played.close_reason = json.loads(closed.reason) if closed.reason else {}
            return played


def audiosocket_message(kind: int, payload: bytes = b"") -> bytes:
    return struct.pack(">BH", kind, len(payload)) + payload


def audiosocket_uuid(stream_id: str) -> bytes:
    return audiosocket_message(0x01, uuid.UUID(stream_id).bytes)
