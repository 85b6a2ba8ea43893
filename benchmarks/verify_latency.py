"""Verification latency as an IVR sees it: a real ``bioident serve``, telephone audio, every call timed.

Run from the repository root::

    .venv/bin/python -m benchmarks.verify_latency [--speakers N] [--calls N] [--concurrency 1,4,20]
                                                  [--precision fp32,bf16] [--database-url URL] [--seed S]
                                                  [--out PATH] [--data DIR]

Starts ``bioident serve`` on a free local port with a fresh data directory (the embedded SQLite
default, or ``--database-url`` for PostgreSQL: give it an empty database of its own, since the run
writes subjects, templates and audit entries there). It records consent for ``--speakers`` speakers of
LibriSpeech test-other and enrols each from three of their utterances, sent as 16 kHz FLAC. Then it
places calls: each a 4-8 s crop of one of the speaker's other utterances, claimed as that speaker
(genuine) or as the next speaker (impostor), turn about, sent as 8 kHz mu-law raw audio as a telephone
platform delivers it.

Each call is timed at the client, from sending the request to reading the response. The server runs on this
machine, so a call's time covers HTTP and multipart parsing, decoding, resampling, VAD, the embedding,
scoring and calibration, the consent and lockout checks, and the audit entry's commit. For each concurrency
level (callers at once, each with its own connection) it reports latency percentiles and calls per second.
The whole run (a fresh server, enrolments, every level) is made once per ``--precision`` (BIOIDENT_PRECISION
of the server: fp32, bf16 or auto); by default fp32 and bf16 on a CPU with native bf16, fp32 alone elsewhere
(emulated bf16 embeds a second of audio in seconds: it says nothing about what ``auto`` runs there). The
server's lockout and rate limit are raised for the run, since impostor calls would otherwise lock the
speakers out. This is a benchmark, not a test: it asserts nothing on time.
Results go to a table on stdout and to JSON (default ``benchmarks/results/verify_latency.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from benchmarks.common import REPO, RESULTS_DIR, TEST_OTHER, write_results
from biometrics.voice.audio.waveform import MODEL_SAMPLE_RATE

DEFAULT_DATA = TEST_OTHER
DEFAULT_OUT = RESULTS_DIR / "verify_latency.json"
SAMPLE_RATE = MODEL_SAMPLE_RATE
TELEPHONE_RATE = 8_000
CROP_S = (4.0, 8.0)
ENROL_UTTERANCES = 3
WARMUP_CALLS = 2
STARTUP_TIMEOUT_S = 300.0
# 20 callers at once queue behind one model on 2 cores; on a shared host a call can wait minutes.
CALL_TIMEOUT_S = 300.0
PURPOSE = "authentication"
ADMIN_KEY_PREFIX = "first admin API key (shown once, store it now): "
# Where the server keeps its state and keys: the benchmark gives it fresh ones. Other settings (the model
# directory, a calibration file) are passed through.
SERVER_STATE_SETTINGS = ("BIOIDENT_DATA_DIR", "BIOIDENT_DATABASE_URL", "BIOIDENT_KEYRING", "BIOIDENT_KEYRING_FILE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``bioident serve`` in a child process, on its own data directory and port."""

    def __init__(self, data_dir: Path, database_url: str | None, precision: str = "auto") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in SERVER_STATE_SETTINGS}
        env.update(
            BIOIDENT_DATA_DIR=str(data_dir),
            BIOIDENT_LOCKOUT_MAX_FAILURES="1000000",
            BIOIDENT_RATE_LIMIT_PER_MINUTE="1000000",
            BIOIDENT_PRECISION=precision,
        )
        if database_url:
            env["BIOIDENT_DATABASE_URL"] = database_url
        self.log = (data_dir / "serve.log").open("w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self._key: str | None = None
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def admin_key(self) -> str:
        """The first admin key the server prints, once it answers /health."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"bioident serve exited: {self._log_tail()}")
            try:
                up = httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200
            except httpx.TransportError:
                up = False
            if up:  # the key is printed before the model loads, so it is in by now if it ever comes
                if self._key is None:
                    raise SystemExit("the server printed no admin key: give the benchmark an empty database")
                return self._key
            time.sleep(0.5)
        raise SystemExit(f"bioident serve did not answer within {STARTUP_TIMEOUT_S:.0f} s")

    def _read_stdout(self) -> None:
        # Keeps reading to the end: uvicorn's access log goes to stdout, and a full pipe would stall the server.
        for line in self.process.stdout:
            if line.startswith(ADMIN_KEY_PREFIX) and self._key is None:
                self._key = line[len(ADMIN_KEY_PREFIX) :].strip()

    def _log_tail(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return " | ".join(self.log.read().strip().splitlines()[-3:])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def _ok(response: httpx.Response, what: str) -> dict:
    if response.status_code >= 300:
        raise SystemExit(f"{what} failed: HTTP {response.status_code} {response.text[:300]}")
    return response.json()


def set_up_bank(http: httpx.Client, admin_key: str) -> dict[str, str]:
    """A tenant with an IVR client and a portal client; returns their API keys."""
    admin = {"Authorization": f"Bearer {admin_key}"}
    _ok(http.post("/v1/tenants", json={"id": "bench", "name": "latency benchmark"}, headers=admin), "tenant")
    keys = {}
    for role in ("ivr", "portal"):
        body = {"tenant_id": "bench", "name": f"bench-{role}", "role": role}
        keys[role] = _ok(http.post("/v1/clients", json=body, headers=admin), f"{role} client")["api_key"]
    return keys


def enrol_speakers(http: httpx.Client, keys: dict[str, str], speakers: dict[str, list[Path]]) -> None:
    for reference, files in speakers.items():
        consent = {
            "reference": reference,
            "modality": "voice",
            "purpose": PURPOSE,
            "notice_version": "bench",
            "notice_text": "latency benchmark",
            "channel": "portal",
            "evidence_ref": "benchmark",
        }
        _ok(http.post("/v1/consents", json=consent, headers={"Authorization": f"Bearer {keys['portal']}"}), "consent")
        audio = [("audio", (f.name, f.read_bytes(), "audio/flac")) for f in files[:ENROL_UTTERANCES]]
        response = http.post(
            "/v1/voice/enrol",
            data={"reference": reference, "purpose": PURPOSE},
            files=audio,
            headers={"Authorization": f"Bearer {keys['ivr']}"},
            timeout=120.0,
        )
        _ok(response, f"enrolment of {reference}")


def telephone_call(path: Path, rng: np.random.Generator) -> tuple[bytes, float]:
    """A 4-8 s crop of ``path`` as 8 kHz mu-law bytes, and its length in seconds."""
    from biometrics.voice.audio import RawCodec, encode_raw
    from biometrics.voice.audio.resample import resample

    samples, rate = sf.read(str(path), dtype="float32", always_2d=False)
    if rate != SAMPLE_RATE:
        raise SystemExit(f"{path} is at {rate} Hz, expected {SAMPLE_RATE}")
    want = min(len(samples), int(rng.uniform(*CROP_S) * SAMPLE_RATE))
    start = int(rng.integers(len(samples) - want + 1))
    narrow = resample(samples[start : start + want], SAMPLE_RATE, TELEPHONE_RATE)
    return encode_raw(narrow, TELEPHONE_RATE, RawCodec.MULAW), want / SAMPLE_RATE


def plan_calls(speakers: dict[str, list[Path]], count: int, seed: int) -> list[dict]:
    """``count`` calls: held-out audio of a speaker, claimed as that speaker or the next, turn about."""
    rng = np.random.default_rng(seed)
    references = list(speakers)
    calls = []
    for i in range(count):
        speaker = references[i // 2 % len(references)]
        genuine = i % 2 == 0
        claimed = speaker if genuine else references[(references.index(speaker) + 1) % len(references)]
        held_out = speakers[speaker][ENROL_UTTERANCES:]
        audio, seconds = telephone_call(held_out[int(rng.integers(len(held_out)))], rng)
        calls.append({"reference": claimed, "genuine": genuine, "audio": audio, "audio_s": seconds})
    return calls


def place_call(http: httpx.Client, ivr_key: str, call: dict) -> dict:
    start = time.perf_counter()
    response = http.post(
        "/v1/voice/verify",
        data={"reference": call["reference"], "purpose": PURPOSE, "codec": "mulaw", "sample_rate": str(TELEPHONE_RATE)},
        files=[("audio", ("call.ulaw", call["audio"], "audio/basic"))],
        headers={"Authorization": f"Bearer {ivr_key}"},
        timeout=CALL_TIMEOUT_S,
    )
    elapsed = time.perf_counter() - start
    body = response.json() if response.headers.get("content-type", "").endswith("json") else {}
    return {
        "latency_s": elapsed,
        "status": response.status_code,
        "decision": body.get("decision"),
        "reasons": [r.get("code") for r in body.get("reasons") or []],
        "genuine": call["genuine"],
        "audio_s": call["audio_s"],
    }


def run_level(url: str, ivr_key: str, calls: list[dict], concurrency: int) -> dict:
    """Places ``calls`` with ``concurrency`` callers at once, each caller on a connection of its own."""
    pending: queue.SimpleQueue[dict] = queue.SimpleQueue()
    for call in calls:
        pending.put(call)
    results: list[dict] = []
    ready = threading.Barrier(concurrency + 1, timeout=STARTUP_TIMEOUT_S)
    failures: list[BaseException] = []

    def caller() -> None:
        try:
            with httpx.Client(base_url=url) as http:
                for call in calls[:WARMUP_CALLS]:  # open the connection and warm the path before timing
                    place_call(http, ivr_key, call)
                ready.wait()
                while True:
                    try:
                        call = pending.get_nowait()
                    except queue.Empty:
                        return
                    results.append(place_call(http, ivr_key, call))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)
            ready.abort()

    threads = [threading.Thread(target=caller) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a caller failed: it says why below
        ready.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if failures:
        raise SystemExit(f"a caller failed: {type(failures[0]).__name__}: {failures[0]}")
    answered = [r for r in results if r["status"] == 200]
    if not answered:
        raise SystemExit(f"no call was answered: HTTP {sorted({r['status'] for r in results})}")
    latencies = np.array([r["latency_s"] for r in answered])  # failures are counted, not timed
    genuine = [r for r in results if r["genuine"] and r["status"] == 200]
    impostor = [r for r in results if not r["genuine"] and r["status"] == 200]
    return {
        "concurrency": concurrency,
        "calls": len(results),
        "failed_calls": sum(r["status"] != 200 for r in results),
        "statuses": sorted({r["status"] for r in results}),
        "wall_s": wall,
        "calls_per_s": len(results) / wall,
        "latency_ms": {
            "p50": float(np.percentile(latencies, 50) * 1000),
            "p95": float(np.percentile(latencies, 95) * 1000),
            "max": float(latencies.max() * 1000),
            "mean": float(latencies.mean() * 1000),
        },
        "genuine_accepted": f"{sum(r['decision'] == 'accept' for r in genuine)}/{len(genuine)}",
        # genuine calls refused by the quality gates rather than by their score (a crop with < 3 s of speech)
        "genuine_refused_too_short": sum("TOO_SHORT" in r["reasons"] for r in genuine),
        "impostors_rejected": f"{sum(r['decision'] == 'reject' for r in impostor)}/{len(impostor)}",
    }


def pick_speakers(data: Path, count: int) -> dict[str, list[Path]]:
    if not data.is_dir():
        raise SystemExit(f"no speech folder at {data} (--data: LibriSpeech test-other, one folder per speaker)")
    folders = sorted(p for p in data.iterdir() if p.is_dir())
    speakers = {}
    for folder in folders:
        files = sorted(folder.glob("*.flac"))
        if len(files) > ENROL_UTTERANCES:
            speakers[f"CUST-{folder.name}"] = files
        if len(speakers) == count:
            return speakers
    raise SystemExit(f"need {count} speakers with more than {ENROL_UTTERANCES} .flac files under {data}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--speakers", type=int, default=5, help="speakers to enrol (default 5)")
    parser.add_argument("--calls", type=int, default=40, help="timed calls per concurrency level (default 40)")
    parser.add_argument("--concurrency", default="1,4,20", help="callers at once, comma-separated (default 1,4,20)")
    parser.add_argument(
        "--precision",
        help="BIOIDENT_PRECISION of each run, comma-separated (default fp32,bf16 on a CPU with native bf16, else fp32)",
    )
    parser.add_argument("--database-url", help="an empty PostgreSQL database for the server (default: SQLite)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LibriSpeech test-other directory")
    args = parser.parse_args(argv)
    try:
        levels = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        parser.error("--concurrency takes whole numbers separated by commas, e.g. 1,4")
    if args.speakers < 2 or args.calls < 1 or min(levels) < 1:
        parser.error("--speakers must be at least 2, --calls and every --concurrency level at least 1")
    from biometrics.voice.model.precision import cpu_flags, has_native_bf16, resolve_precision

    precisions = (args.precision or ("fp32,bf16" if has_native_bf16(cpu_flags()) else "fp32")).split(",")
    if not precisions or not set(precisions) <= {"auto", "fp32", "bf16"}:
        parser.error("--precision takes auto, fp32 or bf16, separated by commas, e.g. fp32,bf16")
    if args.database_url and len(precisions) > 1:
        parser.error("--database-url takes one empty database per run: give one --precision with it")

    speakers = pick_speakers(args.data, args.speakers)
    calls = plan_calls(speakers, args.calls, args.seed)

    runs = []
    for precision in precisions:
        with tempfile.TemporaryDirectory(prefix="bioident-latency-") as tmp:
            server = Server(Path(tmp), args.database_url, precision)
            try:
                admin_key = server.admin_key()
                with httpx.Client(base_url=server.url) as http:
                    keys = set_up_bank(http, admin_key)
                    enrol_speakers(http, keys, speakers)
                levels_run = [run_level(server.url, keys["ivr"], calls, level) for level in levels]
            finally:
                server.stop()
        # The server runs on this machine: auto means there what it means here.
        runs.append({"precision": precision, "precision_in_use": resolve_precision(precision), "levels": levels_run})

    report = {
        "database": "postgresql" if args.database_url else "sqlite",
        "cpu_count": os.cpu_count(),
        "speakers": len(speakers),
        "call_audio": "8 kHz mu-law raw, 4-8 s crops of held-out LibriSpeech test-other utterances",
        "call_audio_s_mean": float(np.mean([c["audio_s"] for c in calls])),
        "seed": args.seed,
        "runs": runs,
    }
    print_table(report)
    write_results(args.out, report)
    return report


def print_table(r: dict) -> None:
    print(
        f"verification over HTTP: {r['speakers']} enrolled speakers, {r['database']}, {r['cpu_count']} CPUs; "
        f"calls: {r['call_audio']} (mean {r['call_audio_s_mean']:.1f} s)"
    )
    print()
    header = f"{'precision':>9} {'callers':>7} {'calls':>6} {'failed':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}"
    print(header + f" {'calls/s':>8} {'genuine accepted':>17} {'too short':>10} {'impostors rejected':>19}")
    for run, level in ((each, level) for each in r["runs"] for level in each["levels"]):
        ms = level["latency_ms"]
        print(
            f"{run['precision_in_use']:>9} {level['concurrency']:>7} {level['calls']:>6} {level['failed_calls']:>6} "
            f"{ms['p50']:>8.0f} "
            f"{ms['p95']:>8.0f} {ms['max']:>8.0f} {level['calls_per_s']:>8.2f} "
            f"{level['genuine_accepted']:>17} {level['genuine_refused_too_short']:>10} "
            f"{level['impostors_rejected']:>19}"
        )


if __name__ == "__main__":
    main()
