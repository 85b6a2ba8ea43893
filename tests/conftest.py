from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BIOIDENT_SHARED_DATA", REPO.parent / "shared" / "data"))
LIBRISPEECH = SHARED_DATA / "speech" / "librispeech"
TEST_OTHER = LIBRISPEECH / "test-other"
COHORT_DIR = LIBRISPEECH / "cohort"
FSDD = SHARED_DATA / "speech" / "fsdd" / "recordings"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA} (set BIOIDENT_SHARED_DATA)")
    return SHARED_DATA
