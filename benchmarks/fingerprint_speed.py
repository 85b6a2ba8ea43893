"""Fingerprint speed: extraction per image, 1:1 comparisons per second, 1:N over 10,000 fingers.

Run from the repository root::

    .venv/bin/python -m benchmarks.fingerprint_speed [--gallery 10000] [--probes N] [--data DIR] [--out PATH]

Real prints are FVC2002 DB1_B-DB3_B (30 fingers, 8 impressions each). The 1:N gallery holds the first
impression of every other finger (15 real enrolled fingers), and distractors up to ``--gallery``:
rotated (up to 45 degrees), translated (up to 60 pixels) and perturbed copies (positions jittered by
up to 4 pixels and directions by up to 0.15 rad, 15 % of minutiae dropped, up to 5 spurious ones added)
of all 8 impressions of the other 15 fingers. Probes are impressions 2-8 of the enrolled fingers, so
no probe is a copy of anything in the gallery; rank-1 counts a probe whose best result is its own
finger's enrolled template. Timings are on this machine as it is (shared with other work when it
is): the table says how loaded it was. This is a benchmark, not a test: it asserts nothing on time.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, RESULTS_DIR, write_results
from benchmarks.host import busy_cpu_s, peak_rss_mb
from biometrics.fingerprint.capture import image_fingerprint
from biometrics.fingerprint.extraction import extract
from biometrics.fingerprint.images import decode_image
from biometrics.fingerprint.index import FingerprintIndex
from biometrics.fingerprint.matcher import compare
from biometrics.fingerprint.minutiae import TWO_PI, Minutia, Minutiae
from biometrics.fingerprint.templates import FingerprintTemplate

DEFAULT_DATA = REPO.parent / "shared" / "data" / "fingerprint" / "fvc2002"
DEFAULT_OUT = RESULTS_DIR / "fingerprint_speed.json"


def perturbed(m: Minutiae, rng: np.random.Generator) -> Minutiae:
    """A rotated, translated, jittered copy with some minutiae dropped and a few spurious ones added."""
    a = m.to_array()
    keep = rng.random(len(a)) > 0.15
    a = a[keep] if keep.sum() >= 12 else a
    rot = rng.uniform(-math.pi / 4, math.pi / 4)
    cx, cy = m.width / 2, m.height / 2
    dx, dy = rng.uniform(-60, 60, 2)
    x, y = a[:, 0] - cx, a[:, 1] - cy
    # image y points down: a counter-clockwise turn of the print is (x, -y) turned by rot
    nx = cx + x * math.cos(rot) + y * math.sin(rot) + dx + rng.uniform(-4, 4, len(a))
    ny = cy - x * math.sin(rot) + y * math.cos(rot) + dy + rng.uniform(-4, 4, len(a))
    angle = (a[:, 2] + rot + rng.uniform(-0.15, 0.15, len(a))) % TWO_PI
    points = [
        Minutia(int(px), int(py), float(t), m.points[0].kind, int(q))
        for px, py, t, q in zip(nx, ny, angle, a[:, 4], strict=True)
        if 0 <= px < m.width and 0 <= py < m.height
    ]
    for _ in range(int(rng.integers(0, 6))):
        x, y = int(rng.integers(0, m.width)), int(rng.integers(0, m.height))
        points.append(Minutia(x, y, float(rng.uniform(0, TWO_PI))))
    return Minutiae(m.width, m.height, m.resolution_dpi, tuple(points))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--gallery", type=int, default=10_000)
    parser.add_argument("--probes", type=int, default=105, help="at most 105 (7 impressions of 15 fingers)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    results: dict = {"cpus": os.cpu_count()}

    paths = sorted(args.data.glob("DB*_B/*.tif"))
    busy0, t0 = busy_cpu_s(), time.perf_counter()
    minutiae: dict[tuple[str, int], Minutiae] = {}
    times = []
    for path in paths:
        finger, impression = path.stem.split("_")
        start = time.perf_counter()
        result = extract(decode_image(path.read_bytes()))
        times.append(time.perf_counter() - start)
        minutiae[(f"{path.parent.name}/{finger}", int(impression))] = result.minutiae
    wall = time.perf_counter() - t0
    results["extraction"] = {
        "images": len(times),
        "ms_per_image_p50": 1000 * float(np.median(times)),
        "ms_per_image_mean": 1000 * float(np.mean(times)),
        "machine_busy_cores": (busy_cpu_s() - busy0) / wall,  # ours included
    }

    fingers = sorted({f for f, _ in minutiae})
    enrolled, sources = fingers[::2], fingers[1::2]
    template = {k: FingerprintTemplate((m,), image_fingerprint()) for k, m in minutiae.items()}
    for t in template.values():
        t.cylinders()
    pairs = [(template[(a, 1)], template[(b, 2)]) for a in fingers for b in fingers]
    start = time.perf_counter()
    done = 0
    while time.perf_counter() - start < 3.0:
        p, r = pairs[done % len(pairs)]
        compare(p, r)
        done += 1
    results["one_to_one"] = {"comparisons_per_s": done / (time.perf_counter() - start)}

    index = FingerprintIndex()
    for f in enrolled:
        index.add(f"real:{f}", template[(f, 1)])
    copies = []
    i = 0
    while len(index) < args.gallery:
        f = sources[i % len(sources)]
        impression = 1 + (i // len(sources)) % 8
        copies.append(FingerprintTemplate((perturbed(minutiae[(f, impression)], rng),), image_fingerprint()))
        index.add(f"copy{i}:{f}", copies[-1])
        i += 1
    probes = [(f, template[(f, k)]) for f in enrolled for k in range(2, 9)][: args.probes]
    busy0, t0 = busy_cpu_s(), time.perf_counter()
    latencies, hits, ranks = [], 0, []
    for f, probe in probes:
        start = time.perf_counter()
        found = index.search(probe, limit=5)
        latencies.append(time.perf_counter() - start)
        hits += bool(found) and found[0][0] == f"real:{f}"
        keys = [k for k, _ in found]
        ranks.append(keys.index(f"real:{f}") + 1 if f"real:{f}" in keys else None)
    wall = time.perf_counter() - t0
    results["one_to_n"] = {
        "gallery": len(index),
        "probes": len(probes),
        "ms_per_search_p50": 1000 * float(np.median(latencies)),
        "ms_per_search_p95": 1000 * float(np.percentile(latencies, 95)),
        "rank1": hits / len(probes),
        "rank5": sum(r is not None for r in ranks) / len(probes),
        "shortlist": index.shortlist,
        "machine_busy_cores": (busy_cpu_s() - busy0) / wall,  # ours included
    }
    results["peak_rss_mb"] = peak_rss_mb()
    e, o, n = results["extraction"], results["one_to_one"], results["one_to_n"]
    print(f"{'measure':<44}{'value':>12}")
    print(f"{'extraction, ms per image (p50)':<44}{e['ms_per_image_p50']:>12.1f}")
    print(f"{'1:1 comparisons per second':<44}{o['comparisons_per_s']:>12.0f}")
    print(f"{'1:N over ' + str(n['gallery']) + ', ms per search (p50)':<44}{n['ms_per_search_p50']:>12.1f}")
    print(f"{'1:N, ms per search (p95)':<44}{n['ms_per_search_p95']:>12.1f}")
    print(f"{'1:N rank-1 / rank-5 of real probes':<44}{n['rank1']:>6.3f} / {n['rank5']:.3f}")
    print(f"{'busy cores during 1:N (all processes)':<44}{n['machine_busy_cores']:>12.2f}")
    print(f"{'load average (1 min) at the end':<44}{os.getloadavg()[0]:>12.1f}")
    write_results(args.out, results)


if __name__ == "__main__":
    main()
