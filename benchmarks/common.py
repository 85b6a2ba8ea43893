"""What the benchmarks share: where the repository and the shared speech are, and how results are written."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_OTHER = REPO.parent / "shared" / "data" / "speech" / "librispeech" / "test-other"
RESULTS_DIR = REPO / "benchmarks" / "results"


def write_results(out: Path, results: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")
