"""Micro-batching: concurrent callers' utterances embedded together, on the torch thread.

Four callers verifying at once used to queue for the model one after another, each a forward pass of
its own. Here each caller hands its speech to a ``MicroBatcher`` and waits; a dispatcher thread takes
everything that arrived within ``window_s`` of the first request (and everything that queued while the
previous batch ran), embeds it in one ``VoiceEmbedder.embed_speech`` call (packed passes on the torch
thread, ``biometrics.torch_thread``) and hands each caller its own vectors. Packing is exact, so a
caller gets the scores it would get alone (tested).

Admission is bounded: ``admitted()`` lets at most ``max_pending`` analyses (VAD and embedding) be in
flight, and refuses the next one at once with ``EmbeddingQueueFull`` and a retry estimate, instead of
letting waits grow without bound until clients time out.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from biometrics.errors import EmbeddingQueueFull
from biometrics.voice.audio.waveform import Waveform
from biometrics.voice.embedding import AnalysedSample, VoiceEmbedder

EmbedFn = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


@dataclass
class _Request:
    utterances: Sequence[np.ndarray]
    future: Future[list[np.ndarray]] = field(default_factory=Future)


class MicroBatcher:
    """Joins the embedding requests of concurrent callers into batches; see the module."""

    def __init__(
        self,
        embed_speech: EmbedFn,
        *,
        window_s: float = 0.005,
        max_pending: int = 32,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        if not window_s >= 0:
            raise ValueError("window_s must be zero or more")
        self._embed_speech = embed_speech
        self.window_s = window_s
        self.max_pending = max_pending
        self._on_batch = on_batch  # (requests in the batch, seconds it took): for metrics
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._in_flight = 0
        self._dispatcher: threading.Thread | None = None
        self._batch_s = 0.2  # running estimate of one batch's time, for Retry-After

    @property
    def depth(self) -> int:
        """Analyses admitted and not yet finished (waiting for the model or in it)."""
        return self._in_flight

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """One analysis in flight; refused with ``EmbeddingQueueFull`` when ``max_pending`` already are."""
        with self._cond:
            if self._in_flight >= self.max_pending:
                wait = max(1, math.ceil(self._batch_s * (1 + self._in_flight / self.max_pending)))
                raise EmbeddingQueueFull(f"{self._in_flight} analyses are waiting for the model", wait)
            self._in_flight += 1
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= 1

    def embed(self, utterances: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The embeddings of ``utterances``, computed in a batch with whatever else is waiting."""
        if not utterances:
            return []
        request = _Request(utterances)
        with self._cond:
            self._queue.append(request)
            if self._dispatcher is None or not self._dispatcher.is_alive():
                self._dispatcher = threading.Thread(target=self._dispatch, name="bioident-batcher", daemon=True)
                self._dispatcher.start()
            self._cond.notify_all()
        return request.future.result()

    def _dispatch(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                first = time.monotonic()
            # Requests arriving within the window of the first one join its batch.
            time.sleep(max(0.0, self.window_s - (time.monotonic() - first)))
            with self._cond:
                batch, self._queue = self._queue, []
            self._run(batch)

    def _run(self, batch: list[_Request]) -> None:
        started = time.monotonic()
        utterances = [u for r in batch for u in r.utterances]
        try:
            vectors = self._embed_speech(utterances)
        except BaseException as exc:  # noqa: BLE001 - each caller re-raises it
            for r in batch:
                r.future.set_exception(exc)
            return
        took = time.monotonic() - started
        self._batch_s = 0.8 * self._batch_s + 0.2 * took
        start = 0
        for r in batch:
            r.future.set_result(vectors[start : start + len(r.utterances)])
            start += len(r.utterances)
        if self._on_batch is not None:
            self._on_batch(len(batch), took)


class BatchingEmbedder:
    """A ``VoiceEmbedder`` seen through a ``MicroBatcher``: ``analyse`` is admitted and batched.

    Everything else (the fingerprint, the VAD, ``speech_only``, ``embed_speech``) is the embedder's own.
    """

    def __init__(self, embedder: VoiceEmbedder, batcher: MicroBatcher) -> None:
        self.embedder = embedder
        self.batcher = batcher

    def __getattr__(self, name: str) -> object:
        return getattr(self.embedder, name)

    def analyse(self, waveforms: Sequence[Waveform], max_speech_s: float | None = None) -> list[AnalysedSample]:
        with self.batcher.admitted():
            return self.embedder.analyse(waveforms, max_speech_s, embed=self.batcher.embed)

    @classmethod
    def around(
        cls,
        embedder: VoiceEmbedder,
        *,
        window_s: float,
        max_pending: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> BatchingEmbedder:
        batcher = MicroBatcher(embedder.embed_speech, window_s=window_s, max_pending=max_pending, on_batch=on_batch)
        return cls(embedder, batcher)
