"""Does a fingerprint threshold set on some sensors hold on another? Leave one FVC2002 set out.

The packaged thresholds (``impostor_scores*.json``) come from the impostor pairs of all three FVC2002 sets,
the same prints the audit measures. This checks how they transfer to prints the threshold never saw: for
each set, the threshold at ``--fmr`` is set on the impostor pairs of the other two sets (every pair of
impressions of different fingers, across those sets too) and the false-match rate is counted on the held-out
set's own impostor pairs, with the false non-match rate on its genuine pairs. Three rules are compared:
the other sets' impostor pairs pooled with pairs across sets (as the packaged tables were first made),
pooled within each set only (one sensor, as at a till), and the highest of the other sets' own thresholds
(the rule shipped in biometrics/fingerprint/operating_points.py). Prints a Markdown table:

``PYTHONPATH=. python scripts/fingerprint_threshold_transfer.py ../shared/data/fingerprint/fvc2002 [leader|nbis]``
"""

from __future__ import annotations

import argparse
from itertools import combinations
from pathlib import Path

from biometrics.fingerprint.extraction import extract
from biometrics.fingerprint.images import decode_image
from biometrics.fingerprint.mcc import cylinders
from biometrics.fingerprint.operating_points import ImpostorTable
from biometrics.fingerprint.similarity import global_similarity


def threshold_at(impostor_scores: list[float], fmr: float) -> float:
    """The threshold the product would set on these impostor scores (an impostor table holding them all)."""
    return ImpostorTable(len(impostor_scores), tuple(sorted(impostor_scores, reverse=True))).threshold(fmr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("extractor", nargs="?", default="leader", choices=("leader", "nbis"))
    parser.add_argument("--fmr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    prints = []  # (set, finger, cylinders)
    for path in sorted(args.root.glob("DB*_B/*.tif")):
        template = cylinders(extract(decode_image(path.read_bytes()), args.extractor).minutiae)
        prints.append((path.parent.name, path.stem.split("_")[0], template))
    genuine: dict[str, list[float]] = {}
    impostor: dict[tuple[str, str], list[float]] = {}  # by the pair of sets, sorted
    for (sa, fa, ca), (sb, fb, cb) in combinations(prints, 2):
        score = global_similarity(ca, cb)
        if (sa, fa) == (sb, fb):
            genuine.setdefault(sa, []).append(score)
        else:
            impostor.setdefault(tuple(sorted((sa, sb))), []).append(score)
    sets = sorted({s for s, _, _ in prints})
    print(f"extractor {args.extractor}, target FMR {args.fmr:g}")
    print(
        "| held out | pairs the threshold is set on | threshold (pairs) | FMR on the held-out set (pairs) "
        "| FNMR there |"
    )
    print("|---|---|---|---|---|")
    for held in sets:
        own = impostor[(held, held)]
        across = [s for pair, scores in impostor.items() if held not in pair for s in scores]
        within = [s for other in sets if other != held for s in impostor[(other, other)]]
        highest = max(threshold_at(impostor[(o, o)], args.fmr) for o in sets if o != held)
        for label, pool, t in (
            ("the other two sets pooled, across sets too", across, threshold_at(across, args.fmr)),
            ("the other two sets pooled, each within itself", within, threshold_at(within, args.fmr)),
            ("the highest of the other two sets' own (the shipped rule)", within, highest),
        ):
            false_matches = sum(s >= t for s in own)
            misses = sum(s < t for s in genuine[held]) / len(genuine[held])
            print(
                f"| {held} | {label} | {t:.4f} ({len(pool)}) | {false_matches / len(own):.2%} "
                f"({false_matches} of {len(own)}) | {misses:.1%} |"
            )
    everything = [s for scores in impostor.values() for s in scores]
    within = [s for o in sets for s in impostor[(o, o)]]
    for label, pool in (("across sets too", everything), ("each within itself", within)):
        print(f"all three sets pooled, {label}: threshold {threshold_at(pool, args.fmr):.4f} ({len(pool)} pairs)")
    shipped = max(threshold_at(impostor[(o, o)], args.fmr) for o in sets)
    print(f"all three sets, the highest set's own threshold (shipped): {shipped:.4f}")

if __name__ == "__main__":
    main()
