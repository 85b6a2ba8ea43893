"""Make biometrics/fingerprint/impostor_scores.json: impostor scores of the fingerprint matcher, per sensor.

For each of the FVC2002 DB1_B, DB2_B and DB3_B sets (one sensor each), every pair of impressions of
different fingers of that set, extracted and compared as the service does (2,880 pairs a set). Pairs
across sets are left out: a deployment compares prints of one sensor, and pairs across sensors score
lower, which would hide a sensor's own tail (biometrics/fingerprint/operating_points.py). Run after any
change to the extractor or matcher:
``PYTHONPATH=. python scripts/fingerprint_impostor_scores.py ../shared/data/fingerprint/fvc2002 [nbis|leader]``
(LEADER writes impostor_scores_leader.json).
"""

from __future__ import annotations

import json
import math
import sys
from itertools import combinations
from pathlib import Path

from biometrics.fingerprint.extraction import extract, extractor_name
from biometrics.fingerprint.images import decode_image
from biometrics.fingerprint.mcc import cylinders
from biometrics.fingerprint.similarity import global_similarity
from biometrics.fingerprint.templates import fingerprint_of


def main(root: Path, extractor: str = "nbis") -> None:
    sensors: dict[str, list] = {}
    for path in sorted(root.glob("DB*_B/*.tif")):
        template = cylinders(extract(decode_image(path.read_bytes()), extractor).minutiae)
        sensors.setdefault(path.parent.name, []).append((path.stem.split("_")[0], template))
    tables = {}
    for sensor, impressions in sensors.items():
        scores = sorted(
            (global_similarity(ca, cb) for (fa, ca), (fb, cb) in combinations(impressions, 2) if fa != fb),
            reverse=True,
        )
        tables[sensor] = {"pairs": len(scores), "top_scores": [round(s, 6) for s in scores]}
        at = scores[int(1e-3 * len(scores))]
        print(f"{sensor}: {len(scores)} impostor pairs; FMR 1e-3 just above {at:.4f}")
    name = "impostor_scores.json" if extractor == "nbis" else f"impostor_scores_{extractor}.json"
    out = Path(__file__).resolve().parents[1] / "biometrics" / "fingerprint" / name
    document = {
        "fingerprint": fingerprint_of(extractor_name(extractor)),
        "source": "FVC2002 DB1_B, DB2_B, DB3_B: per set, every pair of impressions of different fingers",
        "sensors": tables,
    }
    out.write_text(json.dumps(document, indent=0) + "\n", encoding="utf-8")
    worst = max(math.nextafter(t["top_scores"][int(1e-3 * t["pairs"])], 1.0) for t in tables.values())
    print(f"wrote {out.name}; FMR 1e-3 threshold (the highest sensor's) {worst:.4f}")


if __name__ == "__main__":
    main(
        Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/fingerprint/fvc2002"),
        sys.argv[2] if len(sys.argv) > 2 else "nbis",
    )
