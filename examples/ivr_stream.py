"""Streams a call to bioident in real time, as an IVR would, and prints the events.

    python examples/ivr_stream.py --key $IVR_KEY --reference ACC-1001 call.wav
    python examples/ivr_stream.py --key $IVR_KEY --reference ACC-1001 call.ulaw --raw mulaw
    python examples/ivr_stream.py --key $IVR_KEY --reference ACC-1001 call.wav --audiosocket 127.0.0.1:9092

A WAV/FLAC file is sent as an 8 kHz phone line carries it (mu-law over the WebSocket, signed linear over
AudioSocket); a raw file (``--raw mulaw|alaw|pcm16``, 8 kHz) is sent as it is. Over the WebSocket the events
come back on the socket; over AudioSocket (Asterisk's protocol, spoken here as Asterisk would, audio only)
they are read on a second WebSocket, /v1/voice/streams/{id}/events, as an IVR application would.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
from websockets.sync.client import connect

from biometrics.voice.audio import RawCodec, encode_raw, read_audio_file
from biometrics.voice.audio.resample import resample

FRAME_S = 0.02


def telephone_audio(path: Path, raw: str | None, codec: RawCodec) -> bytes:
    if raw is not None:
        return path.read_bytes()
    waveform = read_audio_file(path)
    return encode_raw(resample(waveform.samples, waveform.sample_rate, 8_000), 8_000, codec)


def paced(audio: bytes, frame_bytes: int, realtime: bool):  # noqa: ANN201 - a generator of frames
    start = time.monotonic()
    for n, i in enumerate(range(0, len(audio), frame_bytes)):
        if realtime:
            time.sleep(max(0.0, start + n * FRAME_S - time.monotonic()))
        yield audio[i : i + frame_bytes]


def over_websocket(base: str, key: str, stream_id: str, audio: bytes, frame_bytes: int, realtime: bool) -> None:
    url = base.replace("http", "ws", 1) + f"/v1/voice/streams/{stream_id}"
    with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:

        def read() -> None:
            for message in ws:
                print(message, flush=True)

        reader = threading.Thread(target=read)
        reader.start()
        try:
            for frame in paced(audio, frame_bytes, realtime):
                ws.send(frame)
            ws.send(json.dumps({"event": "stop"}))
        except Exception:  # noqa: BLE001 - the server closed the stream once it decided
            pass
        reader.join()
        print(f"closed: {ws.close_code} {ws.close_reason}")


def over_audiosocket(base: str, key: str, address: str, stream_id: str, audio: bytes, realtime: bool) -> None:
    """Plays the call as Asterisk would while the IVR watches its events on /v1/voice/streams/{id}/events."""
    host, _, port = address.rpartition(":")
    url = base.replace("http", "ws", 1) + f"/v1/voice/streams/{stream_id}/events"
    with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as watcher:
        print(watcher.recv(), flush=True)  # the stream as it stands: opened, pending

        def read() -> None:
            for message in watcher:
                print(message, flush=True)

        reader = threading.Thread(target=read)
        reader.start()
        with socket.create_connection((host, int(port))) as call:
            call.sendall(struct.pack(">BH", 0x01, 16) + uuid.UUID(stream_id).bytes)
            try:
                for frame in paced(audio, 320, realtime):
                    call.sendall(struct.pack(">BH", 0x10, len(frame)) + frame)
                call.sendall(struct.pack(">BH", 0x00, 0))
            except OSError:
                pass  # the server hung up: the stream is decided
        reader.join(timeout=30)
        print(f"closed: {watcher.close_code} {watcher.close_reason}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio", type=Path, help="WAV/FLAC file, or raw 8 kHz audio with --raw")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key", required=True, help="an API key of the ivr role")
    parser.add_argument("--reference", required=True, help="the customer the caller claims to be")
    parser.add_argument("--purpose", default="authentication")
    parser.add_argument("--raw", choices=[c.value for c in RawCodec], help="the file is raw 8 kHz audio of this codec")
    parser.add_argument("--audiosocket", metavar="HOST:PORT", help="send over AudioSocket instead of the WebSocket")
    parser.add_argument("--fast", action="store_true", help="send as fast as possible instead of in real time")
    args = parser.parse_args(argv)

    if args.audiosocket and args.raw not in (None, "pcm16"):
        parser.error("AudioSocket carries signed linear (pcm16) audio only")
    codec = RawCodec(args.raw) if args.raw else (RawCodec.PCM16 if args.audiosocket else RawCodec.MULAW)
    audio = telephone_audio(args.audio, args.raw, codec)
    http = httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {args.key}"}, timeout=30)
    opened = http.post(
        "/v1/voice/streams",
        json={"reference": args.reference, "purpose": args.purpose, "codec": codec.value, "sample_rate": 8000},
    )
    if opened.status_code != 201:
        print(f"could not open a stream: {opened.status_code} {opened.text}", file=sys.stderr)
        return 1
    stream = opened.json()
    print(json.dumps({"stream": stream["id"], "status": stream["status"], "decision": stream["decision"]}))
    if stream["status"] != "open":  # not enrolled, opted out: answered at once
        return 0
    if args.audiosocket:
        over_audiosocket(args.url, args.key, args.audiosocket, stream["id"], audio, not args.fast)
    else:
        frame_bytes = int(8000 * FRAME_S) * (2 if codec is RawCodec.PCM16 else 1)
        over_websocket(args.url, args.key, stream["id"], audio, frame_bytes, not args.fast)
    return 0


if __name__ == "__main__":
    sys.exit(main())
