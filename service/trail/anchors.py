"""Anchors: signed copies of the audit head, kept outside the database, that pin the trail's length.

The chain and its signed head catch edits, insertions and a cut-off tail, but not this: someone who
can write the database cuts the tail and puts back an older head row, which was legitimately signed
when it was current. An anchor taken earlier (``bioident audit anchor``, stored where that person
cannot write: a ticket, a WORM bucket, a log shipper) shows the trail once reached further, and
``verify-chain --anchors FILE`` fails on it.

An anchor also carries a mark of the destruction ledger (its length and last line, signed with the
ledger's key: ``DestructionLedger.mark``). The ledger's own count lives in the database it protects, so
a ledger cut back together with the database (a restored older backup) agrees with it; the mark shows
that the ledger once held more lines (``verify-chain --anchors``, ``restore --anchors``).
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import asdict, dataclass

from sqlalchemy.orm import Session

from service.store.models import AuditEntry, AuditHead
from service.trail.chain import HEAD_ID, ChainReport, audit_key, head_mac

_HEX = re.compile(r"[0-9a-f]{64}")


class AnchorFileError(ValueError):
    """An anchors file that cannot be read as anchors; the message names the line."""


class _NotAnAnchor(ValueError):
    """What a line is instead of an anchor."""


@dataclass(frozen=True)
class LedgerMark:
    """The destruction ledger's length and its last line's MAC when an anchor was taken, with their MAC."""

    lines: int
    last: str
    mac: str


@dataclass(frozen=True)
class Anchor:
    seq: int
    hash: str
    mac: str
    ledger: LedgerMark | None = None  # anchors taken before 2026-12-06 carry none

    def to_json(self) -> str:
        fields = asdict(self)
        if self.ledger is None:
            del fields["ledger"]
        return json.dumps(fields, sort_keys=True)


def current_anchor(session: Session) -> Anchor | None:
    """The head as an anchor (verify the chain first); None for an empty or unsigned trail."""
    head = session.get(AuditHead, HEAD_ID)
    if head is None or head.last_seq == 0 or head.last_mac is None:
        return None
    return Anchor(head.last_seq, head.last_hash, head.last_mac)


def _hex(value: object, *, empty: bool = False) -> bool:
    """A MAC or hash as written: 64 lowercase hex digits (or, with ``empty``, none)."""
    return isinstance(value, str) and (_HEX.fullmatch(value) is not None or empty and value == "")


def _count(value: object, least: int) -> bool:
    """A JSON integer (not a float, however whole, nor true) of at least ``least``."""
    return type(value) is int and value >= least


def _ledger_mark(fields: object) -> LedgerMark:
    if not (isinstance(fields, dict) and fields.keys() == {"lines", "last", "mac"}):
        raise _NotAnAnchor("its ledger mark is not an object with lines, last and mac")
    if not _count(fields["lines"], 0):
        raise _NotAnAnchor("its ledger mark's lines is not a whole number")
    if not (_hex(fields["last"], empty=True) and _hex(fields["mac"])):
        raise _NotAnAnchor("its ledger mark's last and mac are not a MAC in hex")
    return LedgerMark(fields["lines"], fields["last"], fields["mac"])


def _anchor(fields: object) -> Anchor:
    """The anchor ``bioident audit anchor`` wrote as ``fields``; ``_NotAnAnchor`` says what else they are."""
    if not (isinstance(fields, dict) and fields.keys() in ({"seq", "hash", "mac"}, {"seq", "hash", "mac", "ledger"})):
        raise _NotAnAnchor("it is not a JSON object of seq, hash, mac and a ledger mark, and nothing else")
    if not _count(fields["seq"], 1):
        raise _NotAnAnchor("its seq is not an entry's number (a whole number from 1)")
    if not (_hex(fields["hash"]) and _hex(fields["mac"])):
        raise _NotAnAnchor("its hash and mac are not 64 lowercase hex digits")
    mark = None if "ledger" not in fields else _ledger_mark(fields["ledger"])
    return Anchor(fields["seq"], fields["hash"], fields["mac"], mark)


def parse_anchors(text: str, source: str) -> list[Anchor]:
    """One JSON anchor per line, as ``bioident audit anchor`` prints them; blank lines are skipped."""
    anchors = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            anchors.append(_anchor(json.loads(line)))
        except _NotAnAnchor as exc:
            raise AnchorFileError(f"{source} line {number} is not an anchor: {exc}") from None
        except (ValueError, RecursionError):  # not JSON, or JSON nested too deep or with too long a number
            raise AnchorFileError(f"{source} line {number} is not an anchor: it is not JSON as anchors are") from None
    return anchors


def check_anchors(session: Session, report: ChainReport, anchors: list[Anchor]) -> ChainReport:
    """``report`` (of an intact chain), or the first anchor the trail contradicts."""
    if not report.ok:
        return report
    key = audit_key(session)
    for anchor in sorted(anchors, key=lambda a: a.seq):
        if not hmac.compare_digest(anchor.mac, head_mac(key, anchor.seq, anchor.hash)):
            problem = f"the anchor of entry {anchor.seq} is not signed by this deployment's keyring"
            return ChainReport(False, report.entries, anchor.seq, problem, report.unsigned)
        if anchor.seq > report.entries:
            problem = (
                f"the trail ends at entry {report.entries}, but an anchor shows it reached entry {anchor.seq}: "
                "entries were cut off and an older head put back"
            )
            return ChainReport(False, report.entries, report.entries + 1, problem, report.unsigned)
        entry = session.get(AuditEntry, anchor.seq)
        if entry is None or not hmac.compare_digest(entry.entry_hash, anchor.hash):
            problem = f"entry {anchor.seq} is not the entry its anchor recorded"
            return ChainReport(False, report.entries, anchor.seq, problem, report.unsigned)
    return report
