"""Enrolment workflows and their quality gates: built on ``biometrics``, stored through ``service``."""
