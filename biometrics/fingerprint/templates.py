"""Fingerprint templates: the minutiae of one or more impressions of one finger, as versioned bytes.

Layout (big-endian): magic ``BIFP``, format version (1 byte), the length and UTF-8 text of the
extractor+matcher fingerprint, the number of impressions (1 byte), then per impression its width,
height, resolution and minutia count (2 bytes each) and 6 bytes per minutia (x, y, angle in units of
2pi/65536, kind and quality in one byte each... see ``_MINUTIA``), and a CRC-32 of all that precedes.
A template only compares with templates of the same fingerprint: another extractor or matcher
measures different things, and its scores would be meaningless against our thresholds.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

from biometrics.errors import FingerprintTemplateError
from biometrics.fingerprint.minutiae import TWO_PI, Minutia, Minutiae, MinutiaKind

MAGIC = b"BIFP"
FORMAT_VERSION = 1
MATCHER_NAME = "mcc16b-lssr-1"
MAX_IMPRESSIONS = 16
_MINUTIA = struct.Struct(">HHHBB")  # x, y, angle (1/65536 turn), kind, quality
_IMPRESSION = struct.Struct(">HHHH")  # width, height, dpi, count


def fingerprint_of(extractor: str) -> str:
    """The extractor+matcher fingerprint string carried by every template."""
    return f"{extractor}+{MATCHER_NAME}"


class FingerprintTemplate:
    """Impressions of one finger, comparable by :func:`biometrics.fingerprint.matcher.compare`.

    Immutable: :meth:`with_impression` returns a new template (consolidation adds impressions).
    MCC cylinders are computed once per template, on first use, and kept in memory with it.
    """

    __slots__ = ("_cylinders", "fingerprint", "impressions")

    def __init__(self, impressions: Sequence[Minutiae], fingerprint: str) -> None:
        impressions = tuple(impressions)
        if not impressions:
            raise FingerprintTemplateError("a fingerprint template needs at least one impression")
        if len(impressions) > MAX_IMPRESSIONS:
            raise FingerprintTemplateError(f"a fingerprint template holds at most {MAX_IMPRESSIONS} impressions")
        if not fingerprint or len(fingerprint.encode()) > 255:
            raise FingerprintTemplateError("template fingerprint must be 1 to 255 bytes of text")
        for m in impressions:
            if not 0 < len(m.points) <= 0xFFFF:
                raise FingerprintTemplateError("every impression of a template needs minutiae")
        self.impressions: tuple[Minutiae, ...] = impressions
        self.fingerprint = fingerprint
        self._cylinders: tuple | None = None

    def __repr__(self) -> str:  # never the minutiae
        return f"FingerprintTemplate(impressions={len(self.impressions)}, fingerprint={self.fingerprint!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FingerprintTemplate) and self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def with_impression(self, minutiae: Minutiae) -> FingerprintTemplate:
        return FingerprintTemplate((*self.impressions, minutiae), self.fingerprint)

    def cylinders(self) -> tuple:
        """MCC cylinders of every impression (cached)."""
        if self._cylinders is None:
            from biometrics.fingerprint.mcc import cylinders

            self._cylinders = tuple(cylinders(m) for m in self.impressions)
        return self._cylinders

    def to_bytes(self) -> bytes:
        fp = self.fingerprint.encode()
        out = bytearray(MAGIC + bytes([FORMAT_VERSION, len(fp)]) + fp + bytes([len(self.impressions)]))
        for m in self.impressions:
            out += _IMPRESSION.pack(m.width, m.height, m.resolution_dpi, len(m.points))
            for p in m.points:
                angle = int(round(p.angle / TWO_PI * 65536)) % 65536
                out += _MINUTIA.pack(p.x, p.y, angle, int(p.kind), p.quality)
        out += struct.pack(">I", zlib.crc32(bytes(out)))
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes, *, fingerprint: str | None = None) -> FingerprintTemplate:
        """Parse template bytes; ``fingerprint`` (default: the configured image extractor's) must be theirs."""
        from biometrics.fingerprint.extraction import extractor_name
        from biometrics.settings import CoreSettings

        expected = fingerprint or fingerprint_of(extractor_name(CoreSettings().fingerprint_extractor))
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise FingerprintTemplateError("fingerprint template must be bytes")
        data = bytes(data)
        if len(data) < 11 or data[:4] != MAGIC:
            raise FingerprintTemplateError("not a fingerprint template")
        if data[4] != FORMAT_VERSION:
            raise FingerprintTemplateError(f"fingerprint template format version {data[4]} is not supported")
        body, crc = data[:-4], struct.unpack(">I", data[-4:])[0]
        if zlib.crc32(body) != crc:
            raise FingerprintTemplateError("fingerprint template is damaged (checksum mismatch)")
        n_fp = data[5]
        pos = 6 + n_fp
        try:
            found = body[6:pos].decode()
        except UnicodeDecodeError as exc:
            raise FingerprintTemplateError("fingerprint template is damaged (fingerprint text)") from exc
        if found != expected:
            raise FingerprintTemplateError(
                f"fingerprint template was made by {found!r}, not {expected!r}: compare only like with like"
            )
        try:
            count = body[pos]
            pos += 1
            impressions = []
            for _ in range(count):
                width, height, dpi, n = _IMPRESSION.unpack_from(body, pos)
                pos += _IMPRESSION.size
                points = []
                for _ in range(n):
                    x, y, angle, kind, quality = _MINUTIA.unpack_from(body, pos)
                    pos += _MINUTIA.size
                    points.append(Minutia(x, y, angle * TWO_PI / 65536, MinutiaKind(kind), quality))
                impressions.append(Minutiae(width, height, dpi, tuple(points)))
        except (struct.error, IndexError, ValueError) as exc:
            raise FingerprintTemplateError("fingerprint template is damaged (truncated or bad field)") from exc
        if pos != len(body):
            raise FingerprintTemplateError("fingerprint template is damaged (trailing bytes)")
        return cls(impressions, found)


