"""Load: many IVR callers at once against a real ``bioident serve``, and real-time streams.

Run from the repository root::

    .venv/bin/python -m benchmarks.load [--callers 20] [--duration 30] [--max-calls 400] [--streams 20]
                                        [--stream-spreads 0,4] [--skip-load] [--overload-callers 0]
                                        [--queue-max 32] [--out PATH] [--data DIR]

Starts ``bioident serve`` on a free loopback port with a fresh data directory (SQLite), enrols
``--speakers`` (5) LibriSpeech test-other speakers, then:

1. Offline: embeds the same 4-second 8 kHz mu-law calls in this process in batches (the model's best
   throughput on this machine, measured in the same run, just before the load).
2. Load: ``--callers`` callers, each on its own connection, verify 4-second calls back to back for
   ``--duration`` seconds or ``--max-calls`` calls in all; reports calls/s, p50/p95/p99 and every status
   seen, and the server's throughput as a fraction of the offline one.
3. Overload (``--overload-callers`` N > 0): the same with N callers, to show that past the queue
   (``--queue-max``) the server answers 503 with Retry-After, never a timeout or another 5xx.
4. Streams: ``--streams`` callers each play a call in real time (20 ms frames) over the WebSocket; for each
   the time from sending the audio the decision was made on (the decision's ``heard_s``) to receiving the
   decision event. Once per ``--stream-spreads`` value: 0 starts every stream at the same instant (the
   worst case: every first score falls due at once), 4 spreads the starts over one call's length, as
   callers arriving in a queue would; the table says how many streams were open at once at most.

It asserts nothing on time. Results go to a table on stdout and to JSON (default
``benchmarks/results/load.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common import RESULTS_DIR, TEST_OTHER, write_results
from benchmarks.host import busy_cpu_s
from benchmarks.verify_latency import PURPOSE, Server, enrol_speakers, pick_speakers, set_up_bank

DEFAULT_OUT = RESULTS_DIR / "load.json"
CALL_S = 4.0
RATE = 8_000
FRAME_BYTES = 160  # 20 ms of mu-law


def four_second_calls(speakers: dict[str, list[Path]]) -> list[dict]:
    """A 4 s mu-law crop of each held-out utterance, claimed as its own speaker (genuine)."""
    from biometrics.voice.audio import RawCodec, encode_raw, read_audio_file
    from biometrics.voice.audio.resample import resample

    calls = []
    for reference, files in speakers.items():
        for path in files[3:]:
            samples = read_audio_file(path).samples
            if len(samples) < 16_000 * CALL_S:
                continue
            start = (len(samples) - int(16_000 * CALL_S)) // 2
            narrow = resample(samples[start : start + int(16_000 * CALL_S)], 16_000, RATE)
            calls.append({"reference": reference, "audio": encode_raw(narrow, RATE, RawCodec.MULAW)})
    return calls


def offline_throughput(calls: list[dict], batch: int) -> float:
    """Calls per second when this process analyses them in batches of ``batch`` (VAD and embedding)."""
    from biometrics.voice.audio import decode_audio
    from biometrics.voice.embedding import load_voice_embedder

    embedder = load_voice_embedder()
    waveforms = [decode_audio(c["audio"], raw_codec="mulaw", declared_rate=RATE) for c in calls]
    embedder.analyse(waveforms[:2])  # warm up
    start = time.perf_counter()
    for i in range(0, len(waveforms), batch):
        embedder.analyse(waveforms[i : i + batch])
    return len(waveforms) / (time.perf_counter() - start)


def verify(http: httpx.Client, key: str, call: dict) -> dict:
    start = time.perf_counter()
    try:
        response = http.post(
            "/v1/voice/verify",
            data={"reference": call["reference"], "purpose": PURPOSE, "codec": "mulaw", "sample_rate": str(RATE)},
            files=[("audio", ("call.ulaw", call["audio"], "audio/basic"))],
            headers={"Authorization": f"Bearer {key}"},
            timeout=60.0,
        )
        status, retry_after = response.status_code, response.headers.get("Retry-After")
    except httpx.TimeoutException:
        status, retry_after = "timeout", None
    return {"latency_s": time.perf_counter() - start, "status": status, "retry_after": retry_after}


def load_level(url: str, key: str, calls: list[dict], callers: int, duration_s: float, max_calls: int) -> dict:
    results: list[dict] = []
    lock = threading.Lock()
    taken = [0]
    timing = {}  # set when every caller is warmed up: the timed phase's start and deadline

    def begin() -> None:
        timing.update(start=time.perf_counter(), deadline=time.monotonic() + duration_s, cpu=busy_cpu_s())

    ready = threading.Barrier(callers, action=begin)

    def caller(offset: int) -> None:
        with httpx.Client(base_url=url) as http:
            verify(http, key, calls[offset % len(calls)])  # open the connection and warm the path first
            ready.wait()
            i = offset
            while time.monotonic() < timing["deadline"]:
                with lock:
                    if taken[0] >= max_calls:
                        return
                    taken[0] += 1
                result = verify(http, key, calls[i % len(calls)])
                i += callers
                with lock:
                    results.append(result)
                if result["status"] == 503:
                    time.sleep(min(1.0, float(result["retry_after"] or 1)))  # as a polite client backs off

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    start, cpu = timing["start"], timing["cpu"]
    wall = time.perf_counter() - start
    ok = np.array([r["latency_s"] for r in results if r["status"] == 200])
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    pct = (lambda q: float(np.percentile(ok, q) * 1000)) if len(ok) else (lambda q: float("nan"))
    return {
        "callers": callers,
        "calls": len(results),
        "statuses": statuses,
        "errors": sum(1 for r in results if r["status"] != 200),
        "wall_s": wall,
        "calls_per_s": len(ok) / wall,
        "latency_ms": {"p50": pct(50), "p95": pct(95), "p99": pct(99)},
        "machine_busy_cores": (busy_cpu_s() - cpu) / wall,
    }


def stream_level(url: str, key: str, calls: list[dict], streams: int, spread_s: float = 0.0) -> dict:
    """``streams`` callers, the i-th starting ``i * spread_s / streams`` seconds after the first (0: all at once)."""
    from websockets.sync.client import connect

    lags: list[float] = []
    spans: list[tuple[float, float]] = []
    errors: list[str] = []
    outcomes: dict[str, int] = {}
    lock = threading.Lock()

    def play(call: dict, delay_s: float) -> None:
        time.sleep(delay_s)
        with httpx.Client(base_url=url) as http:
            opened = http.post(
                "/v1/voice/streams",
                json={"reference": call["reference"], "purpose": PURPOSE, "codec": "mulaw", "sample_rate": RATE},
                headers={"Authorization": f"Bearer {key}"},
            ).json()
        sent_at: list[float] = []
        decision: dict = {}
        with connect(f"{url.replace('http', 'ws', 1)}/v1/voice/streams/{opened['id']}") as ws:

            def read() -> None:
                try:
                    for message in ws:
                        event = json.loads(message)
                        if event.get("final"):
                            decision.update(event, received=time.perf_counter())
                except Exception as exc:  # noqa: BLE001 - counted as a stream without a decision
                    decision.setdefault("error", f"{type(exc).__name__}: {exc}"[:200])

            reader = threading.Thread(target=read)
            reader.start()
            start = time.perf_counter()
            audio = call["audio"] * 3  # up to 12 s: a decision comes long before
            try:
                for n in range(0, len(audio), FRAME_BYTES):
                    time.sleep(max(0.0, start + len(sent_at) * 0.02 - time.perf_counter()))
                    ws.send(audio[n : n + FRAME_BYTES])
                    sent_at.append(time.perf_counter())
                    if decision:
                        break
                ws.send(json.dumps({"event": "stop"}))
            except Exception:  # noqa: BLE001 - closed by the server once decided
                pass
            reader.join(timeout=60)
        ended = time.perf_counter()
        with lock:
            spans.append((start, ended))
            if "error" in decision:
                errors.append(decision["error"])
            outcomes[decision.get("decision", "none")] = outcomes.get(decision.get("decision", "none"), 0) + 1
            if decision.get("heard_s") and decision.get("close_reason") != "ended_by_caller":
                frame = min(len(sent_at) - 1, int(round(decision["heard_s"] / 0.02)) - 1)
                lags.append(decision["received"] - sent_at[frame])

    threads = [
        threading.Thread(target=play, args=(calls[i % len(calls)], i * spread_s / streams)) for i in range(streams)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lag = np.array(lags) if lags else np.array([float("nan")])
    return {
        "streams": streams,
        "starts_spread_s": spread_s,
        "most_open_at_once": max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans) if spans else 0,
        "decisions": outcomes,
        "errors": sorted(set(errors)),
        "decision_lag_ms": {
            "p50": float(np.percentile(lag, 50) * 1000),
            "p95": float(np.percentile(lag, 95) * 1000),
            "max": float(lag.max() * 1000),
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--callers", type=int, default=20)
    parser.add_argument("--speakers", type=int, default=5, help="speakers to enrol (default 5)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per load level (default 30)")
    parser.add_argument("--max-calls", type=int, default=400, help="calls per load level at most (default 400)")
    parser.add_argument("--streams", type=int, default=20, help="real-time streams at once (0: none)")
    parser.add_argument(
        "--stream-spreads",
        default="0,4",
        help="comma-separated seconds over which the streams' starts are spread, one stream level each "
        "(default 0,4: all at once, then arriving over one call's length)",
    )
    parser.add_argument("--skip-load", action="store_true", help="streams only: no offline, load or overload level")
    parser.add_argument("--overload-callers", type=int, default=0, help="a level past the queue (0: none)")
    parser.add_argument("--queue-max", type=int, default=32, help="the server's BIOIDENT_EMBED_QUEUE_MAX")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--data", type=Path, default=TEST_OTHER)
    args = parser.parse_args(argv)
    if min(args.callers, args.max_calls, args.speakers) < 1 or args.duration <= 0 or args.streams < 0:
        parser.error("--callers, --speakers, --max-calls and --duration must be positive")
    try:
        spreads = [float(x) for x in args.stream_spreads.split(",") if x.strip()]
    except ValueError:
        parser.error("--stream-spreads takes seconds separated by commas, e.g. 0,4")
    if any(x < 0 for x in spreads):
        parser.error("--stream-spreads must not be negative")

    speakers = pick_speakers(args.data, args.speakers)
    calls = four_second_calls(speakers)
    results: dict = {"call_s": CALL_S, "queue_max": args.queue_max}
    with tempfile.TemporaryDirectory(prefix="bioident-load-") as tmp:
        previous = os.environ.get("BIOIDENT_EMBED_QUEUE_MAX")
        os.environ["BIOIDENT_EMBED_QUEUE_MAX"] = str(args.queue_max)  # the server's environment is this one's
        try:
            server = Server(Path(tmp), None)
        finally:
            if previous is None:
                del os.environ["BIOIDENT_EMBED_QUEUE_MAX"]
            else:
                os.environ["BIOIDENT_EMBED_QUEUE_MAX"] = previous
        try:
            key = set_up_bank(httpx.Client(base_url=server.url, timeout=120), server.admin_key())
            enrol_speakers(httpx.Client(base_url=server.url, timeout=120), key, speakers)
            if not args.skip_load:
                results["offline_calls_per_s"] = offline_throughput(calls, batch=args.callers)
                level = load_level(server.url, key["ivr"], calls, args.callers, args.duration, args.max_calls)
                results["load"] = level
                level["fraction_of_offline"] = level["calls_per_s"] / results["offline_calls_per_s"]
            if args.overload_callers and not args.skip_load:
                results["overload"] = load_level(
                    server.url, key["ivr"], calls, args.overload_callers, args.duration, args.max_calls
                )
            if args.streams:
                results["streaming"] = [
                    stream_level(server.url, key["ivr"], calls, args.streams, spread) for spread in spreads
                ]
        finally:
            server.stop()
    print_table(results)
    write_results(args.out, results)
    return results


def print_table(r: dict) -> None:
    if "offline_calls_per_s" in r:
        print(f"offline batched: {r['offline_calls_per_s']:.1f} calls/s (4 s calls)")
    if "load" in r:
        print("| callers | calls/s | of offline | p50 ms | p95 ms | p99 ms | statuses |")
        print("|---|---|---|---|---|---|---|")
    for level in ("load", "overload"):
        if level in r:
            x = r[level]
            frac = x["calls_per_s"] / r["offline_calls_per_s"]
            lat = x["latency_ms"]
            print(
                f"| {x['callers']} | {x['calls_per_s']:.1f} | {frac:.2f} | {lat['p50']:.0f} | {lat['p95']:.0f} | "
                f"{lat['p99']:.0f} | {x['statuses']} |"
            )
    for s in r.get("streaming", []):
        lag = s["decision_lag_ms"]
        print(
            f"streams: {s['streams']} in real time, starts spread over {s['starts_spread_s']:g} s "
            f"(at most {s['most_open_at_once']} open at once), decisions {s['decisions']}, "
            f"lag p50 {lag['p50']:.0f} ms, p95 {lag['p95']:.0f} ms, max {lag['max']:.0f} ms"
        )


if __name__ == "__main__":
    main()
