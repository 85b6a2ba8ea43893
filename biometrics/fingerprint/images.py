"""Fingerprint images: PNG, TIFF or BMP recognised by their magic bytes, or raw 8-bit with width and height.

Every image becomes an 8-bit grayscale array; colour images are converted. Errors are
:class:`FingerprintImageError` with a message that says what is wrong with the bytes, never what
they show.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np

from biometrics.errors import FingerprintImageError
from biometrics.settings import CoreSettings

MIN_SIDE = 64
DEFAULT_DPI = 500

_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"BM": "BMP",
}


@dataclass(frozen=True)
class FingerprintImage:
    """An 8-bit grayscale impression: ``pixels`` is ``(height, width)`` uint8, row 0 at the top."""

    pixels: np.ndarray
    resolution_dpi: int = DEFAULT_DPI

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    def to_png(self) -> bytes:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(self.pixels, mode="L").save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()


def image_format(data: bytes) -> str | None:
    """``"PNG"``, ``"TIFF"`` or ``"BMP"`` from the magic bytes, else None."""
    for magic, name in _MAGIC.items():
        if data[: len(magic)] == magic:
            return name
    return None


def _check_side(width: int, height: int, max_side: int) -> None:
    if width < MIN_SIDE or height < MIN_SIDE:
        raise FingerprintImageError(
            f"fingerprint image is {width}x{height} pixels; each side must be at least {MIN_SIDE}"
        )
    if width > max_side or height > max_side:
        raise FingerprintImageError(
            f"fingerprint image is {width}x{height} pixels; each side must be at most {max_side}"
        )


def _check_pixels(width: int, height: int, dpi: int, max_pixels: int) -> None:
    """The extractors resample to 500 dpi, where their time and memory grow with the pixels: bound those."""
    at_500 = width * height * (DEFAULT_DPI / dpi) ** 2
    if at_500 > max_pixels:
        side_mm = (max_pixels**0.5) * 25.4 / DEFAULT_DPI
        raise FingerprintImageError(
            f"fingerprint image is {width}x{height} pixels at {dpi} dpi ({at_500 / 1e6:.2f} megapixels at 500 dpi); "
            f"at most {max_pixels / 1e6:.2f} megapixels at 500 dpi (a {side_mm:.0f} mm square) are analysed: "
            "send the finger's area, not more"
        )


def decode_image(
    data: bytes,
    *,
    width: int | None = None,
    height: int | None = None,
    resolution_dpi: int | None = None,
    settings: CoreSettings | None = None,
) -> FingerprintImage:
    """Decode an impression. With ``width`` and ``height`` the bytes are raw 8-bit pixels, row by row."""
    settings = settings or CoreSettings()
    max_side, max_pixels = settings.fingerprint_max_image_side, settings.fingerprint_max_pixels
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FingerprintImageError("fingerprint image must be bytes")
    data = bytes(data)
    if not data:
        raise FingerprintImageError("fingerprint image is empty")
    if (width is None) != (height is None):
        raise FingerprintImageError("a raw fingerprint image needs both width and height")
    if width is not None and height is not None:
        if image_format(data) is not None:
            raise FingerprintImageError(
                f"bytes are a {image_format(data)} file, not raw pixels: send it without width and height"
            )
        _check_side(width, height, max_side)
        if len(data) != width * height:
            raise FingerprintImageError(
                f"raw image of {width}x{height} needs {width * height} bytes, got {len(data)}"
            )
        _check_pixels(width, height, resolution_dpi or DEFAULT_DPI, max_pixels)
        pixels = np.frombuffer(data, dtype=np.uint8).reshape(height, width).copy()
        return FingerprintImage(pixels, resolution_dpi or DEFAULT_DPI)

    kind = image_format(data)
    if kind is None:
        raise FingerprintImageError(
            "fingerprint image is not PNG, TIFF or BMP (for raw 8-bit pixels give width and height)"
        )
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                _check_side(img.width, img.height, max_side)
                dpi = resolution_dpi or _dpi_of(img)
                _check_pixels(img.width, img.height, dpi, max_pixels)
                gray = img.convert("L")
                gray.load()
                pixels = np.asarray(gray, dtype=np.uint8).copy()
    except FingerprintImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise FingerprintImageError(f"{kind} fingerprint image cannot be decoded: it is damaged or truncated") from exc
    return FingerprintImage(pixels, dpi)


def _dpi_of(img: object) -> int:
    """The resolution the file states when it is plausible for a fingerprint scanner, else 500."""
    info = getattr(img, "info", {}) or {}
    dpi = info.get("dpi")
    try:
        value = int(round(float(dpi[0]))) if dpi else 0
    except (TypeError, ValueError, IndexError, OverflowError):  # OverflowError: a stated resolution of infinity
        value = 0
    return value if 250 <= value <= 2000 else DEFAULT_DPI
