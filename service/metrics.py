"""``/metrics`` in the Prometheus format: what an operator scrapes from every replica.

Queue depth and batch sizes of the micro-batcher, latency per route and transport, decisions by action
and outcome (verification, streams, identification, watchlist screening, payments at the till), streams
open, entries of the in-memory galleries. Labels are route templates (``/v1/voice/streams/{stream_id}``),
transports, actions and
outcomes only: never a reference, token, stream id or score. Each app has its own registry, so several
apps in one process (tests) do not collide.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


class ServiceMetrics:
    def __init__(self, queue_depth: Callable[[], int], gallery_sizes: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Gauge(
            "bioident_embedding_queue_depth", "analyses admitted and waiting for or in the model", registry=r
        ).set_function(queue_depth)
        self.batch_requests = Histogram(
            "bioident_embedding_batch_requests",
            "embedding requests joined in one batch",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "bioident_embedding_batch_seconds", "time one batch took on the model", buckets=LATENCY_BUCKETS, registry=r
        )
        self.latency = Histogram(
            "bioident_request_seconds",
            "requests (http) and stream connections (websocket, audiosocket) from start to end",
            ["route", "transport"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decisions = Counter(
            "bioident_decisions", "decisions by action and outcome", ["action", "outcome"], registry=r
        )
        self.streams_open = Gauge("bioident_streams_open", "streams connected now", ["transport"], registry=r)
        entries = Gauge(
            "bioident_gallery_entries",
            "templates held in this process's in-memory 1:N galleries, all tenants together",
            ["gallery"],
            registry=r,
        )
        for name in ("voice", "watchlist", "fingerprint"):
            entries.labels(gallery=name).set_function(lambda name=name: gallery_sizes()[name])
        self.overloaded = Counter("bioident_overloaded", "analyses refused because the queue was full", registry=r)

    def observe_batch(self, requests: int, seconds: float) -> None:
        self.batch_requests.observe(requests)
        self.batch_seconds.observe(seconds)

    def decided(self, action: str, outcome: str) -> None:
        self.decisions.labels(action=action, outcome=outcome).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


class RequestTiming:
    """Pure ASGI middleware: each request's (or WebSocket's) time under its route template and transport."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: list[int] = []

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            transport = "http" if scope["type"] == "http" else "websocket"
            self.metrics.latency.labels(route=route, transport=transport).observe(time.perf_counter() - started)
            if status and status[0] == 503:
                self.metrics.overloaded.inc()
