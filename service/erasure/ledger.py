"""The destruction ledger: one signed JSON line per data key a withdrawal destroyed, kept outside the database.

A withdrawal that destroys a data key appends its line, synced to disk, before its transaction commits,
so a crash leaves at worst a line for a withdrawal the database does not show yet: the next start (or
the next ``bioident restore``) completes it. The ledger lives where the database's writers and its
backups do not reach (``BIOIDENT_LEDGER_FILE``), so a database put back from a backup cannot bring a
withdrawn subject back: every start replays the ledger over it first (``service.erasure.destruction``).

Each line carries an HMAC under a key derived from the keyring (its own label), so lines cannot be
forged without the keyring. A line that does not verify stops every start: it is never skipped. Lines
removed from the ledger are not caught by their MACs; the database counts the lines its withdrawals
appended, so a ledger shorter than that count (cut, lost, or another file) is refused too.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from service.erasure.errors import LedgerError
from service.settings import ServiceSettings
from service.trail.anchors import LedgerMark
from service.vault import Keyring
from service.vault.keyring import fsync_directory

_FIELDS = ("subject_token", "modality", "key_id", "kek_version", "destroyed_at")


@dataclass(frozen=True)
class Destruction:
    """A data key that was destroyed: whose, for which modality, which key, under which key version, when."""

    subject_token: str
    modality: str
    key_id: str
    kek_version: int
    destroyed_at: dt.datetime

    def fields(self) -> dict[str, object]:
        return {
            "subject_token": self.subject_token,
            "modality": self.modality,
            "key_id": self.key_id,
            "kek_version": self.kek_version,
            "destroyed_at": self.destroyed_at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
        }


class DestructionLedger:
    """Append and read the ledger file; build with ``of`` (a deployment's) or directly (a path and a key)."""

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = path
        self._key = key

    @classmethod
    def of(cls, settings: ServiceSettings, keyring: Keyring) -> DestructionLedger:
        return cls(settings.resolved_ledger_file, keyring.ledger_key())

    def append(self, destruction: Destruction) -> None:
        """Adds the destruction's signed line and syncs it to disk; several processes may append at once."""
        fields = destruction.fields()
        line = json.dumps({**fields, "mac": self._mac(fields)}, sort_keys=True).encode() + b"\n"
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd closes
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a torn last line stays a line of its own (and stops the next start)
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_directory(self.path.parent)

    def read(self) -> list[Destruction]:
        """Every line, verified; ``LedgerError`` names the first line that is not one this keyring signed."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")
        if lines[-1]:
            raise LedgerError(
                f"destruction ledger {self.path}: line {len(lines)} is incomplete (written when the process "
                "stopped?); its withdrawal did not commit. Check it and remove that line to start"
            )
        return [self._parse(line, number) for number, line in enumerate(lines[:-1], start=1)]

    def mark(self) -> LedgerMark:
        """The ledger as it is now (every line verified), signed, for an anchor kept outside the database."""
        lines = self.read()
        last = self._mac(lines[-1].fields()) if lines else ""
        return LedgerMark(len(lines), last, self._mark_mac(len(lines), last))

    def contradiction(self, marks: Iterable[LedgerMark]) -> str | None:
        """The first of ``marks`` (taken earlier) this ledger contradicts, said in words; None if none does."""
        if not marks:
            return None  # nothing to hold it to: the ledger is not even read
        lines = self.read()
        for mark in sorted(marks, key=lambda m: m.lines):
            if not hmac.compare_digest(mark.mac, self._mark_mac(mark.lines, mark.last)):
                return f"an anchor's ledger mark ({mark.lines} lines) is not signed by this deployment's keyring"
            if len(lines) < mark.lines:
                return (
                    f"destruction ledger {self.path} has {len(lines)} lines, but an anchor shows it had "
                    f"{mark.lines}: lines were cut off"
                )
            if mark.lines and not hmac.compare_digest(self._mac(lines[mark.lines - 1].fields()), mark.last):
                return (
                    f"line {mark.lines} of destruction ledger {self.path} is not the line an anchor recorded: "
                    "the ledger was replaced"
                )
        return None

    def _mark_mac(self, lines: int, last: str) -> str:
        return self._mac({"anchored_lines": lines, "anchored_last_mac": last})  # keys no ledger line has

    def _parse(self, line: bytes, number: int) -> Destruction:
        where = f"destruction ledger {self.path}: line {number}"
        try:
            record = json.loads(line)
            fields = {name: record[name] for name in _FIELDS}
            mac = record["mac"]
            destruction = Destruction(
                subject_token=str(fields["subject_token"]),
                modality=str(fields["modality"]),
                key_id=str(fields["key_id"]),
                kek_version=int(fields["kek_version"]),
                destroyed_at=dt.datetime.fromisoformat(fields["destroyed_at"]),
            )
        except (ValueError, KeyError, TypeError):
            raise LedgerError(f"{where} is not a ledger line; nothing serves on a ledger that was altered") from None
        if set(record) != {*_FIELDS, "mac"} or not isinstance(mac, str):
            raise LedgerError(f"{where} is not a ledger line; nothing serves on a ledger that was altered")
        if not hmac.compare_digest(mac, self._mac(fields)):
            raise LedgerError(
                f"{where} is not signed by this deployment's keyring (altered or forged); nothing serves on "
                "a ledger that was tampered with: restore the ledger from where it is kept safe"
            )
        return destruction

    def _mac(self, fields: dict[str, object]) -> str:
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
        return hmac.new(self._key, canonical, hashlib.sha256).hexdigest()
