"""Scores, score normalisation, calibration and operating points, used at run time and by audits."""
