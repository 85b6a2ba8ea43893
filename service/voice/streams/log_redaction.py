"""Stream ids never reach the log: the id is the audio transport's credential (single-use, but anyone who
reads it in time may connect with it).

uvicorn logs every WebSocket handshake with its path on ``uvicorn.error`` (``"WebSocket /v1/voice/streams/<id>"
[accepted]``, or the close code of a refused one), whatever ``access_log`` says; this filter writes such paths
with the id left out.
"""

from __future__ import annotations

import logging
import re

STREAM_PATH = re.compile(r"(/v1/voice/streams/)[^/?#\s\"]+")
REDACTED = r"\1{id}"
LOGGERS = ("uvicorn.error", "uvicorn.access")


class StreamIdRedaction(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = STREAM_PATH.sub(REDACTED, record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(STREAM_PATH.sub(REDACTED, a) if isinstance(a, str) else a for a in record.args)
        return True


def redact_stream_ids() -> None:
    """Installs the filter on uvicorn's loggers (after uvicorn configured its logging)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, StreamIdRedaction) for f in logger.filters):
            logger.addFilter(StreamIdRedaction())
