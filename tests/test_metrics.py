"""Error-rate metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from biometrics.evaluation.metrics import equal_error_rate, error_rates


def test_perfectly_separated_scores_have_zero_eer():
    assert equal_error_rate(np.array([0.8, 0.9]), np.array([0.1, 0.2, 0.3])) == 0.0


def test_one_impostor_above_one_genuine_gives_a_third():
    # At threshold 0.75: genuine 0.7 rejected (FNMR 1/3), impostor 0.75 accepted (FMR 1/3).
    assert equal_error_rate(np.array([0.9, 0.8, 0.7]), np.array([0.1, 0.2, 0.75])) == pytest.approx(1 / 3)


def test_eer_is_interpolated_between_thresholds():
    # A genuine and an impostor tie at 0.5: (FMR, FNMR) jumps from (1/2, 0) at 0.5 to (0, 1/2) at 0.9,
    # so the curves cross halfway, at 1/4.
    assert equal_error_rate(np.array([0.5, 0.9]), np.array([0.1, 0.5])) == pytest.approx(0.25)


def test_error_rates_accept_at_or_above_threshold():
    rates = error_rates(np.array([0.5, 0.7]), np.array([0.5, 0.1]))
    at = dict(zip(rates.thresholds.tolist(), zip(rates.fmr.tolist(), rates.fnmr.tolist(), strict=True), strict=True))
    assert at[0.5] == (0.5, 0.0)
    assert at[0.7] == (0.0, 0.5)
    assert rates.fmr[-1] == 0.0 and rates.fnmr[-1] == 1.0


def test_empty_score_sets_are_an_error():
    with pytest.raises(ValueError):
        equal_error_rate(np.array([]), np.array([0.1]))
