"""Fingerprint at the till (terminal role): enrolment of two fingers, payment by finger, the 1:N gallery."""
