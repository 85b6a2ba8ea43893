"""Voice: enrolment storage, verification (claim, then decide) and identification, and their HTTP routes."""
