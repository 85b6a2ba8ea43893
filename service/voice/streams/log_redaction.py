"""Stream ids never reach the log: the id is the audio transport's credential (single-use, but anyone who
reads it in time may connect with it).

uvicorn logs every WebSocket handshake with its path (``"WebSocket /v1/voice/streams/<id>" [accepted]``, or
the close code of a refused one) on ``uvicorn.error``, whatever ``access_log`` says; the filter on its
handlers writes such paths with the id left out, percent-encoded ones too (the log shows the raw path, the
router takes the decoded one).
"""

from __future__ import annotations

import copy
import logging
import re
from urllib.parse import unquote

STREAM_PATH = re.compile(r"(/v1/voice/streams/)[^/?#\s\"]+")
REDACTED = r"\1{id}"


def _redacted(text: str) -> str:
    decoded = unquote(text)
    return STREAM_PATH.sub(REDACTED, decoded) if STREAM_PATH.search(decoded) else text


class StreamIdRedaction(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _redacted(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(a) if isinstance(a, str) else a for a in record.args)
        return True


def uvicorn_log_config() -> dict:
    """uvicorn's own logging configuration, with the redaction on each of its handlers."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["stream_ids"] = {"()": StreamIdRedaction}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("stream_ids")
    return config
