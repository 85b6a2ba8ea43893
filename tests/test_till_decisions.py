"""How the till decides, without a database: fused scores over the fingers presented, and thresholds that
rise with the comparisons behind a score and with the gallery's size. Real FVC2002 impressions."""

from __future__ import annotations

import pytest

from biometrics.fingerprint.capture import analyse_capture
from biometrics.fingerprint.images import decode_image
from enroll.fingerprint import consolidate
from service.fingerprint import decisions
from service.fingerprint.decisions import ProbeFinger, fused_score
from service.fingerprint.templates import EnrolledFinger
from service.store.models import utcnow
from tests.till_helpers import impression


def _template(*paths):
    return consolidate([analyse_capture(decode_image(p.read_bytes())).template for p in paths])


@pytest.fixture(scope="module")
def customer():
    """A customer's right index (position 2, DB1_B finger 101) and left index (position 7, DB2_B 101)."""
    right = _template(impression("101", 1), impression("101", 2))
    left = _template(impression("101", 1, "DB2_B"), impression("101", 2, "DB2_B"))
    return [
        EnrolledFinger("sub_x", "tpl_r", 2, utcnow(), right),
        EnrolledFinger("sub_x", "tpl_l", 7, utcnow(), left),
    ]


def test_a_named_finger_is_compared_with_that_finger_only(customer):
    probe = _template(impression("101", 5))
    named = fused_score([ProbeFinger(2, probe)], customer)
    unnamed = fused_score([ProbeFinger(None, probe)], customer)
    wrong_name = fused_score([ProbeFinger(7, probe)], customer)
    assert named.comparisons == 1 and unnamed.comparisons == 2
    assert named.score == unnamed.score > wrong_name.score  # the right finger is the best of both
    assert decisions.verification_threshold(1e-3, 2) > decisions.verification_threshold(1e-3, 1)


def test_two_genuine_fingers_fuse_above_the_threshold_and_an_impostor_stays_below(customer):
    both = [
        ProbeFinger(2, _template(impression("101", 5))),
        ProbeFinger(7, _template(impression("101", 5, "DB2_B"))),
    ]
    fused = fused_score(both, customer)
    assert fused.comparisons == 2 and fused.score >= decisions.verification_threshold(1e-3, fused.comparisons)
    impostor = [ProbeFinger(2, _template(impression("102", 5))), ProbeFinger(7, _template(impression("103", 5)))]
    other = fused_score(impostor, customer)
    assert other.score < decisions.verification_threshold(1e-3, other.comparisons)


def test_thresholds_rise_with_the_gallery():
    small, large = (decisions.finger_only_threshold(1e-3, 1, n) for n in (20, 10_000))
    assert small < large
    assert decisions.finger_only_threshold(1e-3, 2, 10_000) > large  # two fingers presented: twice the comparisons
    assert decisions.verification_threshold(1e-3, 1) <= decisions.pin_threshold(1e-3, 1, 10_000) < large


def test_scores_the_search_computed_are_used_as_they_are(customer):
    from biometrics.fingerprint.matcher import compare

    probe = _template(impression("101", 5))
    right = compare(probe, customer[0].template)
    searched = fused_score([ProbeFinger(None, probe)], customer, known=[{"tpl_r": right}])
    assert searched.score == fused_score([ProbeFinger(None, probe)], customer).score == right
    # a finger presented that met none of the customer's fingers in the search is compared here
    assert fused_score([ProbeFinger(None, probe)], customer, known=[{}]).score == right
