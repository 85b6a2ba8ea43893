"""The serial thread the core runs NBIS on, and captures made from threads that come and go (as a server's
request threads do): NBIS's extractor is built once per process, not once per calling thread."""

from __future__ import annotations

import threading

import pytest

from biometrics.errors import FingerprintExtractorStalled, FingerprintImageError, ModelError
from biometrics.fingerprint import extraction
from biometrics.fingerprint.images import decode_image
from biometrics.serial_thread import SerialThread
from tests.forked import in_forked_child


def _until_no_stalled_nbis_thread() -> None:
    """Waits (up to 10 s) for the abandoned NBIS threads to end once their stalled runs are released."""
    for _ in range(200):
        if not extraction._stalled:
            return
        threading.Event().wait(0.05)


def test_calls_from_many_threads_run_in_order_on_one_thread():
    serial = SerialThread("test-serial")
    ran: list[tuple[int, int]] = []
    futures = []
    def note(i: int) -> None:
        ran.append((i, threading.get_ident()))

    for i in range(5):
        caller = threading.Thread(target=lambda i=i: futures.append(serial.submit(lambda: note(i))))
        caller.start()
        caller.join()
    for future in futures:
        future.result(timeout=10)
    assert [i for i, _ in ran] == [0, 1, 2, 3, 4]
    assert len({ident for _, ident in ran}) == 1
    assert ran[0][1] != threading.get_ident()


def test_an_exception_reaches_the_caller_and_the_thread_goes_on():
    serial = SerialThread("test-serial")

    def fails() -> None:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        serial.run(fails)
    assert serial.run(lambda: 42) == 42


def test_a_thread_that_failed_to_start_leaves_no_queue_behind(monkeypatch):
    serial = SerialThread("test-serial")
    real_start = threading.Thread.start

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    with pytest.raises(RuntimeError, match="can't start"):
        serial.submit(lambda: 1)
    monkeypatch.setattr(threading.Thread, "start", real_start)
    assert serial.run(lambda: 2) == 2  # not queued behind a thread that never ran


def test_a_call_made_on_the_thread_itself_runs_at_once():
    serial = SerialThread("test-serial")
    assert serial.run(lambda: serial.run(lambda: "inner")) == "inner"  # would wait on itself if queued


def test_a_closed_thread_runs_what_was_queued_then_ends_and_a_later_call_starts_another():
    serial = SerialThread("test-serial")
    gate = threading.Event()
    first = serial.submit(lambda: gate.wait(timeout=10) and threading.current_thread())
    ended = serial.close()
    assert not ended.done()  # still running the call queued before
    gate.set()
    ended.result(timeout=10)
    old_thread = first.result(timeout=10)
    old_thread.join(timeout=10)
    assert not old_thread.is_alive()
    assert serial.run(threading.current_thread) is not old_thread
    assert SerialThread("never-started").close().done()


def test_captures_from_new_threads_reuse_the_one_nbis_extractor(shared_data, monkeypatch):
    import nbis

    image = decode_image((shared_data / "fingerprint" / "fvc2002" / "DB1_B" / "101_1.tif").read_bytes())
    extraction.prepare("nbis")
    built: list[object] = []
    real = nbis.new_nbis_extractor
    monkeypatch.setattr(nbis, "new_nbis_extractor", lambda settings: built.append(settings) or real(settings))
    results = []
    for _ in range(3):  # three short-lived threads, as a server's idle request threads are replaced
        caller = threading.Thread(target=lambda: results.append(extraction.extract(image, "nbis")))
        caller.start()
        caller.join()
    assert built == []
    assert len({r.minutiae for r in results}) == 1 and results[0].nfiq2 is not None


@pytest.mark.parametrize("network_fails", [False, True])
def test_an_image_nbis_finds_no_print_in_is_refused_after_the_network_ran(monkeypatch, network_fails):
    import numpy as np

    from biometrics.fingerprint.images import FingerprintImage

    def no_print(image: FingerprintImage) -> extraction.Extraction:
        raise FingerprintImageError("no fingerprint could be found in the image")

    monkeypatch.setattr(extraction, "_nbis", no_print)
    ran = []

    def network(image: FingerprintImage, run: object = None) -> tuple:
        ran.append(image)
        if network_fails:  # a network that cannot run: the image's own fault is still what the caller hears
            raise ModelError("the network could not be loaded")
        return ()

    monkeypatch.setattr(extraction, "_leader_minutiae", network)
    blank = FingerprintImage(np.full((64, 64), 255, np.uint8), 500)
    with pytest.raises(FingerprintImageError, match="no fingerprint"):
        extraction.extract(blank, "leader")
    assert len(ran) == 1


def test_an_image_nbis_finds_no_print_in_stops_the_network_where_it_is(shared_data, monkeypatch):
    """Garbage costs a terminal what NBIS costs, not a whole network run on top."""
    from biometrics.fingerprint import leader

    def no_print(image: object) -> extraction.Extraction:
        raise FingerprintImageError("no fingerprint could be found in the image")

    ended: list[BaseException] = []
    real_network = leader.network_output

    def network(*args: object) -> object:
        try:
            return real_network(*args)
        except BaseException as exc:
            ended.append(exc)
            raise

    monkeypatch.setattr(extraction, "_nbis", no_print)
    monkeypatch.setattr(leader, "network_output", network)
    image = decode_image((shared_data / "fingerprint" / "fvc2002" / "DB1_B" / "101_1.tif").read_bytes())
    with pytest.raises(FingerprintImageError, match="no fingerprint"):
        extraction.extract(image, "leader")
    assert len(ended) == 1 and "terminate" in str(ended[0])  # stopped, not run to its end


def test_a_stalled_nbis_run_is_refused_and_later_captures_do_not_queue_behind_it(shared_data, monkeypatch, caplog):
    """Native code cannot be interrupted: a thread past the timeout is abandoned, the capture gets a 503."""
    image = decode_image((shared_data / "fingerprint" / "fvc2002" / "DB1_B" / "101_1.tif").read_bytes())
    real_nbis = extraction._nbis
    expected = extraction.extract(image, "nbis")
    release = threading.Event()
    started: list[int] = []

    def stalls(image: object) -> extraction.Extraction:
        started.append(threading.get_ident())
        release.wait(timeout=60)
        return real_nbis(image)

    def network_fails(image: object, run: object = None) -> tuple:
        raise ModelError("the network could not be loaded")

    try:
        # nbis alone; then leader, whose network fails while NBIS is stalled: the stall still comes first.
        for stalled in (1, 2):
            monkeypatch.setattr(extraction, "_nbis", stalls)
            monkeypatch.setattr(extraction, "NBIS_TIMEOUT_S", 0.5)
            if stalled == 2:
                monkeypatch.setattr(extraction, "_leader_minutiae", network_fails)
            with pytest.raises(FingerprintExtractorStalled, match="took too long"):
                extraction.extract(image, "leader" if stalled == 2 else "nbis")
            assert extraction.stalled_threads() == stalled  # as /health reports it
            monkeypatch.setattr(extraction, "_nbis", real_nbis)
            monkeypatch.setattr(extraction, "NBIS_TIMEOUT_S", 10.0)
            if stalled == 1:  # a fresh NBIS thread answers the next capture, not one queued behind the stall
                assert extraction.extract(image, "nbis").minutiae == expected.minutiae
        assert len(set(started)) == 2  # each stall held its own thread
        # Two threads stalled, each perhaps holding a core: captures are refused at once until one ends.
        with pytest.raises(FingerprintExtractorStalled, match="is stalled"):
            extraction.extract(image, "nbis")
        assert "passed 0.5 s on one call and was abandoned (2 stalled)" in caplog.text
    finally:
        release.set()
    _until_no_stalled_nbis_thread()
    assert not extraction._stalled  # a stalled thread whose run ends frees its place, and ends
    assert extraction.extract(image, "nbis").minutiae == expected.minutiae
    alive = [t for t in threading.enumerate() if t.name == "bioident-nbis"]
    assert len(alive) == 1  # the abandoned threads ended once their runs returned, their extractors with them


def test_a_closed_serial_thread_is_not_kept_alive_and_a_forked_child_starts_its_own():
    import gc
    import os
    import weakref

    closed = SerialThread("test-closed")
    assert closed.run(lambda: 1) == 1
    closed.close().result(timeout=10)
    gone = weakref.ref(closed)
    del closed
    gc.collect()
    assert gone() is None  # nothing (such as a fork hook of its own) holds on to it

    serial = SerialThread("test-fork")
    assert serial.run(lambda: threading.current_thread().name) == "test-fork"
    parents = serial._thread
    if not hasattr(os, "fork"):
        return

    def a_thread_of_its_own() -> bool:  # the parent's thread is not in the child: a call must start one
        ran = serial.submit(lambda: threading.current_thread().name).result(timeout=10) == "test-fork"
        return ran and serial._thread is not parents

    assert in_forked_child(a_thread_of_its_own) == "passed"


def test_a_start_up_build_of_nbis_that_stalls_is_given_up_and_captures_go_to_a_fresh_thread(shared_data, monkeypatch):
    """The service prepares the extractors at start, before it loads the fingerprint gallery: a stalled build
    must not hold that up for good."""
    image = decode_image((shared_data / "fingerprint" / "fvc2002" / "DB1_B" / "101_1.tif").read_bytes())
    real_extractor = extraction._extractor
    release = threading.Event()

    def stalls(dpi: int, nfiq2: bool = True) -> object:
        release.wait(timeout=60)
        return real_extractor(dpi, nfiq2)

    monkeypatch.setattr(extraction, "NBIS_TIMEOUT_S", 0.5)
    monkeypatch.setattr(extraction, "_extractor", stalls)
    try:
        with pytest.raises(FingerprintExtractorStalled, match="took too long"):
            extraction.prepare("nbis")
        assert extraction.stalled_threads() == 1
        monkeypatch.setattr(extraction, "_extractor", real_extractor)
        monkeypatch.setattr(extraction, "NBIS_TIMEOUT_S", 10.0)  # the fresh thread builds its own extractor first
        assert extraction.extract(image, "nbis").minutiae  # a fresh thread, not one queued behind the build
        assert extraction.stalled_threads() == 1
    finally:
        release.set()
    _until_no_stalled_nbis_thread()
    assert not extraction._stalled


def test_a_stalled_extractor_is_answered_503_with_retry_after():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from service.problems import install_problem_handlers

    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/capture")
    def capture() -> None:
        raise FingerprintExtractorStalled("fingerprint extraction took too long; retry later")

    answer = TestClient(app).get("/capture")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    assert answer.headers["content-type"] == "application/problem+json"
    body = answer.json()
    assert body["type"].endswith("fingerprint_extractor_stalled") and body["detail"].endswith("retry later")
