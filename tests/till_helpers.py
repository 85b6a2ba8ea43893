"""The till's building blocks for its tests: real FVC2002 impressions, and consent, enrolment and payment
as a shop's terminal calls them over HTTP."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import SHARED_DATA

FVC = SHARED_DATA / "fingerprint" / "fvc2002"
NOTICE = "We turn two of your fingerprints into a code linked to your card. You can withdraw at any time."


def impression(finger: str, number: int, database: str = "DB1_B") -> Path:
    return FVC / database / f"{finger}_{number}.tif"


def image(field: str, path: Path) -> tuple[str, tuple[str, bytes, str]]:
    return (field, (path.name, path.read_bytes(), "image/tiff"))


def consent(till, reference: str, purpose: str = "payment") -> dict:
    response = till.http.post(
        "/v1/consents",
        json={
            "reference": reference,
            "modality": "fingerprint",
            "purpose": purpose,
            "notice_version": "2026-12",
            "notice_text": NOTICE,
            "channel": "terminal",
            "evidence_ref": "till-3-receipt-991",
        },
        headers=till.headers(),
    )
    assert response.status_code == 201, response.text
    return response.json()


def enrol(
    till, reference: str, first: Path, second: Path, payment_token: str, pin: str | None = None, *, http=None, **extra
):
    """Enrols impressions 1-2 of two fingers (``first``/``second``: impression 1 of each), at positions 2 and 7
    unless ``extra`` says otherwise; through ``http`` (another replica's client) or the till's."""
    files = [image("first_finger", first), image("first_finger", _next(first))]
    files += [image("second_finger", second), image("second_finger", _next(second))]
    data = {
        "reference": reference,
        "first_finger_position": 2,
        "second_finger_position": 7,
        "payment_token": payment_token,
        **({"pin": pin} if pin is not None else {}),
        **extra,
    }
    return (http or till.http).post("/v1/fingerprint/enrol", data=data, files=files, headers=till.headers())


def _next(path: Path) -> Path:
    finger, number = path.stem.split("_")
    return path.with_name(f"{finger}_{int(number) + 1}{path.suffix}")


def pay(till, finger: Path, *, http=None, second: Path | None = None, **fields):
    files = [image("finger", finger)] + ([image("second_finger", second)] if second else [])
    return (http or till.http).post("/v1/fingerprint/pay", data=fields, files=files, headers=till.headers())
