"""Finger-minutiae records: ISO/IEC 19794-2:2005 (read and write) and ANSI INCITS 378-2004 (read and write).

Both formats share the magic ``FMR\\0`` and version ``" 20\\0"``; they differ in the general header
(ISO: 24 bytes with a 4-byte length; ANSI: a CBEFF product id and a 2-byte length, or 0 and a 6-byte
length) and in the angle unit (ISO: 360/256 degrees; ANSI: 2 degrees). Each finger view has a 4-byte
header (position, view number and impression type, quality, minutia count), 6 bytes per minutia and
an extended-data block whose 2-byte length may be 0.

Reading keeps every header field, so ``write_iso(read_iso(b)) == b`` for any valid record: a round trip
is byte-identical. Errors are :class:`FingerprintRecordError` with a message that names the field at
fault and never a minutia's position or angle.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Literal

from biometrics.errors import FingerprintRecordError
from biometrics.fingerprint.minutiae import TWO_PI, Minutia, Minutiae, MinutiaKind

MAGIC = b"FMR\x00"
VERSION = b" 20\x00"
ISO_HEADER = 24
ANSI_HEADER = 26
VIEW_HEADER = 4
MINUTIA_BYTES = 6
ISO_ANGLE_UNITS = 256  # one unit = 360/256 degrees
ANSI_ANGLE_UNITS = 180  # one unit = 2 degrees

RecordFormat = Literal["iso", "ansi"]


@dataclass(frozen=True)
class FingerView:
    """One finger view of a record: its header fields, minutiae and extended data kept as bytes."""

    minutiae: Minutiae
    finger_position: int = 0
    view_number: int = 0
    impression_type: int = 0
    finger_quality: int = 0
    extended_data: bytes = b""
    # The angle of each minutia as stored (units of the format), so writing gives the same bytes.
    raw_angles: tuple[int, ...] | None = None


@dataclass(frozen=True)
class FingerRecord:
    """A finger-minutiae record with its general-header fields."""

    width: int
    height: int
    x_resolution_ppcm: int
    y_resolution_ppcm: int
    views: tuple[FingerView, ...]
    capture_equipment: int = 0  # 4-bit compliance and 12-bit equipment id, as one 16-bit field
    reserved: int = 0
    product_id: int = 0  # ANSI only: CBEFF product identifier (owner and type)
    format: RecordFormat = "iso"
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def resolution_dpi(self) -> int:
        return ppcm_to_dpi(self.x_resolution_ppcm)


def ppcm_to_dpi(ppcm: int) -> int:
    return int(round(ppcm * 2.54))


def dpi_to_ppcm(dpi: int) -> int:
    return int(round(dpi / 2.54))


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise FingerprintRecordError(
                f"record is truncated: {what} needs {n} bytes at offset {self.pos}, "
                f"only {len(self.data) - self.pos} left"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return struct.unpack(">H", self.take(2, what))[0]

    def u32(self, what: str) -> int:
        return struct.unpack(">I", self.take(4, what))[0]


def _check_magic(data: bytes) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FingerprintRecordError("a minutiae record must be bytes")
    if len(data) < 8:
        raise FingerprintRecordError("record is truncated: shorter than its format identifier and version")
    if bytes(data[:4]) != MAGIC:
        raise FingerprintRecordError("not a finger-minutiae record: format identifier is not 'FMR'")
    if bytes(data[4:8]) != VERSION:
        raise FingerprintRecordError("unsupported record version: only version 20 (2004/2005 editions) is read")


def _read_views(r: _Reader, count: int, width: int, height: int, dpi: int, angle_units: int) -> tuple[FingerView, ...]:
    if count == 0:
        raise FingerprintRecordError("record holds no finger view")
    views = []
    for v in range(count):
        position = r.u8(f"finger position of view {v}")
        view_impression = r.u8(f"view number of view {v}")
        quality = r.u8(f"finger quality of view {v}")
        n = r.u8(f"minutia count of view {v}")
        if quality > 100:
            raise FingerprintRecordError(f"finger quality of view {v} is above 100")
        if n == 0:
            raise FingerprintRecordError(f"view {v} holds zero minutiae")
        points = []
        raw_angles = []
        for i in range(n):
            b = r.take(MINUTIA_BYTES, f"minutia {i} of view {v}")
            kind_code = b[0] >> 6
            x = ((b[0] & 0x3F) << 8) | b[1]
            y = ((b[2] & 0x3F) << 8) | b[3]
            if b[2] >> 6:
                raise FingerprintRecordError(f"minutia {i} of view {v} has its reserved bits set")
            if kind_code == 3:
                raise FingerprintRecordError(f"minutia {i} of view {v} has an unknown minutia type (code 3)")
            if b[4] >= angle_units:
                raise FingerprintRecordError(f"minutia {i} of view {v} has an angle outside the format's range")
            if b[5] > 100:
                raise FingerprintRecordError(f"minutia {i} of view {v} has a quality above 100")
            if (width and x >= width) or (height and y >= height):
                raise FingerprintRecordError(
                    f"minutia {i} of view {v} lies outside the {width}x{height} image"
                )
            angle = b[4] * TWO_PI / angle_units
            points.append(Minutia(x, y, angle, MinutiaKind(kind_code), b[5]))
            raw_angles.append(b[4])
        ext_len = r.u16(f"extended data length of view {v}")
        extended = r.take(ext_len, f"extended data of view {v}")
        views.append(
            FingerView(
                minutiae=Minutiae(width, height, dpi, tuple(points)),
                finger_position=position,
                view_number=view_impression >> 4,
                impression_type=view_impression & 0x0F,
                finger_quality=quality,
                extended_data=extended,
                raw_angles=tuple(raw_angles),
            )
        )
    return tuple(views)


def read_iso(data: bytes) -> FingerRecord:
    """Parse an ISO/IEC 19794-2:2005 finger-minutiae record."""
    _check_magic(data)
    r = _Reader(bytes(data))
    r.take(8, "format identifier")
    _check_length(r.u32("record length"), data)
    equipment, width, height, xres, yres, reserved, views = _rest_of_record(r, data, ISO_ANGLE_UNITS)
    return FingerRecord(width, height, xres, yres, views, equipment, reserved, 0, "iso")


def read_ansi(data: bytes) -> FingerRecord:
    """Parse an ANSI INCITS 378-2004 finger-minutiae record."""
    _check_magic(data)
    r = _Reader(bytes(data))
    r.take(8, "format identifier")
    length = r.u16("record length")
    long_length = length == 0
    if long_length:
        length = r.u32("extended record length")
    _check_length(length, data)
    product = r.u32("CBEFF product identifier")
    equipment, width, height, xres, yres, reserved, views = _rest_of_record(r, data, ANSI_ANGLE_UNITS)
    return FingerRecord(
        width, height, xres, yres, views, equipment, reserved, product, "ansi", {"long_length": int(long_length)}
    )


def _check_length(length: int, data: bytes) -> None:
    if length != len(data):
        raise FingerprintRecordError(
            f"record length field says {length} bytes but the record has {len(data)}"
        )


def _rest_of_record(r: _Reader, data: bytes, angle_units: int) -> tuple:
    """The header fields both formats share (from the capture equipment on) and the finger views."""
    equipment = r.u16("capture equipment")
    width = r.u16("image width")
    height = r.u16("image height")
    xres = r.u16("x resolution")
    yres = r.u16("y resolution")
    count = r.u8("number of finger views")
    reserved = r.u8("reserved byte")
    if xres == 0 or yres == 0:
        raise FingerprintRecordError("record resolution is zero")
    views = _read_views(r, count, width, height, ppcm_to_dpi(xres), angle_units)
    if r.pos != len(data):
        raise FingerprintRecordError(
            f"record length disagrees with its views: {len(data) - r.pos} bytes after the last view"
        )
    return equipment, width, height, xres, yres, reserved, views


def read_record(data: bytes, format: RecordFormat = "iso") -> FingerRecord:
    if format == "iso":
        return read_iso(data)
    if format == "ansi":
        return read_ansi(data)
    raise FingerprintRecordError("record format must be 'iso' or 'ansi'")


def _angle_unit(view: FingerView, i: int, p: Minutia, units: int, same_format: bool) -> int:
    if same_format and view.raw_angles is not None and i < len(view.raw_angles):
        stored = view.raw_angles[i]
        if math.isclose(stored * TWO_PI / units, p.angle, abs_tol=1e-9):
            return stored
    return int(round(p.angle * units / TWO_PI)) % units


def _views_bytes(record: FingerRecord, units: int, fmt: RecordFormat) -> bytes:
    if not record.views:
        raise FingerprintRecordError("record holds no finger view")
    if len(record.views) > 255:
        raise FingerprintRecordError("a record holds at most 255 finger views")
    out = bytearray()
    same = record.format == fmt
    for v, view in enumerate(record.views):
        pts = view.minutiae.points
        if not 0 < len(pts) <= 255:
            raise FingerprintRecordError(f"view {v} must hold 1 to 255 minutiae")
        out += bytes(
            [view.finger_position, (view.view_number << 4) | view.impression_type, view.finger_quality, len(pts)]
        )
        for i, p in enumerate(pts):
            x_limit = min(record.width or 0x4000, 0x4000)
            y_limit = min(record.height or 0x4000, 0x4000)
            if not (0 <= p.x < x_limit and 0 <= p.y < y_limit):
                raise FingerprintRecordError(
                    f"minutia {i} of view {v} lies outside the {record.width}x{record.height} image"
                )
            out += struct.pack(
                ">HHBB",
                (int(p.kind) << 14) | p.x,
                p.y,
                _angle_unit(view, i, p, units, same),
                p.quality,
            )
        if len(view.extended_data) > 0xFFFF:
            raise FingerprintRecordError(f"extended data of view {v} is too long")
        out += struct.pack(">H", len(view.extended_data)) + view.extended_data
    return bytes(out)


def write_iso(record: FingerRecord) -> bytes:
    """Serialise as an ISO/IEC 19794-2:2005 record."""
    body = _views_bytes(record, ISO_ANGLE_UNITS, "iso")
    header = MAGIC + VERSION + struct.pack(
        ">IHHHHHBB",
        ISO_HEADER + len(body),
        record.capture_equipment,
        record.width,
        record.height,
        record.x_resolution_ppcm,
        record.y_resolution_ppcm,
        len(record.views),
        record.reserved,
    )
    return header + body


def write_ansi(record: FingerRecord) -> bytes:
    """Serialise as an ANSI INCITS 378-2004 record (2-byte length, or 0 and 4 bytes when longer)."""
    body = _views_bytes(record, ANSI_ANGLE_UNITS, "ansi")
    rest = struct.pack(
        ">IHHHHHBB",
        record.product_id,
        record.capture_equipment,
        record.width,
        record.height,
        record.x_resolution_ppcm,
        record.y_resolution_ppcm,
        len(record.views),
        record.reserved,
    )
    total = 8 + 2 + len(rest) + len(body)
    if total <= 0xFFFF and not record.extra.get("long_length"):
        length = struct.pack(">H", total)
    else:
        length = struct.pack(">HI", 0, total + 4)
    return MAGIC + VERSION + length + rest + body


def record_from_minutiae(
    minutiae: Minutiae, *, finger_position: int = 0, format: RecordFormat = "iso"
) -> FingerRecord:
    """A one-view record for minutiae measured on an image."""
    ppcm = dpi_to_ppcm(minutiae.resolution_dpi)
    return FingerRecord(
        minutiae.width,
        minutiae.height,
        ppcm,
        ppcm,
        (FingerView(minutiae, finger_position=finger_position),),
        format=format,
    )
