"""ISO/IEC 19794-2:2005 and ANSI INCITS 378-2004 records: real files round-trip, bad records say what is wrong."""

from __future__ import annotations

import struct

import pytest

from biometrics.errors import FingerprintRecordError
from biometrics.fingerprint.minutiae import Minutia, Minutiae, MinutiaKind
from biometrics.fingerprint.records import (
    FingerRecord,
    FingerView,
    read_ansi,
    read_iso,
    record_from_minutiae,
    write_ansi,
    write_iso,
)

FVC = ("DB1_B", "DB2_B", "DB3_B")


@pytest.fixture(scope="module")
def iso_files(shared_data):
    files = sorted(p for db in FVC for p in (shared_data / "fingerprint" / "fvc2002" / db).glob("*.iso"))
    assert len(files) == 240
    return files


@pytest.fixture(scope="module")
def real_record(iso_files) -> bytes:
    return iso_files[0].read_bytes()


def test_every_real_iso_record_reads_and_writes_back_to_identical_bytes(iso_files):
    for path in iso_files:
        data = path.read_bytes()
        record = read_iso(data)
        assert len(record.views) == 1 and len(record.views[0].minutiae) > 0
        assert write_iso(record) == data, path.name


def test_real_minutiae_survive_an_ansi_record(iso_files):
    for path in iso_files[::7]:
        iso = read_iso(path.read_bytes())
        ansi_bytes = write_ansi(iso)
        assert ansi_bytes[8:10] == struct.pack(">H", len(ansi_bytes))  # short length form
        ansi = read_ansi(ansi_bytes)
        assert write_ansi(ansi) == ansi_bytes
        a, b = iso.views[0].minutiae.points, ansi.views[0].minutiae.points
        assert [(p.x, p.y, p.kind, p.quality) for p in a] == [(p.x, p.y, p.kind, p.quality) for p in b]
        # ANSI stores angles in 2-degree units: at most one unit away after conversion
        for p, q in zip(a, b, strict=True):
            diff = abs((p.angle - q.angle + 3.14159) % 6.28318 - 3.14159)
            assert diff <= 0.0175 + 1e-6
        assert (ansi.width, ansi.height, ansi.resolution_dpi) == (iso.width, iso.height, iso.resolution_dpi)


def test_an_iso_record_is_not_read_as_ansi_nor_the_reverse(real_record):
    with pytest.raises(FingerprintRecordError, match="length"):
        read_ansi(real_record)
    with pytest.raises(FingerprintRecordError, match="length"):
        read_iso(write_ansi(read_iso(real_record)))


def test_records_written_from_minutiae_read_back():
    points = tuple(Minutia(10 * i + 5, 7 * i + 3, i * 0.4, MinutiaKind(1 + i % 2), 50 + i) for i in range(12))
    minutiae = Minutiae(300, 300, 500, points)
    for write, read in ((write_iso, read_iso), (write_ansi, read_ansi)):
        back = read(write(record_from_minutiae(minutiae, finger_position=2))).views[0]
        assert back.finger_position == 2
        assert [(p.x, p.y, p.kind) for p in back.minutiae.points] == [(p.x, p.y, p.kind) for p in points]


def _patched(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


def _with_length(data: bytes) -> bytes:
    return _patched(data, 8, struct.pack(">I", len(data)))


FIRST_MINUTIA = 24 + 4


def test_wrong_magic_and_version_are_named(real_record):
    with pytest.raises(FingerprintRecordError, match="format identifier"):
        read_iso(b"XYZ\x00" + real_record[4:])
    with pytest.raises(FingerprintRecordError, match="version"):
        read_iso(real_record[:4] + b" 30\x00" + real_record[8:])
    with pytest.raises(FingerprintRecordError, match="format identifier"):
        read_iso(b"\x89PNG\r\n\x1a\n" + real_record[8:])


def test_a_length_field_that_disagrees_with_the_data_is_named(real_record):
    with pytest.raises(FingerprintRecordError, match="record length field says"):
        read_iso(_patched(real_record, 8, struct.pack(">I", len(real_record) + 6)))
    # One minutia more in the count than in the data (length adjusted): the view runs out of bytes.
    count = real_record[27]
    with pytest.raises(FingerprintRecordError, match="truncated"):
        read_iso(_patched(real_record, 27, bytes([count + 1])))
    # One fewer: bytes are left over after the last view.
    with pytest.raises(FingerprintRecordError, match="disagrees|extended data"):
        read_iso(_patched(real_record, 27, bytes([count - 1])))


def test_zero_minutiae_is_refused(real_record):
    record = read_iso(real_record)
    empty = bytes(real_record[:24]) + bytes([0, 0, 0, 0]) + b"\x00\x00"
    with pytest.raises(FingerprintRecordError, match="zero minutiae"):
        read_iso(_with_length(empty))
    assert record.views  # the real one is fine


def test_a_minutia_outside_the_image_is_refused(real_record):
    width = struct.unpack(">H", real_record[14:16])[0]
    first = real_record[FIRST_MINUTIA : FIRST_MINUTIA + 2]
    kind_bits = first[0] & 0xC0
    outside = struct.pack(">H", (kind_bits << 8) | width)
    with pytest.raises(FingerprintRecordError, match="outside the 300x400 image"):
        read_iso(_patched(real_record, FIRST_MINUTIA, outside))


def test_an_unknown_minutia_type_is_refused(real_record):
    first = real_record[FIRST_MINUTIA]
    with pytest.raises(FingerprintRecordError, match="unknown minutia type"):
        read_iso(_patched(real_record, FIRST_MINUTIA, bytes([first | 0xC0])))


@pytest.mark.parametrize("cut", [1, 6, 20, 40])
def test_truncated_records_are_refused(real_record, cut):
    short = _with_length(real_record[:-cut])
    with pytest.raises(FingerprintRecordError, match="truncated|disagrees"):
        read_iso(short)
    with pytest.raises(FingerprintRecordError):
        read_iso(real_record[:-cut])


def test_error_messages_name_the_field_not_its_value(real_record):
    first = real_record[FIRST_MINUTIA]
    with pytest.raises(FingerprintRecordError) as caught:
        read_iso(_patched(real_record, FIRST_MINUTIA, bytes([first | 0xC0])))
    assert caught.value.message == "minutia 0 of view 0 has an unknown minutia type (code 3)"


def test_writer_refuses_what_it_cannot_encode():
    point = Minutia(400, 10, 0.0, MinutiaKind.ENDING, 50)
    record = FingerRecord(300, 300, 197, 197, (FingerView(Minutiae(300, 300, 500, (point,))),))
    with pytest.raises(FingerprintRecordError, match="outside"):
        write_iso(record)
