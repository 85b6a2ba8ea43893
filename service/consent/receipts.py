"""Signed, machine-readable receipts: what a customer agreed to, withdrew, or what was purged or erased.

A receipt follows the Kantara Consent Receipt v1.1 fields (``piiPrincipalId``, ``piiControllers``,
``services`` with their ``purposes``, ``sensitive``/``spiCat``...) with an ``event`` block in the manner
of ISO/IEC TS 27560 (what happened to the consent, when, by which channel, what was destroyed). It is
signed by the deployment as a compact JWS (EdDSA, Ed25519) and stored, so the customer can download it
again and anyone can check it against the published key (``GET /v1/receipts/keys``).

The signing key is derived (HKDF, its own label) from the audit key, which the keyring derives from its
pepper: every replica signs with the same key, it never rotates with the key-encryption keys, and the
public key reveals nothing of either.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.store.models import Receipt, Tenant, new_id, utcnow
from service.trail.chain import audit_key

RECEIPT_VERSION = "KI-CR-v1.1.0"
POLICY_PATH = "/portal/retention-policy"
KEYS_PATH = "/v1/receipts/keys"
DEFAULT_LANGUAGE = "en"
LANGUAGE_PATTERN = r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$"  # a BCP 47 language tag: "uk", "pt-BR"
_SIGNING_LABEL = b"bioident/consent-receipts/ed25519/v1"


class ReceiptKind:
    GRANT = "consent.grant"
    WITHDRAW = "consent.withdraw"
    PURGE = "retention.purge"
    ERASURE = "erasure"


class InvalidReceipt(ValueError):
    """A receipt whose signature does not verify, or that is not a receipt at all."""


@dataclass(frozen=True)
class SigningKey:
    """The deployment's receipt signing key; ``kid`` names its public half."""

    private: Ed25519PrivateKey

    @classmethod
    def from_audit_key(cls, key: bytes) -> SigningKey:
        seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SIGNING_LABEL).derive(key)
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_bytes(self) -> bytes:
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def kid(self) -> str:
        return hashlib.sha256(self.public_bytes).hexdigest()[:16]

    def jwk(self) -> dict:
        """The public key as a JSON Web Key (RFC 8037)."""
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64(self.public_bytes), "kid": self.kid, "use": "sig",
                "alg": "EdDSA"}  # fmt: skip

    def sign(self, payload: dict) -> str:
        header = {"alg": "EdDSA", "typ": "JWT", "kid": self.kid}
        signing_input = f"{_b64(_canonical(header))}.{_b64(_canonical(payload))}"
        return f"{signing_input}.{_b64(self.private.sign(signing_input.encode()))}"


def verify_receipt(jws: str, jwk: dict) -> dict:
    """The receipt inside ``jws`` if the key ``jwk`` (as published) signed it; else ``InvalidReceipt``."""
    try:
        header_b64, payload_b64, signature_b64 = jws.split(".")
        header = json.loads(_unb64(header_b64))
        if header.get("alg") != "EdDSA" or jwk.get("crv") != "Ed25519":
            raise InvalidReceipt("not an EdDSA (Ed25519) receipt")
        public = Ed25519PublicKey.from_public_bytes(_unb64(jwk["x"]))
        public.verify(_unb64(signature_b64), f"{header_b64}.{payload_b64}".encode())
        return json.loads(_unb64(payload_b64))
    except InvalidSignature as exc:
        raise InvalidReceipt("the signature does not match this receipt") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidReceipt("this is not a signed receipt") from exc


def signing_key(session: Session) -> SigningKey:
    return SigningKey.from_audit_key(audit_key(session))


def payload_of(receipt: Receipt) -> dict:
    """A stored receipt's content (it was signed when issued; ``verify_receipt`` checks that)."""
    return json.loads(_unb64(receipt.jws.split(".")[1]))


def service_entry(modality: str, purpose: str, *, notice_version: str | None = None) -> dict:
    """One Kantara ``services`` entry: the biometric modality and one purpose."""
    entry = {
        "purpose": purpose,
        "purposeCategory": ["identity verification"],
        "consentType": "EXPLICIT",
        "piiCategory": [f"biometric template: {modality}"],
        "primaryPurpose": True,
        "termination": "on withdrawal, on erasure, or after the retention period without use (see policyUrl)",
        "thirdPartyDisclosure": False,
    }
    if notice_version is not None:
        entry["noticeVersion"] = notice_version
    return {"service": f"{modality} recognition", "modality": modality, "purposes": [entry]}


def issue_receipt(
    session: Session,
    *,
    kind: str,
    subject_token: str,
    tenant_id: str,
    channel: str,
    services: list[dict],
    event: dict,
    language: str | None = None,
) -> Receipt:
    """Signs and stores a receipt in the caller's transaction. ``language``: the one the customer was
    addressed in (the notice's, the portal's); without one, that of the customer's latest receipt."""
    if language is None:
        language = customer_language(session, tenant_id, subject_token)
    now = utcnow()
    receipt_id = new_id("rct")
    tenant = session.get(Tenant, tenant_id)
    body = {
        "version": RECEIPT_VERSION,
        "consentReceiptID": receipt_id,
        "iat": int(now.timestamp()),
        "consentTimestamp": int(now.timestamp()),
        "collectionMethod": channel,
        "language": language,
        "piiPrincipalId": subject_token,
        "piiControllers": [{"piiController": tenant.name if tenant else tenant_id, "controllerId": tenant_id}],
        "policyUrl": POLICY_PATH,
        "services": services,
        "sensitive": True,
        "spiCat": ["biometric"],
        "event": {"type": kind, "at": now.isoformat(timespec="seconds"), **event},
        "verificationKeys": KEYS_PATH,
    }
    receipt = Receipt(
        id=receipt_id, subject_token=subject_token, tenant_id=tenant_id, kind=kind, created_at=now,
        jws=signing_key(session).sign(body),
    )  # fmt: skip
    session.add(receipt)
    session.flush()
    return receipt


def customer_language(session: Session, tenant_id: str, subject_token: str) -> str:
    """The language of the customer's latest receipt (where none: the default), for receipts of events the
    customer did not ask for in a language of their own (a retention purge, a withdrawal over the API)."""
    latest = session.execute(
        select(Receipt)
        .where(Receipt.subject_token == subject_token, Receipt.tenant_id == tenant_id)
        .order_by(Receipt.created_at.desc(), Receipt.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    return DEFAULT_LANGUAGE if latest is None else payload_of(latest).get("language", DEFAULT_LANGUAGE)


def receipts_of(session: Session, tenant_id: str, subject_token: str) -> list[Receipt]:
    query = (
        select(Receipt)
        .where(Receipt.subject_token == subject_token, Receipt.tenant_id == tenant_id)
        .order_by(Receipt.created_at.desc())
    )
    return list(session.execute(query).scalars())


def _canonical(value: dict) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
