"""Field types shared by the domains' request bodies. References are accepted, never returned."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field


def _storable(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and no honest field needs one. JSON's \ud800-style escapes decode to lone
    # surrogates, which no UTF-8 encoder (a digest, a database driver) takes.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (a lone surrogate is not)") from None
    return value


Text = Annotated[str, AfterValidator(_storable)]

# Shared with the form fields of the audio routes (service/voice/router.py).
PURPOSE_LIMITS = {"default": "authentication", "min_length": 1, "max_length": 64, "pattern": r"^[a-z0-9][a-z0-9_.-]*$"}
REFERENCE_LIMITS = {"min_length": 1, "max_length": 256, "description": "the client's customer reference; never stored"}
Purpose = Field(**PURPOSE_LIMITS)
Reference = Field(**REFERENCE_LIMITS)
