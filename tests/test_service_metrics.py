"""Operators scrape /metrics from every replica: queue depth, batch sizes, latency per route and transport,
decisions by outcome, streams open; never a reference, token, stream id or score."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TEST_OTHER
from tests.stream_helpers import frames, open_stream, play, telephone_call
from tests.voice_helpers import GENUINE, IMPOSTOR, SPEAKER, _audio, _consent, _enrol, _verify


def _samples(body: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_metrics_count_decisions_batches_and_latency_without_naming_anyone(bank):
    api, keys = bank
    consent = _consent(api, keys["portal"])
    assert _enrol(api, keys["ivr"]).status_code == 201
    genuine = _verify(api, keys["ivr"], TEST_OTHER / SPEAKER / GENUINE).json()
    assert _verify(api, keys["ivr"], IMPOSTOR).json()["decision"] == "reject"
    stream = open_stream(api, keys["ivr"]).json()
    played = play(api, stream["id"], frames(telephone_call(TEST_OTHER / SPEAKER / GENUINE), 160))
    assert played.final["decision"] == "accept"

    found = api.http.post("/v1/voice/identify", files=[_audio(IMPOSTOR)], headers=api.headers(keys["ivr"]))
    assert found.status_code == 200 and found.json()["candidates"] == []

    response = api.http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    body = response.text
    samples = _samples(body)
    assert samples[("bioident_decisions_total", (("action", "voice.verify"), ("outcome", "accept")))] == 1
    assert samples[("bioident_decisions_total", (("action", "voice.verify"), ("outcome", "reject")))] == 1
    assert samples[("bioident_decisions_total", (("action", "voice.stream"), ("outcome", "accept")))] == 1
    assert samples[("bioident_decisions_total", (("action", "voice.identify"), ("outcome", "no_match")))] == 1
    # Every verification (HTTP and stream) and the enrolment met the (empty) watchlist.
    assert samples[("bioident_decisions_total", (("action", "watchlist.screen"), ("outcome", "clear")))] >= 3
    assert samples[("bioident_gallery_entries", (("gallery", "voice"),))] == 1
    assert samples[("bioident_gallery_entries", (("gallery", "fingerprint"),))] == 0
    assert samples[("bioident_embedding_queue_depth", ())] == 0
    assert samples[("bioident_embedding_batch_requests_count", ())] >= 3
    assert samples[("bioident_streams_open", (("transport", "websocket"),))] == 0
    verify_route = (("route", "/v1/voice/verify"), ("transport", "http"))
    assert samples[("bioident_request_seconds_count", verify_route)] == 2
    stream_route = (("route", "/v1/voice/streams/{stream_id}"), ("transport", "websocket"))
    assert samples[("bioident_request_seconds_count", stream_route)] == 1
    for secret in ("ACC-1001", consent["subject_token"], stream["id"], str(genuine["score"]), keys["ivr"]):
        assert secret not in body


def test_health_answers_without_loading_anything(api):
    """A liveness probe's answer: the precision this host would run the model in, and what is loaded."""
    from biometrics.voice.model.precision import resolve_precision

    health = api.http.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert body["precision"] == resolve_precision(api.ctx.settings.precision) == api.ctx.embedder.precision
    assert body["voice_model_loaded"] is api.ctx.voice_model_loaded
    assert body["fingerprint_gallery"] in ("loading", "ready")
    assert body["fingerprint_extractor_stalled"] == 0  # NBIS threads abandoned on a stalled capture
