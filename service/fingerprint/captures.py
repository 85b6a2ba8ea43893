"""Uploaded fingerprint images: PNG, TIFF or BMP (by their magic), or raw 8-bit grayscale with the
terminal's declared width and height; each becomes the core's analysed capture."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import Form, UploadFile

from biometrics.fingerprint.capture import Capture, analyse_capture
from biometrics.fingerprint.images import decode_image
from biometrics.settings import CoreSettings
from service.errors import QualityFailed
from service.fingerprint.decisions import ProbeFinger


@dataclass(frozen=True)
class ImageFormat:
    """How the images are encoded: a PNG/TIFF/BMP file (both None), or raw 8-bit pixels of this size."""

    width: int | None
    height: int | None


def image_format(
    width: int | None = Form(default=None, ge=1, le=4096, description="raw 8-bit images: pixels per row"),
    height: int | None = Form(default=None, ge=1, le=4096, description="raw 8-bit images: rows"),
) -> ImageFormat:
    return ImageFormat(width, height)


def read_capture(upload: UploadFile, image_format: ImageFormat, settings: CoreSettings) -> Capture:
    """Decodes and analyses one upload with the service's settings (extractor, gates, largest side)."""
    data = upload.file.read()
    image = decode_image(data, width=image_format.width, height=image_format.height, settings=settings)
    return analyse_capture(image, settings=settings)


def probes_of(captures: Sequence[tuple[int | None, Capture]]) -> list[ProbeFinger]:
    """The fingers presented, each usable; else 422 with each unusable capture's reasons."""
    reasons = [
        {**r.as_dict(), "finger": index}
        for index, (_, capture) in enumerate(captures)
        if not capture.usable
        for r in capture.reasons
    ]
    if reasons or any(c.template is None for _, c in captures):
        raise QualityFailed("a finger presented is not usable: capture it again", reasons=reasons)
    return [ProbeFinger(position, capture.template) for position, capture in captures]
