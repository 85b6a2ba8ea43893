"""One connected stream, driven by its transport: frames in, events out, one decision.

``StreamRun`` is synchronous: transports call it from a worker thread (``anyio.to_thread``), never on the
event loop. It feeds the audio to a ``SpeechStream`` (VAD as it arrives), scores the speech heard after
each ``stream_step_speech_s`` of new net speech, and decides through ``decide_voice`` as soon as the score
is ``stream_margin`` past the threshold with enough speech, at ``stream_max_speech_s`` of speech, or on
close. Consent and lockout are checked again at every score and at the decision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.orm import Session

from biometrics.errors import AudioError, AudioTooLong, BiometricsError
from biometrics.scoring.scorer import Verdict
from biometrics.voice.audio import RawCodec
from biometrics.voice.quality.gates import NO_SPEECH_BELOW_S, QualityReason, ReasonCode
from biometrics.voice.streaming import SpeechStream
from biometrics.voice.verification import Probe
from service.context import ServiceContext
from service.errors import ServiceError
from service.store.models import VoiceStream
from service.trail.chain import record_event
from service.voice.streams.store import claim_of, close_stream, set_event
from service.voice.verification import VoiceCheck, decide_voice, score_voice, told

log = logging.getLogger("bioident.streams")


@dataclass(frozen=True)
class StreamFault(Exception):
    """The transport's peer broke the protocol; ``code`` is the WebSocket close code to end with."""

    reason: str
    code: int


def judge(verdict: Verdict, probe: Probe, margin: float, *, final: bool) -> str:
    """A stream's decision on a verdict: accept or reject once the score is ``margin`` past the threshold
    and no quality reason stands; otherwise pending, or, when it must decide, inconclusive."""
    if not probe.reasons and verdict.score is not None:
        if verdict.score >= verdict.threshold + margin:
            return "accept"
        if verdict.score < verdict.threshold - margin:
            return "reject"
    return "inconclusive" if final else "pending"


class StreamRun:
    """The stream ``row`` (just taken by a transport) being fed and decided; see the module."""

    def __init__(self, ctx: ServiceContext, row: VoiceStream) -> None:
        self.ctx, self.settings = ctx, ctx.settings
        self.stream_id, self.transport = row.id, row.transport or ""
        self.claim = claim_of(row)
        self.audio = SpeechStream(
            ctx.embedder.vad,
            ctx.batching.batcher.embed,  # a stream's scores share batches; streams are bounded in number, not queued
            ctx.embedder.fingerprint,
            ctx.limits,
            RawCodec(row.codec),
            row.sample_rate,
            self.settings.stream_max_audio_s,
        )
        self.scored_at_speech_s = 0.0
        self.final_event: dict | None = None

    @property
    def decided(self) -> bool:
        return self.final_event is not None

    def feed(self, audio: bytes) -> list[dict]:
        """New audio (any number of whole frames); the events it leads to, the last one final if it decided."""
        if self.decided:
            return []
        try:
            self.audio.add(audio)
        except AudioTooLong:
            return [self.finish("buffer_full")]
        except AudioError as exc:
            raise StreamFault("malformed_frame", 1007) from exc
        speech = self.audio.net_speech_s
        if speech < NO_SPEECH_BELOW_S:
            if self.audio.heard_s >= self.settings.stream_silence_s:
                return [self.finish("no_speech")]
            return []
        if speech - self.scored_at_speech_s < self.settings.stream_step_speech_s:
            return []
        self.scored_at_speech_s = speech
        if speech < self.settings.min_verify_speech_s:  # too little to decide on: report, embed nothing yet
            short = [QualityReason(ReasonCode.TOO_SHORT, speech, self.settings.min_verify_speech_s).as_dict()]
            event = {**self._event("pending", "pending", None, None, None), "net_speech_s": round(speech, 3)}
            event["reasons"] = short
            with self.ctx.db.session() as session:
                set_event(session, self.stream_id, event)
            return [event]
        probe = self.audio.probe()
        at_most = probe.net_speech_s >= self.settings.stream_max_speech_s
        verdict = self._score(probe)
        if verdict is None:  # refused meanwhile (consent withdrawn, locked out): already ended
            return [self.final_event]  # type: ignore[list-item]
        if judge(verdict, probe, self.settings.stream_margin, final=at_most) == "pending":
            event = self._event("pending", "pending", probe, told(probe, verdict.score), verdict.threshold)
            with self.ctx.db.session() as session:
                set_event(session, self.stream_id, event)
            return [event]
        return [self._decide(probe, "speech_limit" if at_most else "decided")]

    def finish(self, reason: str) -> dict:
        """Decides on everything heard (the stream is closing because of ``reason``); the final event."""
        if self.final_event is not None:
            return self.final_event
        try:
            probe = self.audio.probe()
        except BiometricsError:
            return self.end(reason, "unusable_audio")
        return self._decide(probe, reason)

    def fault(self, reason: str) -> dict:
        """The peer broke the protocol (``reason``). With speech heard, the stream is decided on it as a hang-up
        would be: a score may have been told, and breaking the framing must not end a losing attempt uncounted.
        Without, it ends undecided."""
        if self.final_event is None and self.audio.net_speech_s >= NO_SPEECH_BELOW_S:
            return self.finish(reason)
        return self.end(reason)

    def end(self, reason: str, refusal: str | None = None) -> dict:
        """Ends the stream without a decision (a protocol fault, a refusal), audited as refused."""
        if self.final_event is not None:
            return self.final_event
        event = {"event": "ended", "stream_id": self.stream_id, "decision": None, "close_reason": reason}
        if refusal is not None:
            event["refusal"] = refusal
        with self.ctx.db.session() as session:
            record_event(
                session,
                self.claim.actor,
                action="voice.stream",
                outcome="refused",
                subject_token=self.claim.subject_token,
                details={"stream_id": self.stream_id, "transport": self.transport, "reason": refusal or reason},
            )
            close_stream(session, self.stream_id, decision=None, reason=reason, event=event)
        self.ctx.decided("voice.stream", "refused")
        self.final_event = event
        return event

    def _score(self, probe: Probe) -> Verdict | None:
        try:
            return score_voice(self.ctx, self.claim, probe)
        except ServiceError as exc:
            self.end(exc.code, exc.code)
            return None

    def _decide(self, probe: Probe, reason: str) -> dict:
        margin = self.settings.stream_margin
        if probe.net_speech_s < NO_SPEECH_BELOW_S and not probe.reasons:  # nothing heard at all
            probe = Probe(probe.sample, [QualityReason(ReasonCode.NO_SPEECH, 0.0, NO_SPEECH_BELOW_S)], probe.channel)
        event: dict = {}

        def store(session: Session, check: VoiceCheck) -> None:  # in the transaction that audits the decision
            decided = self._event("decision", check.decision, probe, check.score, check.threshold, reason, final=True)
            if check.watchlist is not None:  # screened against the fraudster watchlist, as HTTP verification is
                w = check.watchlist
                decided["watchlist"] = {"hit": w.hit, "entry": w.entry, "score": w.score}
            event.update(decided)
            close_stream(session, self.stream_id, decision=check.decision, reason=reason, event=event)

        try:
            decide_voice(
                self.ctx,
                self.claim,
                probe,
                judge=lambda verdict, p: judge(verdict, p, margin, final=True),
                action="voice.stream",
                details={"stream_id": self.stream_id, "transport": self.transport, "close_reason": reason},
                on_decided=store,
            )
        except ServiceError as exc:
            return self.end(exc.code, exc.code)
        self.final_event = event
        return event

    def _event(
        self,
        kind: str,
        decision: str,
        probe: Probe | None,
        score: float | None,
        threshold: float | None,
        close_reason: str | None = None,
        *,
        final: bool = False,
    ) -> dict:
        return {
            "event": kind,
            "stream_id": self.stream_id,
            "decision": decision,
            "net_speech_s": None if probe is None else round(probe.net_speech_s, 3),
            "heard_s": round(self.audio.heard_s, 3),
            "score": None if score is None else round(score, 4),
            "threshold": threshold,
            "reasons": [] if probe is None else [r.as_dict() for r in probe.reasons],
            "final": final,
            **({"close_reason": close_reason} if close_reason else {}),
        }
