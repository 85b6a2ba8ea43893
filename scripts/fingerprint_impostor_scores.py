"""Make biometrics/fingerprint/impostor_scores.json: impostor scores of the fingerprint matcher.

Every pair of impressions of different fingers among the FVC2002 DB1_B, DB2_B and DB3_B images,
extracted and compared as the service does. Run after any change to the extractor or matcher:
``PYTHONPATH=. python scripts/fingerprint_impostor_scores.py ../shared/data/fingerprint/fvc2002 [nbis|leader]``
(LEADER writes impostor_scores_leader.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from biometrics.fingerprint.extraction import extract, extractor_name
from biometrics.fingerprint.images import decode_image
from biometrics.fingerprint.mcc import cylinders
from biometrics.fingerprint.similarity import global_similarity
from biometrics.fingerprint.templates import fingerprint_of

KEEP = 3000


def main(root: Path, extractor: str = "nbis") -> None:
    impressions = []
    for path in sorted(root.glob("DB*_B/*.tif")):
        finger = f"{path.parent.name}/{path.stem.split('_')[0]}"
        impressions.append((finger, cylinders(extract(decode_image(path.read_bytes()), extractor).minutiae)))
    scores = []
    for i, (fa, ca) in enumerate(impressions):
        for fb, cb in impressions[i + 1 :]:
            if fa != fb:
                scores.append(global_similarity(ca, cb))
    scores.sort(reverse=True)
    name = "impostor_scores.json" if extractor == "nbis" else f"impostor_scores_{extractor}.json"
    out = Path(__file__).resolve().parents[1] / "biometrics" / "fingerprint" / name
    out.write_text(
        json.dumps(
            {
                "fingerprint": fingerprint_of(extractor_name(extractor)),
                "source": "FVC2002 DB1_B+DB2_B+DB3_B, all impressions, all pairs of different fingers",
                "pairs": len(scores),
                "top_scores": [round(s, 6) for s in scores[:KEEP]],
            },
            indent=0,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"{len(scores)} impostor pairs; FMR 1e-3 at {scores[int(1e-3 * len(scores))]:.4f}")


if __name__ == "__main__":
    main(
        Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/fingerprint/fvc2002"),
        sys.argv[2] if len(sys.argv) > 2 else "nbis",
    )
