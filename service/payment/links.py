"""A subject's payment link: the payment token sealed under the subject's fingerprint data key.

The token is found again only by the card it belongs to (a keyed digest of tenant + token, for a card
presented at the till) or by the subject, and opened only inside a payment use case. A withdrawal of
fingerprint consent destroys the data key and deletes the row (``service.consent.registry``), so the
token cannot be recovered after it.
"""

from __future__ import annotations

import hashlib
import hmac

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.errors import Conflict, NotFound
from service.modality import Modality
from service.payment.cards import refuse_card_number
from service.payment.pins import hash_pin
from service.protected import data_key
from service.store.models import PaymentLink, utcnow
from service.vault import Keyring, TemplateBinding
from service.vault.framing import length_prefixed

FINGERPRINT = str(Modality.FINGERPRINT)
_DIGEST_DOMAIN = b"bioident/payment-token/v1"
_SEAL_FORMAT = "payment-token/1"  # the binding's "model": what the sealed bytes are


def token_digest(pepper: bytes, tenant_id: str, payment_token: str) -> str:
    message = _DIGEST_DOMAIN + length_prefixed(tenant_id.encode(), payment_token.encode())
    return hmac.new(pepper, message, hashlib.sha256).hexdigest()


def _binding(link: PaymentLink) -> TemplateBinding:
    return TemplateBinding(link.subject_token, "payment-link", link.id, _SEAL_FORMAT)


def link_of_subject(session: Session, token: str) -> PaymentLink | None:
    return session.execute(select(PaymentLink).where(PaymentLink.subject_token == token)).scalar_one_or_none()


def link_of_card(session: Session, keyring: Keyring, tenant_id: str, payment_token: str) -> PaymentLink:
    """The link of the card presented; a card linked to no one here is not found."""
    refuse_card_number(payment_token, "payment_token")
    digest = token_digest(keyring.pepper, tenant_id, payment_token)
    link = session.execute(
        select(PaymentLink).where(PaymentLink.tenant_id == tenant_id, PaymentLink.token_digest == digest)
    ).scalar_one_or_none()
    if link is None:
        raise NotFound("no customer has linked this payment token to their fingers")
    return link


def store_payment_link(
    session: Session, keyring: Keyring, tenant_id: str, token: str, payment_token: str, pin: str | None
) -> PaymentLink:
    """Links (or re-links) the subject's payment token and PIN, sealed under their fingerprint data key.
    A token another customer has linked is refused: a presented card must name one customer."""
    refuse_card_number(payment_token, "payment_token")
    digest = token_digest(keyring.pepper, tenant_id, payment_token)
    other = session.execute(
        select(PaymentLink.subject_token).where(PaymentLink.tenant_id == tenant_id, PaymentLink.token_digest == digest)
    ).scalar_one_or_none()
    if other is not None and other != token:
        raise Conflict("this payment token is linked to another customer's fingers; nothing was stored")
    key = data_key(session, keyring, token, FINGERPRINT, create=True)
    link = link_of_subject(session, token)
    if link is None:
        link = PaymentLink(
            subject_token=token, tenant_id=tenant_id, modality=FINGERPRINT, token_digest=digest, sealed=b""
        )
        session.add(link)
        session.flush()
    link.token_digest = digest
    link.pin_hash = None if pin is None else hash_pin(keyring.pepper, token, pin)
    link.sealed = key.seal(payment_token.encode(), aad=_binding(link))
    link.updated_at = utcnow()
    session.flush()
    return link


def open_payment_token(session: Session, keyring: Keyring, link: PaymentLink) -> str:
    """The payment token in clear, for the answer to a payment the subject has just been recognised for."""
    key = data_key(session, keyring, link.subject_token, FINGERPRINT, create=False)
    if key is None:  # shredded: the link is going with it
        raise NotFound("the customer has no payment link")
    return key.open(link.sealed, aad=_binding(link)).decode()
