"""Paying by finger at the till (terminal role), three ways:

- card + finger (``pay_with_card``): the card presented names its customer (by its payment token's
  digest); their fingers are compared 1:1;
- finger + PIN (``pay_with_pin``): the fingers are identified among the tenant's customers, and the
  customer the PIN belongs to among the best candidates is the one;
- finger only (``pay_with_finger``): 1:N over the tenant's fingers; a match only when the best customer
  passes the identification threshold and leads the second by the margin.

Each reads: check consent -> load the templates (sealed rows, or the gallery re-checked in the database)
-> compute -> decide -> audit -> commit. The answer carries the decision and threshold, and on an accept
the linked payment token and the score, nothing else about the customer. Every attempt is audited, refusals included.
A rejected card + finger and a wrong PIN for the customer the finger identifies count towards the
lockout (``service.fingerprint.lockout``); a locked-out customer's PIN is not checked at all.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.auth import Principal
from service.consent.records import lock_subject, note_activity, require_consent
from service.context import ServiceContext
from service.errors import NotFound
from service.fingerprint import decisions
from service.fingerprint.decisions import ProbeFinger, fused_score
from service.fingerprint.gallery import FingerprintGallery
from service.fingerprint.lockout import count_failure, refuse_if_locked
from service.fingerprint.templates import FINGERPRINT, EnrolledFinger, open_fingers, template_fingerprint
from service.limits import locked_subjects
from service.modality import Modality
from service.payment.links import link_of_card, link_of_subject, open_payment_token
from service.payment.pins import check_pin_format, pin_matches
from service.store.models import Consent, PaymentLink, Template, VerificationFailure
from service.trail.chain import record_event
from service.trail.refusals import Attempt, refusals_audited

SEARCH_LIMIT = 10  # fingers the index returns per finger presented
PIN_TRIES = 3  # candidates whose PIN is checked (argon2id is slow on purpose)
GALLERY_WAIT_S = 5.0  # how long a 1:N payment waits for the gallery still loading at start, before 503

Probes = Callable[[], Sequence[ProbeFinger]]


@dataclass(frozen=True)
class PaymentDecision:
    mode: str  # card, pin or finger
    decision: str  # accept or reject
    payment_token: str | None  # only with accept
    score: float | None
    threshold: float
    model: str
    reasons: list[dict]

    @classmethod
    def of(
        cls, mode: str, accepted: bool, payment_token: str | None, score: float | None, threshold: float, model: str
    ) -> PaymentDecision:
        """The answer to the terminal. A reject carries no score (the audit trail keeps it): it would tell how
        near a finger came, and without a card that it belongs to an enrolled customer."""
        decision = "accept" if accepted else "reject"
        return cls(mode, decision, payment_token, score if accepted else None, threshold, model, [])

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Candidate:
    subject_token: str
    score: float
    fingers: list[EnrolledFinger]


def _audit(
    session: Session,
    actor: Principal,
    mode: str,
    purpose: str,
    outcome: str,
    token: str | None,
    score: float | None,
    threshold: float,
    model: str,
    **details: object,
) -> None:
    record_event(
        session,
        actor,
        action="fingerprint.pay",
        outcome=outcome,
        subject_token=token,
        score=None if score is None else round(score, 6),
        model_fingerprint=model,
        details={"mode": mode, "purpose": purpose, "threshold": round(threshold, 6), **details},
    )


def _model(probes: Sequence[ProbeFinger]) -> str:
    return template_fingerprint(probes[0].template)


# --- card + finger ---------------------------------------------------------------------------------


def pay_with_card(
    ctx: ServiceContext, actor: Principal, purpose: str, payment_token: str, probes: Probes
) -> PaymentDecision:
    """1:1 against the customer who linked the card presented."""
    settings = ctx.settings
    with refusals_audited(
        ctx, actor, "fingerprint.pay", reference=None, details={"mode": "card", "purpose": purpose}
    ) as attempt:
        with ctx.db.session() as session:
            token = link_of_card(session, ctx.keyring, actor.tenant_id, payment_token).subject_token
            attempt.subject_token = token
            require_consent(session, token, Modality.FINGERPRINT, purpose)
            refuse_if_locked(ctx, session, token)
        presented = list(probes())  # captures are analysed only for a claim that stands
        with ctx.db.session() as session:
            lock_subject(session, token)  # concurrent attempts count their failures one after another
            require_consent(session, token, Modality.FINGERPRINT, purpose)  # again: it may be gone meanwhile
            refuse_if_locked(ctx, session, token)
            link = link_of_subject(session, token)
            if link is None:
                raise NotFound("the customer has no payment link")
            fused = fused_score(presented, open_fingers(session, ctx.keyring, token))
            model = _model(presented)
            threshold = decisions.verification_threshold(settings.fingerprint_target_fmr, fused.comparisons, model)
            accepted = fused.score >= threshold
            _audit(
                session,
                actor,
                "card",
                purpose,
                "accept" if accepted else "reject",
                token,
                fused.score,
                threshold,
                model,
                fingers=len(presented),
            )
            if not accepted:
                count_failure(ctx, session, actor, token)
            else:
                note_activity(session, token)  # retention counts from the last successful use
            paid_with = open_payment_token(session, ctx.keyring, link) if accepted else None
    return PaymentDecision.of("card", accepted, paid_with, fused.score, threshold, model)


# --- identification (finger + PIN, finger only) ---------------------------------------------------


def synced_gallery(ctx: ServiceContext, tenant_id: str) -> FingerprintGallery:
    """This process's gallery, whole and in line with the database for the tenant (never part of it)."""
    gallery = ctx.fingerprint_gallery
    gallery.wait_ready(GALLERY_WAIT_S)
    with ctx.db.session() as session:
        gallery.sync(session, ctx.keyring, tenant_id)
    return gallery


def _ranked(ctx: ServiceContext, tenant_id: str, presented: Sequence[ProbeFinger]) -> tuple[list[Candidate], int]:
    """The gallery's candidates for the fingers presented, best fused score first, and the gallery's size
    in fingers (after bringing it in line with the database)."""
    gallery = synced_gallery(ctx, tenant_id)
    found = [gallery.search(tenant_id, probe.template, limit=SEARCH_LIMIT) for probe in presented]
    known = [{match.finger.template_id: match.score for match in matches} for matches in found]
    candidates = []
    for token in {match.finger.subject_token for matches in found for match in matches}:
        fingers = gallery.fingers_of(tenant_id, token)
        if fingers:
            candidates.append(Candidate(token, fused_score(presented, fingers, known).score, fingers))
    return sorted(candidates, key=lambda c: -c.score), gallery.size(tenant_id)


def _still_current(
    ctx: ServiceContext, session: Session, tenant_id: str, purpose: str, candidates: Sequence[Candidate]
) -> tuple[list[Candidate], bool]:
    """The candidates the database still stands behind, in order: active consent for the purpose, the very
    template rows the gallery scored, and a payment link; and whether the gallery held any of them stale
    (rows changed or gone: those are dropped from it)."""
    tokens = [c.subject_token for c in candidates]
    if not tokens:
        return [], False
    consenting = set(
        session.execute(
            select(Consent.subject_token).where(
                Consent.subject_token.in_(tokens),
                Consent.modality == FINGERPRINT,
                Consent.purpose == purpose,
                Consent.withdrawn_at.is_(None),
            )
        ).scalars()
    )
    rows: dict[str, set] = {}
    for row_id, token, updated_at in session.execute(
        select(Template.id, Template.subject_token, Template.updated_at).where(
            Template.subject_token.in_(tokens), Template.modality == FINGERPRINT, Template.tenant_id == tenant_id
        )
    ):
        rows.setdefault(token, set()).add((row_id, updated_at))
    linked = set(
        session.execute(select(PaymentLink.subject_token).where(PaymentLink.subject_token.in_(tokens))).scalars()
    )
    current, stale = [], False
    for candidate in candidates:
        scored = {(f.template_id, f.updated_at) for f in candidate.fingers}
        token = candidate.subject_token
        if token not in rows or rows[token] != scored:
            ctx.fingerprint_gallery.drop_stale(tenant_id, token)  # gone or changed: the next sync reloads it
            stale = True
        elif token in consenting and token in linked:
            current.append(candidate)
    return current, stale


def _identified(
    ctx: ServiceContext, tenant_id: str, purpose: str, presented: Sequence[ProbeFinger]
) -> tuple[list[Candidate], int]:
    """The candidates the database stands behind, best first, and the gallery's size. Where the gallery held
    a candidate stale (re-enrolled or withdrawn on another replica), it is brought in line and searched once
    more, so that a decision is not taken between the runners-up of a ranking that lacked someone."""
    for _ in range(2):
        ranked, gallery_fingers = _ranked(ctx, tenant_id, presented)
        with ctx.db.session() as session:
            current, stale = _still_current(ctx, session, tenant_id, purpose, ranked)
        if not stale:
            break
    return current, gallery_fingers


def _locked(ctx: ServiceContext, session: Session, tokens: Sequence[str]) -> set[str]:
    locked = locked_subjects(FINGERPRINT, ctx.settings.lockout_window_s, ctx.settings.lockout_max_failures)
    return set(session.execute(locked.where(VerificationFailure.subject_token.in_(tokens))).scalars())


def _refuse_if_locked(ctx: ServiceContext, attempt: Attempt, session: Session, token: str) -> None:
    """423 (audited as refused, against ``token``) while ``token`` is locked out."""
    attempt.subject_token = token
    refuse_if_locked(ctx, session, token)
    attempt.subject_token = None


def _leads(best: Candidate | None, second: Candidate | None, threshold: float, margin: float) -> bool:
    """Whether the best candidate passes the threshold and leads the second by ``margin`` x the threshold."""
    if best is None or best.score < threshold:
        return False
    return second is None or best.score - second.score >= margin * threshold


def pay_with_finger(ctx: ServiceContext, actor: Principal, purpose: str, probes: Probes) -> PaymentDecision:
    """1:N over the tenant's fingers: the best customer must pass the threshold and lead the second by the
    margin; a locked-out customer is not answered."""
    settings, tenant = ctx.settings, actor.tenant_id
    with refusals_audited(
        ctx, actor, "fingerprint.pay", reference=None, details={"mode": "finger", "purpose": purpose}
    ):
        presented = list(probes())
        current, gallery_fingers = _identified(ctx, tenant, purpose, presented)
    model = _model(presented)
    threshold = decisions.finger_only_threshold(
        settings.fingerprint_target_fpir, len(presented), gallery_fingers, model
    )
    with ctx.db.session() as session:
        best, second = (current + [None, None])[:2]
        accepted = _leads(best, second, threshold, settings.fingerprint_margin)
        if accepted:  # held until the answer commits: a withdrawal of this customer waits for it, or went first
            lock_subject(session, best.subject_token)
            accepted = bool(_still_current(ctx, session, tenant, purpose, [best])[0])
        reason = None
        if accepted and best.subject_token in _locked(ctx, session, [best.subject_token]):
            accepted, reason = False, "locked_out"
        elif best is not None and not accepted:
            reason = "below_threshold" if best.score < threshold else "no_clear_lead"
        token = best.subject_token if accepted else None
        link = link_of_subject(session, token) if accepted else None
        _audit(
            session,
            actor,
            "finger",
            purpose,
            "accept" if accepted else "reject",
            token,
            None if best is None else best.score,
            threshold,
            model,
            fingers=len(presented),
            gallery_fingers=gallery_fingers,
            reason=reason,
        )
        if accepted and token is not None:
            note_activity(session, token)  # retention counts from the last successful use
        paid_with = open_payment_token(session, ctx.keyring, link) if link is not None else None
    return PaymentDecision.of("finger", accepted, paid_with, None if best is None else best.score, threshold, model)


def pay_with_pin(ctx: ServiceContext, actor: Principal, purpose: str, pin: str, probes: Probes) -> PaymentDecision:
    """Identification among the customers with that PIN: the best candidates (above the PIN-narrowed
    threshold) are tried in turn against their PIN. A wrong PIN counts towards the lockout of every
    candidate it was tried against, and of the customer the finger alone identifies (finger-only threshold
    and margin)."""
    settings, tenant = ctx.settings, actor.tenant_id
    check_pin_format(pin)
    with refusals_audited(
        ctx, actor, "fingerprint.pay", reference=None, details={"mode": "pin", "purpose": purpose}
    ) as attempt:
        presented = list(probes())
        current, gallery_fingers = _identified(ctx, tenant, purpose, presented)
        model = _model(presented)
        target, count = settings.fingerprint_target_fpir, len(presented)
        threshold = decisions.pin_threshold(target, count, gallery_fingers, model)
        alone = decisions.finger_only_threshold(target, count, gallery_fingers, model)
        with ctx.db.session() as session:  # read the PIN hashes; argon2id runs outside any transaction
            hashes = dict(
                session.execute(
                    select(PaymentLink.subject_token, PaymentLink.pin_hash).where(
                        PaymentLink.subject_token.in_([c.subject_token for c in current])
                    )
                ).all()
            )
        best, second = (current + [None, None])[:2]
        identified = best if _leads(best, second, alone, settings.fingerprint_margin) else None
        candidates = [c for c in current if c.score >= threshold and hashes.get(c.subject_token)][:PIN_TRIES]
        # A locked-out customer's PIN is never checked: the right PIN's 423 would stand out from wrong PINs'
        # rejects, and the lockout would become a way to try PINs with a lifted finger. Named by the finger
        # alone, they get 423 whatever the PIN; ranked among the candidates, neither they nor anyone after them
        # is chosen (their own PIN must not pay from a runner-up's account).
        with ctx.db.session() as session:
            named = [c.subject_token for c in candidates] + ([identified.subject_token] if identified else [])
            locked = _locked(ctx, session, named)
            if identified is not None and identified.subject_token in locked:
                _refuse_if_locked(ctx, attempt, session, identified.subject_token)
                locked.discard(identified.subject_token)  # the lockout ran out meanwhile
        tried = list(itertools.takewhile(lambda c: c.subject_token not in locked, candidates))
        pepper = ctx.keyring.pepper
        chosen = next((c for c in tried if pin_matches(pepper, c.subject_token, pin, hashes[c.subject_token])), None)
        with ctx.db.session() as session:
            if chosen is not None:
                attempt.subject_token = chosen.subject_token
                lock_subject(session, chosen.subject_token)
                confirmed, _ = _still_current(ctx, session, tenant, purpose, [chosen])
                if not confirmed:
                    chosen = None
                else:
                    refuse_if_locked(ctx, session, chosen.subject_token)  # 423, audited as refused
            failed_for = identified.subject_token if chosen is None and identified is not None else None
            # A wrong PIN counts for every customer whose PIN it was tried against, named by the finger alone or
            # not: with a finger that named no one clearly (a finger enrolled twice, a second finger of one's
            # own), PINs had been tried on a customer's account uncounted.
            wrong = set() if chosen is not None else {c.subject_token for c in tried}
            wrong |= {failed_for} if failed_for is not None else set()
            for token in sorted(wrong):  # one order: concurrent payments never wait on each other in a cycle
                lock_subject(session, token)
            if failed_for is not None:
                # Locked by a concurrent attempt meanwhile: 423 as for the right PIN, and no failure past the limit.
                _refuse_if_locked(ctx, attempt, session, failed_for)
            for token in sorted(wrong - _locked(ctx, session, sorted(wrong))):
                count_failure(ctx, session, actor, token)
            token = chosen.subject_token if chosen is not None else failed_for
            score = chosen.score if chosen is not None else (None if best is None else best.score)
            reason = None if chosen is not None else ("wrong_pin" if wrong else "no_match")
            _audit(
                session,
                actor,
                "pin",
                purpose,
                "accept" if chosen else "reject",
                token,
                score,
                threshold,
                model,
                fingers=len(presented),
                gallery_fingers=gallery_fingers,
                reason=reason,
            )
            if chosen is not None:
                note_activity(session, chosen.subject_token)  # retention counts from the last successful use
            link = link_of_subject(session, chosen.subject_token) if chosen is not None else None
            paid_with = open_payment_token(session, ctx.keyring, link) if link is not None else None
    return PaymentDecision.of("pin", chosen is not None, paid_with, score, threshold, model)
