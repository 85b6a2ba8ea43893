"""Fingerprint at the till (terminal role): enrol two fingers with a payment link, pay by finger.
Images come as multipart form data: PNG, TIFF or BMP files, or raw 8-bit grayscale with width and height."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, UploadFile

from service.auth import Principal, Role
from service.context import ServiceContext
from service.deps import get_ctx, require
from service.errors import ServiceError
from service.fingerprint.captures import ImageFormat, image_format, probes_of, read_capture
from service.fingerprint.enrolment import enrol_fingerprints
from service.fingerprint.payment import pay_with_card, pay_with_finger, pay_with_pin
from service.fingerprint.schemas import FingerprintEnrolmentOut, PaymentDecisionOut
from service.schemas import PURPOSE_LIMITS, REFERENCE_LIMITS

router = APIRouter(prefix="/v1/fingerprint", tags=["fingerprint"])
terminal = require(Role.TERMINAL)
PAYMENT_PURPOSE = {**PURPOSE_LIMITS, "default": "payment"}
TOKEN_HELP = "the acquirer's or network's payment token for the card; a card number is refused (422)"
PIN_HELP = "4-6 digits; stored only as an argon2id hash"
POSITION = {"ge": 1, "le": 10, "description": "ISO/IEC 19794-2 finger position (1 right thumb ... 10 left little)"}
REPLACE_HELP = "replace enrolled fingers (a re-enrolment: needs consent recorded since they were enrolled)"


def _captures(ctx: ServiceContext, uploads: list[UploadFile], fmt: ImageFormat) -> list:
    limit = ctx.settings.fingerprint_max_captures
    if len(uploads) > limit:
        raise ServiceError(f"at most {limit} captures per finger")
    return [read_capture(upload, fmt, ctx.settings) for upload in uploads]


@router.post("/enrol", status_code=201, response_model=FingerprintEnrolmentOut)
def enrol(
    reference: str = Form(**REFERENCE_LIMITS),
    purpose: str = Form(**PAYMENT_PURPOSE),
    first_finger_position: int = Form(**POSITION),
    first_finger: list[UploadFile] = File(description="two or more captures of the first finger"),
    second_finger_position: int = Form(**POSITION),
    second_finger: list[UploadFile] = File(description="two or more captures of the second finger"),
    payment_token: str = Form(min_length=1, max_length=200, description=TOKEN_HELP),
    pin: str | None = Form(default=None, max_length=6, description=PIN_HELP),
    replace: bool = Form(default=False, description=REPLACE_HELP),
    fmt: ImageFormat = Depends(image_format),
    ctx: ServiceContext = Depends(get_ctx),
    actor: Principal = Depends(terminal),
) -> dict:
    if first_finger_position == second_finger_position:
        raise ServiceError("enrol two different fingers: the finger positions must differ")

    def fingers() -> dict:
        return {
            first_finger_position: _captures(ctx, first_finger, fmt),
            second_finger_position: _captures(ctx, second_finger, fmt),
        }

    return enrol_fingerprints(ctx, actor, reference, purpose, fingers, payment_token, pin, replace=replace).as_dict()


@router.post("/pay", response_model=PaymentDecisionOut)
def pay(
    finger: UploadFile = File(description="a capture of one of the customer's enrolled fingers"),
    finger_position: int | None = Form(default=None, **POSITION),
    second_finger: UploadFile | None = File(
        default=None, description="optional: the other finger, for a fused decision"
    ),
    second_finger_position: int | None = Form(default=None, **POSITION),
    payment_token: str | None = Form(
        default=None, min_length=1, max_length=200, description="card presented: " + TOKEN_HELP
    ),
    pin: str | None = Form(default=None, max_length=6, description="finger + PIN: " + PIN_HELP),
    purpose: str = Form(**PAYMENT_PURPOSE),
    fmt: ImageFormat = Depends(image_format),
    ctx: ServiceContext = Depends(get_ctx),
    actor: Principal = Depends(terminal),
) -> dict:
    """With ``payment_token``: card + finger (1:1). With ``pin``: finger + PIN. With neither: finger only (1:N)."""
    if payment_token is not None and pin is not None:
        raise ServiceError("send payment_token (card presented) or pin (finger + PIN), not both")
    if second_finger is None and second_finger_position is not None:
        raise ServiceError("second_finger_position was sent without a second_finger")
    if second_finger is not None and finger_position is not None and finger_position == second_finger_position:
        raise ServiceError("the two fingers presented must be different fingers: their positions must differ")
    presented = [(finger_position, finger)]
    if second_finger is not None:
        presented.append((second_finger_position, second_finger))

    def probes() -> list:
        return probes_of([(position, read_capture(upload, fmt, ctx.settings)) for position, upload in presented])

    if payment_token is not None:
        decision = pay_with_card(ctx, actor, purpose, payment_token, probes)
    elif pin is not None:
        decision = pay_with_pin(ctx, actor, purpose, pin, probes)
    else:
        decision = pay_with_finger(ctx, actor, purpose, probes)
    ctx.decided(f"fingerprint.pay.{decision.mode}", decision.decision)
    return decision.as_dict()
